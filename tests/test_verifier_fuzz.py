"""Model output is hostile input: the verifiers' parsers are fuzzed for time as well as for correctness (issue 23).

* Every pattern in the verifiers is pumped (a unit repeated, then a character that makes it fail): none may
  backtrack exponentially, whatever operation it is used with.
* The math verifier reads 10,000 seeded hostile completions (tests/fuzz_text.py) each within a bound set from the
  input's length, and its verdicts keep two properties no reading rule can excuse.
* Time grows linearly: pumped completions 8 times longer cost at most about 8 times more.

What could hang runs in a child process under a hard limit (workbench.time_limit), so a regression fails here
instead of hanging the suite (the extractors' test runs in this process: their inputs are too short to hang it for
long). Calls are timed in thread CPU time with the collector paused, so a loaded machine does not make an honest call
look slow.
"""

from __future__ import annotations

import gc
import re
import time
from pathlib import Path

import pytest

import fuzz_text
from workbench.time_limit import LimitedCalls
from workbench.verifiers import get_verifier

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def in_child(monkeypatch):
    """``in_child(factory, seconds, **kwargs)``: calls of ``fuzz_text.<factory>(**kwargs)`` in a limited child."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))

    def make(factory: str, seconds: float, **kwargs) -> LimitedCalls:
        return LimitedCalls("fuzz_text", factory, kwargs, seconds)

    return make


def test_the_sentences_that_hung_the_verifier_are_read_at_once():
    # SmolLM2's own completion (issue 23), and its 83-character tail, which took more than 30 s with the old pattern.
    verifier = get_verifier("math", time_limit=5.0)
    tail = fuzz_text.REGRESSION[-83:]
    assert len(tail) == 83
    for completion in (fuzz_text.REGRESSION, "The answer is " + tail, tail, "The answer is " + "a" * 40 + ". it is 2."):
        verdict = verifier.verify("", completion, "2")
        assert verdict.reason != "time limit", completion
    verdict = verifier.verify("", fuzz_text.REGRESSION, "2")
    assert verdict.passed and verdict.details["rule"] == "answer_is"  # "the answer is ... it is 2." reads 2


# An exponential pattern takes about 2^n steps on n pumped units: at n = 22 the old lead-in pattern already takes
# a quarter of a second (checked below), at n = 30 about a minute. A linear one takes microseconds.
EXPONENTIAL_N = 30
EXPONENTIAL_BOUND_S = 0.02


def test_no_pattern_in_the_verifiers_backtracks_exponentially(in_child):
    calls = in_child("pump_patterns", 300)
    (few, p1), (many, p2) = calls.call(EXPONENTIAL_N - 10), calls.call(EXPONENTIAL_N)
    assert p1 is None and p2 is None, "pumping the patterns did not finish in 300 s: one backtracks exponentially"
    names = {name for name, *_ in many}
    assert "workbench.verifiers.math._NUM" in names and "workbench.verifiers.judge._SCORE_LINE" in names
    assert len(names) >= 25  # the collector found the patterns (a collector that finds none passes nothing)
    slow = [w for w in many if w[2] > EXPONENTIAL_BOUND_S]
    assert not slow, f"patterns that backtrack on {EXPONENTIAL_N} pumped units: {slow}"
    # Growth, for what is exponential with a small base (phi^n): 10 more units multiply its time by 100 or more;
    # a linear pattern's by 1.5. The floor keeps timer noise on microsecond calls from counting.
    grown = [(a[0], a[1], a[2], b[2], b[3]) for a, b in zip(few, many) if b[2] > 10 * max(a[2], 2e-4)]
    assert not grown, f"patterns whose time grows with the pumped units (20 -> 30): {grown}"


def test_the_pump_catches_the_pattern_that_hung_the_verifier():
    """The detector above can fail: the old lead-in pattern blows its bound well before 30 units."""
    old = re.compile(r"(?:[^\W\d_]+[\s:,]*)+")
    t0 = time.thread_time()
    old.fullmatch("a" * 22 + ".")
    assert time.thread_time() - t0 > EXPONENTIAL_BOUND_S


# The time bound per call: a fixed part (a latex parse through math-verify costs a few ms) plus a part per character,
# capped at 50 ms for the fuzz corpus (completions up to about 3,400 characters). Measured here: at most 7 us per
# character on pumped text and 15 ms on the slowest fuzz completion, so the margin is at least 3x.
def bound_s(length: int) -> float:
    return min(0.050, 0.020 + 10e-6 * length)


FUZZ_COUNT = 10_000
BATCH = 500


def test_fuzz_every_completion_is_verified_within_its_bound(in_child):
    completions = fuzz_text.completions(seed=23, count=FUZZ_COUNT)
    assert len(set(completions)) > 0.95 * FUZZ_COUNT and max(map(len, completions)) < 3500
    calls = in_child("timed_math_verifier", 120)
    calls.call([(c, "2") for c in completions[:200]])  # warm up: lazy imports and sympy's caches, once per process
    slow, reasons = [], set()
    for lo in range(0, FUZZ_COUNT, BATCH):
        batch = completions[lo: lo + BATCH]
        results, problem = calls.call([(c, "2") for c in batch])
        assert problem is None, f"fuzz batch {lo // BATCH} did not finish in 120 s ({problem})"
        for completion, (score, passed, reason, seconds) in zip(batch, results):
            assert score in (0.0, 1.0) and passed == (score == 1.0)
            reasons.add(reason)
            if seconds > bound_s(len(completion)):
                slow.append(completion)
    # A slow call is measured once more: a one-off (a cache filled, the CPU taken away inside the thread's slice)
    # does not repeat, a slow input does.
    again, _ = calls.call([(c, "2") for c in slow])
    still = [(len(c), round(r[3] * 1e3, 1), c[:120]) for c, r in zip(slow, again) if r[3] > bound_s(len(c))]
    assert not still, f"completions slower than their bound twice: {still}"
    assert len(slow) < 0.01 * FUZZ_COUNT, f"{len(slow)} completions over their bound once"
    # The corpus reaches every kind of reading, or it would only be timing the easy paths.
    assert {"correct", "wrong answer", "unparseable answer", "no answer found", "hedged", "rejected", "range"} <= reasons


def test_fuzz_a_final_answer_line_always_decides():
    """Whatever precedes it, a last line ``#### 7`` is the last commitment, with nothing after it to correct it:
    the verdict is correct for 7 and wrong for 8. A reading rule that let hostile text leak past it would break this."""
    verifier = get_verifier("math")
    for completion in fuzz_text.completions(seed=24, count=1500):
        text = completion + "\n#### 7"
        right, wrong = verifier.verify("", text, "7"), verifier.verify("", text, "8")
        assert right.passed and right.details["rule"] == "####", (completion[-200:], right.details)
        assert not wrong.passed and wrong.reason == "wrong answer", (completion[-200:], wrong.details)


PREFIXES = ("", "The answer is ", "#### ", "\\boxed{", "2 ")
SHORT, LONG = 500, 4000


def _pumped(repeats: int) -> list[str]:
    return [p + u * repeats + e for p in PREFIXES for u in fuzz_text.PUMP_UNITS for e in ("!", "2")]


def test_verify_time_grows_linearly_with_the_input(in_child):
    calls = in_child("timed_math_verifier", 300)
    calls.call([(c, "2") for c in _pumped(20)])  # warm up
    (short, p1), (long, p2) = calls.call([(c, "2") for c in _pumped(SHORT)]), calls.call([(c, "2") for c in _pumped(LONG)])
    assert p1 is None and p2 is None, "pumped completions did not finish in 300 s"
    total_short, total_long = sum(r[3] for r in short), sum(r[3] for r in long)
    # 8 times the input: linear costs about 8x, quadratic 64x. Per shape too, with a floor for timer noise.
    assert total_long < 20 * total_short, (total_short, total_long)
    worst = max(zip(_pumped(LONG), short, long), key=lambda x: x[2][3] / max(x[1][3], 1e-3))
    assert worst[2][3] < 20 * max(worst[1][3], 1e-3), (worst[0][:60], worst[1][3], worst[2][3])


def test_the_extractors_are_linear():
    """reasoning-gym's answer extraction and the judge's answer-line parsers on pumped text, in one process: the old
    lazy ``<answer>(.*?)</answer>`` scanned to the end from every unclosed tag (quadratic)."""
    from workbench.verifiers.judge import parse_label, parse_score
    from workbench.verifiers.reasoning_gym import extract_answer

    def cost(text):
        gc.collect()
        gc.disable()  # a collection over this big test process costs far more than the call
        try:
            t0 = time.thread_time()
            extract_answer(text)
            parse_score(text, 1, 5)
            parse_label(text, "WINNER", ["A", "B"])
            return time.thread_time() - t0
        finally:
            gc.enable()

    cost("<answer>1</answer> SCORE: 1 \\boxed{2}")  # warm up

    for unit in ("<answer>", "</answer>", "<answer>x", "SCORE: ", "\n SCORE", "WINNER:", "\\boxed{", "#### ",
                 "answer is ", "\n", " "):
        short, long = cost(unit * 2_000 + "!"), cost(unit * 40_000 + "!")
        assert long < 20 * max(short, 2e-3) + 0.05, (unit, short, long)  # 20x the input; quadratic would be 400x
    # The scan pairs tags as the old lazy pattern did: each <answer> with the first </answer> after it.
    assert extract_answer("<answer>1<answer>2</answer>") == ("1<answer>2", "answer_tag")
    assert extract_answer("<answer>7</answer></answer>") == ("7", "answer_tag")  # a stray close keeps the answer
    assert extract_answer("<answer> 7 </answer> done </answer> <answer>8") == ("7", "answer_tag")


def test_the_scans_read_what_the_old_patterns_read():
    """The scans that replaced two patterns read the same text: compared on every short string over their alphabets
    (short, so the old exponential pattern is still quick)."""
    import random

    from workbench.verifiers.math import _lead_in
    from workbench.verifiers.reasoning_gym import _last_answer_tag

    rng = random.Random(23)
    old_lead_in = re.compile(r"(?:[^\W\d_]+[\s:,]*)+")
    alphabet = ["a", "Z", "é", "ж", "中", " ", "\t", "\n", ":", ",", ".", "1", "_", "²", "½", "\u0301", "\u200b", "-"]
    for _ in range(5000):
        head = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        assert _lead_in(head) == (old_lead_in.fullmatch(head) is not None), repr(head)
    old_tag = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
    parts = ["<answer>", "</answer>", "7", " ", "x", "<", ">", "answer", "\n"]
    for _ in range(5000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        tags = old_tag.findall(text)
        new = _last_answer_tag(text)
        assert (tags[-1].strip() if tags else None) == (None if new is None else new.strip()), repr(text)
