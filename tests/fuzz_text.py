"""Hostile model text for the verifier fuzz tests (tests/test_verifier_fuzz.py): a seeded generator, and the
functions the tests run in a child process under a hard time limit (so a regression fails a test, never hangs it).

The generator mixes what real policies write (long sentences that trail into an answer, as SmolLM2 did in issue 23)
with what a parser finds hardest: very long words, runs of punctuation, digits in odd places, LaTeX fragments (open
and closed boxes, fractions, towers), and unicode (combining marks, other scripts' digits, RTL marks, emoji).
"""

from __future__ import annotations

import gc
import random
import re
import time

VOCAB = ("the answer is not wait actually or and between from to at least most I said but maybe either correct "
         "wrong final Answer: #### so equals sorry no more than up The total is it was result of combining values "
         "expression with itself repeatedly until original reached In this case").split()
NUMBERS = ("0", "2", "42", "-7", "+5", "3.5", ".5", "1,234", "12,34", "3/4", "5 / 6", "$5", "-$3", "30%", "30\\%",
           "1{,}234", "1\\,234", "−5", "１２", "३", "²", "½", "1.2.3.4", "1/2/3/4", "70-75", "5+", "007")
LATEX = ("\\boxed{", "}", "{", "\\boxed{42}", "\\frac{3}{4}", "\\dfrac34", "\\frac{\\frac{1}{2}}{\\frac{3}{4}}",
         "\\sqrt{16}", "9^{9^{9}}", "2^{2^{2^{10}}}", "10^{100}", "$", "\\(", "\\)", "\\[", "\\]", "\\text{ apples}",
         "\\text{not } ", "\\cdot", "\\times", "\\neq", "\\le", "\\fbox{", "\\,", "\\!", "^{", "_{", "\\left(",
         "\\right)", "\\infty", "\\pi", "x = ")
PUNCT = ".,;:!?()[]{}<>-–—/\\*_`'\"#@&%+=~|^\n\t "
UNICODE = ("\u0301", "\u200b", "\u202e", "🙂", "\u2212", "\u00a0", "\u2009", "é", "ß", "Ω", "中文", "жизнь", "٣",
           "\ufe63", "\uff0d", "\U0001d7d8")
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéßΩжк"
REGRESSION = ("The answer is the result of combining the values of an expression with itself repeatedly until the "
              "original expression is reached. In this case, it is 2.")


def _word(rng: random.Random) -> str:
    n = rng.choice((1, 3, 8, 20, 60, 200, 400))
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, n)))


def _piece(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.30:
        return rng.choice(VOCAB)
    if kind < 0.45:
        return _word(rng)
    if kind < 0.60:
        return rng.choice(NUMBERS) if rng.random() < 0.7 else str(rng.randint(0, 10 ** rng.randint(1, 60)))
    if kind < 0.75:
        return rng.choice(LATEX)
    if kind < 0.90:
        return rng.choice(PUNCT) * rng.choice((1, 1, 2, 5, 40))
    return rng.choice(UNICODE)


def _soup(rng: random.Random, length: int) -> str:
    out, size = [], 0
    while size < length:
        piece = _piece(rng)
        out.append(piece)
        out.append(rng.choice((" ", " ", " ", "", ", ", ". ", ": ", "\n")))
        size += len(piece) + 1
    return "".join(out)


def _sentence(rng: random.Random, length: int) -> str:
    """Prose that trails into a value, like the completion of issue 23, with a stray mark somewhere."""
    words, size = [], 0
    while size < length:
        w = rng.choice(VOCAB[-20:]) if rng.random() < 0.8 else _word(rng)
        words.append(w)
        size += len(w) + 1
    if words and rng.random() < 0.7:
        k = rng.randrange(len(words))
        words[k] += rng.choice(".,;:!?-_'")
    lead = rng.choice(("The answer is ", "Answer: ", "#### ", "\\boxed{", "", "Final answer: "))
    tail = rng.choice((" it is 2.", " 2", " is 2", "", " 2 or 3", " not 2", " 2. Wait, 3."))
    return lead + " ".join(words) + tail + ("}" if lead == "\\boxed{" and rng.random() < 0.5 else "")


def completions(seed: int, count: int) -> list[str]:
    """``count`` hostile completions, the same for the same seed."""
    rng = random.Random(seed)
    out = [REGRESSION, REGRESSION[-83:], "The answer is " + REGRESSION[-83:]]
    while len(out) < count:
        length = rng.choice((10, 40, 80, 150, 300, 600, 1500, 3000))
        kind = rng.random()
        if kind < 0.45:
            text = _soup(rng, length)
        elif kind < 0.8:
            text = _sentence(rng, length)
        else:  # a single long word and a mark: the shape that doubled the old pattern's time per letter
            text = rng.choice(("The answer is ", "#### ", "\\boxed{")) + _word(rng) + rng.choice(".!?;") + " 2"
        out.append(text)
    return out[:count]


# --------------------------------------------------------------------------------- run in the time-limited child


def timed_math_verifier():
    """For LimitedCalls: verify a batch in-process, returning each verdict's fields and its thread CPU seconds.

    Thread CPU time, not wall time, so a loaded machine does not make an honest call look slow.
    """
    from workbench.verifiers.math import MathVerifier

    verifier = MathVerifier()

    def run(batch: list[tuple[str, str]]):
        # The collector runs between calls, not inside one: a gen-2 pass costs tens of ms whatever the input.
        out = []
        gc.collect()
        gc.disable()
        try:
            for completion, reference in batch:
                t0 = time.thread_time()
                v = verifier.verify("", completion, reference)
                out.append((v.score, v.passed, v.reason, time.thread_time() - t0))
        finally:
            gc.enable()
        return out

    return run


def verifier_patterns() -> list[tuple[str, re.Pattern]]:
    """Every module-level compiled pattern of the verifiers that read model text, and the (pattern, replacement)
    pairs of math's character clean-up. (The judge builds one key-line pattern per call from a fixed template; its
    SCORE instance is module-level and stands for them.)"""
    import importlib

    found = []
    for module in ("workbench.verifiers.math", "workbench.verifiers.judge", "workbench.verifiers.reasoning_gym",
                   "workbench.verifiers.rollout_aware", "workbench.verifiers.repetition"):
        mod = importlib.import_module(module)
        for name, value in sorted(vars(mod).items()):
            if isinstance(value, re.Pattern):
                found.append((f"{module}.{name}", value))
            elif isinstance(value, list):
                found += [(f"{module}.{name}[{i}]", p[0]) for i, p in enumerate(value)
                          if isinstance(p, tuple) and p and isinstance(p[0], re.Pattern)]
    return found


# Units pumped many times, then followed by a character that makes the match fail: the shape that makes a
# backtracking pattern exponential (nested quantifiers) or quadratic (adjacent quantifiers over the same text).
PUMP_UNITS = ("a", "ab ", " ", "\t", ":", ",", ".", "1", "12,", "1.", "-", "/", "\\", "{", "}", "$", "*", "(",
              "or ", "not ", "and ", "= ", "\n", "é", "<answer>", "answer is ", "I said ", "#", "a: ", "a, ", "a1",
              " a", "wait ", "\\boxed{", "\\frac{", "1 ", "x", "<<<", "SCORE", "- ")
PUMP_ENDS = ("", "!", "\x00", "1", "a")


def pump_patterns():
    """For LimitedCalls: ``run(repeats)`` gives, per pattern and operation (search, match, fullmatch), the worst thread
    CPU seconds over the pumped strings ``unit * repeats + end``, with the string that took it."""
    patterns = verifier_patterns()

    def run(repeats: int):
        worst = []
        for name, pattern in patterns:
            for op in ("search", "match", "fullmatch"):
                call = getattr(pattern, op)
                slowest = (0.0, "")
                for unit in PUMP_UNITS:
                    for end in PUMP_ENDS:
                        text = unit * repeats + end
                        t0 = time.thread_time()
                        call(text)
                        elapsed = time.thread_time() - t0
                        if elapsed > slowest[0]:
                            slowest = (elapsed, f"{unit!r} * {repeats} + {end!r}")
                worst.append((name, op, *slowest))
        return worst

    return run
