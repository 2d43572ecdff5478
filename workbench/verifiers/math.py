"""The ``math`` verifier: GSM8K-style numeric answers, checked by rule (no model, no eval).

Why rules and not "does the reference appear somewhere": a reward that credits any mention of the right
number teaches a policy to list numbers. So the verifier reads ONE final committed answer, the way a
grader would, refuses answers that hedge between values or give a range, and never credits a number the
text rejects ("The answer is not 72." fails for 72).

Commitments (places where the text states its answer):

* ``#### x`` -- every ``####`` line with something after it. Decisive: if its rest is not exactly one
  number with only words around it (``#### 18``, ``#### The total is 18 apples``), the verdict fails
  ("unparseable answer") rather than falling back to some number in the reasoning.
* ``\\boxed{x}`` (or ``\\fbox{x}``) -- nested braces are balanced (``\\boxed{\\frac{3}{4}}``). Decisive, like
  ``####``. A box the text rejects from outside (``not \\boxed{72}``, ``\\boxed{72} is wrong``) is not a
  commitment.
* "the answer is x" / "final answer: x" (any case, ``**bold**`` tolerated) -- a commitment only when the
  rest of its line (up to the next such phrase) holds an *affirmed* number (see "Rejections"); prose such
  as "the answer is not obvious" or "the answer is not 72" commits to nothing. It reads the first affirmed
  number, or the result of an arithmetic run that starts there ("the answer is 6 * 7 = 42" reads 42).

**Several commitments: the last one in the text wins**, whatever its kind (a ``\\boxed{}`` after a
``####`` line overrides it, and the second of two "the answer is" phrases overrides the first). Why this
rule and not "disagreeing markers fail as hedged": (1) it is how a grader reads -- a later statement
supersedes an earlier one -- and it is the same rule as the self-corrections below, so one principle
covers both; "disagreement fails" would need a carve-out for corrections that hinges on wording ("Wait,"
counts but "Let me double-check." does not); (2) it punishes no legitimate behaviour: reasoning that
states an answer, re-checks and restates it ("the answer is 40 ... let me re-check ... the answer is 42")
is what GRPO should reinforce; (3) it gives a hedging policy nothing, because exactly one value is ever
read, so writing several markers never covers more than one value.

Self-corrections: after the last commitment, a correction ("actually", "no wait" / "wait,", "Correction:",
"correcting myself", "scratch that", "on second thought", "or rather", "I mean", "sorry", "oops", "my
mistake", "I said N but ...") that is followed by an affirmed number replaces it: ``#### 72\\nActually,
73.`` reads 73, ``\\boxed{72}, no wait, 73`` reads 73, ``I said 72 but it is 73`` reads 73. The corrected
value is the first affirmed number after the correction, or the result of its arithmetic run ("Wait,
6 * 7 = 42." reads 42). A correction with no number ("Wait, let me double-check: yes.") changes nothing.
"wait" counts only as an interjection ("wait," / "wait." / "wait no"), never the verb ("wait 10 minutes").

Without any commitment, the last affirmed number in the text is the answer (corrections need no special
handling there: "72, no wait, 73" ends with 73).

Rejections: a number is *rejected* when the text negates it -- ``not 72``, ``isn't 72``, ``is not 72``,
``cannot be 72``, ``never 72``, ``not equal to 72``, ``≠ 72``, ``\\neq 72``, ``!= 72`` -- or judges it --
``72 is wrong``, ``72 is incorrect``, ``72 was a mistake``, ``72 is not right/correct/the answer``,
``72 (wrong)``. A rejected number is never read as an answer, and the verdict fails with reason
"rejected" when the text rejects the read value at or after the commitment that states it
(``\\boxed{72}\\n72 is wrong.``, ``#### not 72``, ``\\boxed{\\text{not } 72}``). A rejection *before* the
last commitment is superseded by it ("72 looked wrong at first ... \\boxed{72}" passes). Only these
rejection phrases count: ``Note: 72 is not prime`` states a property, not a rejection, and "not only 5 ...
the answer is 7" does not negate 5 (the words allowed between the negation and the number are "be",
"been", "equal(s) (to)", "exactly").

Hedges, alternatives and ranges (only the values directly chained to the answer count):

* "hedged": the answer is joined to a *different* value by "or" / "either" / "maybe" / "perhaps" /
  "possibly" (optionally after a comma or full stop): ``42 or 43``, ``either 5 or 6``, ``\\boxed{42} or
  \\boxed{43}``, ``42. Or maybe 43``. In an answer (a ``####`` line, a box, an answer phrase, a
  correction) also by "and", "and/or", "&", a comma list, or a slash that is not part of a fraction:
  ``the answer is 5 and 6``, ``5, 6``, ``5 / 6`` (spaced), ``$5/$6``, ``\\boxed{5}/\\boxed{6}``,
  ``12 apples/13 apples``. ``5/6`` is the fraction 5/6. Same values do not hedge: ``3/4 or 0.75``.
* "range": in an answer, values joined by "-", "–", "—", "to", "through" (``70-75``, ``70 to 75``,
  ``from 70 to 75``, ``between 70 and 75``), or one value under a bound word (``at least 5``, ``more than
  5``, ``up to 5``, ``≤ 5``, ``5 or more``, ``5+``).
* Without a commitment (the last number), only "or"-type hedges and "between A and B" count: ``3 + 4 = 7
  so 7 or more`` reads 7, "His savings grew from $50 to $80." reads 80 (a change of state), and "She read
  pages 3-5" reads 5, since prose uses "to" and "-" for things other than ranges. Working never hedges:
  ``either 2 or 3 boxes fit, so 5`` reads 5.

Normalisation (what counts as "a number"):

* thousands separators: ``1,234`` == ``1234`` (also latex ``1{,}234`` and ``1\\,234``); a comma not
  followed by exactly three digits is not a separator;
* currency: a leading ``$``, ``\\$``, ``€``, ``£`` or ``¥`` is dropped (``-$5``, ``$-5`` are both -5);
* units and trailing words: ``12 apples``, ``5 dollars``, ``18 \\text{ km}`` read as the number. In the
  strict spans (``####``, ``\\boxed``) only words may follow the number -- no further digits or code
  characters -- so ``\\boxed{os.system("echo 42")}`` is not read as 42;
* percent: the ``%`` sign (or ``\\%``) is stripped, so ``30%`` == ``30``. GSM8K references for "what
  percent" questions are bare numbers; math-verify would instead read ``30\\%`` as 0.3;
* decimals: ``5.0`` == ``5``, ``.5`` == ``0.5`` (compared exactly, as fractions);
* fractions: ``3/4`` == ``0.75`` == ``\\frac{3}{4}`` == ``\\dfrac34``; latex is parsed by math-verify's
  latex parser (``math_verify.parse`` with ``LatexExtractionConfig`` only) and compared with
  ``math_verify.verify``. Its result is used only when it is a plain finite number, a sum/product of
  such, or a small power (``\\sqrt{16}``), so ``2^{2^{2^{10}}}`` cannot stall the reward loop;
* signs: ``-5``, unicode minus ``−5``, and a leading ``+`` (``+5`` == ``5``). A ``-`` glued to a
  preceding digit or word is a hyphen, not a sign (``pages 3-5`` reads 5);
* numbers glued to identifiers, quotes or a call (``x5``, ``'42'``, ``f(3``) are not read as answers;
* not handled: number words ("five"), mixed numbers in plain text ("1 1/2"), scientific notation,
  approximations ("about 72" reads 72).

Safety: model output is never evaluated. Plain numbers are read by a regular expression into
``fractions.Fraction``; latex goes through math-verify's ANTLR latex parser only. math-verify's
``ExprExtractionConfig`` is deliberately NOT used: it hands the matched text to ``sympy.parse_expr``,
which calls ``eval``. (One quirk remains inside the latex parser: latex2sympy turns each numeric lexer
token into ``sympy.Number(token)``, and sympy evaluates that digit-only string internally, e.g.
``eval("Integer (5 )")``. The lexer guarantees it is a numeral, never free text; the tests spy on
``eval``/``exec`` to check no model text reaches them.) math-verify's signal-based timeouts are
disabled (``parsing_timeout=None``, ``timeout_seconds=None``) because ``signal.alarm`` only works in the
main thread (and would cancel pytest-timeout's alarm); the span length cap and the "plain number" check
above stand in for them. Every scan is linear in the completion's length: the context of a value is
looked at through a window of ``_LOOK`` characters, answer phrases and corrections are read over
disjoint stretches of text, and chains stop after ``_MAX_CHAIN`` values. No pattern nests quantifiers that
can split the same text in several ways (the lead-in is checked by a scan: issue 23), and
``tests/test_verifier_fuzz.py`` pumps every pattern and times 10,000 hostile completions. As a last
defence, ``get_verifier("math")`` runs each call in a child process under a hard time limit
(:class:`~workbench.verifiers.verdict.TimeLimitedVerifier`), which works in threads and worker processes.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import sympy
from math_verify import LatexExtractionConfig
from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

from workbench.errors import DataError
from workbench.verifiers.verdict import DEFAULT_TIME_LIMIT_S, Verdict, Verifier, register_verifier

__all__ = ["MathVerifier", "reference_value", "last_boxed", "hash_answer", "answer_phrase"]

_MAX_SPAN = 300  # longest answer span handed to the latex parser (there is no timeout: see docstring)
_MAX_CHAIN = 20  # values looked at around an answer: chains, arithmetic runs, rejections after it, the last values

# ------------------------------------------------------------------------------------------- character clean-up

_CHAR_MAP = str.maketrans({
    "\u2212": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-",  # unicode minus signs
    "\u00a0": " ", "\u202f": " ", "\u2009": " ",  # non-breaking / thin spaces
})
_LATEX_CHARS = [
    (re.compile(r"\\\$"), "$"),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\ "), " "),
    (re.compile(r"\\[!,;:]"), ""),  # latex spacing; \, is also a thousands separator
]


def _normalise_chars(text: str) -> str:
    text = text.translate(_CHAR_MAP)
    for pattern, repl in _LATEX_CHARS:
        text = pattern.sub(repl, text)
    return text


# ------------------------------------------------------------------------------------------------ answer spans

_HASH = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_PHRASE = re.compile(r"\banswer\b[*\s]*(?:is\b|:)[*:\s]*", re.IGNORECASE)
_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    text: str


def _boxed_spans(text: str) -> list[_Span]:
    """Every ``\\boxed{...}`` with balanced braces; ``start``/``end`` cover the whole command.

    One pass with a stack of open braces, so thousands of unclosed boxes cost linear time.
    """
    spans, stack = [], []  # stack: (start of "\\boxed" or None for a plain "{", index after the "{")
    for m in _BRACE.finditer(text):
        if m.group() == "}":
            if stack:
                start, inner = stack.pop()
                if start is not None:
                    spans.append(_Span(start, m.end(), text[inner: m.start()]))
        else:
            stack.append((m.start() if m.group() != "{" else None, m.end()))
    return sorted(spans, key=lambda s: s.start)


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` (nested braces kept), or None."""
    spans = _boxed_spans(text)
    return max(spans, key=lambda s: s.start).text if spans else None


def hash_answer(text: str) -> str | None:
    """The rest of the line after the last ``####`` that has something after it, or None.

    A bare ``####`` with nothing after it on its line is a formatting slip, not an answer: the next rule decides.
    """
    matches = [m for m in _HASH.finditer(text) if m.group(1).strip()]
    return matches[-1].group(1) if matches else None


def answer_phrase(text: str) -> str | None:
    """The rest of the line after the last "answer is" / "answer:" phrase, or None."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    return rest.split("\n", 1)[0]


# ------------------------------------------------------------------------------------------------------ values

_NUM = re.compile(
    r"(?<![\w.'\"`/])(?<!\w\()"  # not glued to an identifier, quote, decimal point, date or call
    r"(?P<sign>[-+]?)(?P<cur>[$€£¥]?)(?P<sign2>[-+]?)"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+(?:\.\d+)?))?"
    r"(?P<pct>\s?%)?"
    r"(?![\w'\"`(]|\.\d|/\d)"
)
_LATEX_FRAC = re.compile(r"-?\\[dt]?frac\s*(?:\{[^{}]*\}|\d)\s*(?:\{[^{}]*\}|\d)")
_LATEX_CMD = re.compile(r"\\[A-Za-z]")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_UNIT_TAIL = re.compile(r"[^\W\d_][^\d_=(){}\[\];'\"`<>\\$]*")  # "apples", "km/h", "sq. ft"
# A lead-in ("The total is", "Answer:") is letters, spaces, colons and commas, starting with a letter. Checked by a
# scan for the first character that is none of these, not by a pattern like (?:[^\W\d_]+[\s:,]*)+, whose nested
# quantifiers split a run of letters in 2^n ways and backtrack through all of them when the match fails (a SmolLM2
# completion of 83 characters took over 30 s: issue 23).
_LETTER = re.compile(r"[^\W\d_]")
_NOT_LEAD_IN = re.compile(r"[^\w\s:,]|[\d_]")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\w*\s*=\s*")  # "x = 5" in a box
_LATEX_CFG = (LatexExtractionConfig(),)


class _TimeoutsOffOnPurpose(logging.Filter):
    """math-verify warns once that its timeouts are disabled; we disable them deliberately (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).addFilter(_TimeoutsOffOnPurpose())


def _number(m: re.Match) -> sympy.Rational | None:
    try:
        value = Fraction(m["num"].replace(",", ""))
        if m["den"]:
            den = Fraction(m["den"])
            if den == 0:
                return None
            value /= den
    except ValueError:  # e.g. more digits than int() accepts
        return None
    if (m["sign"] == "-") != (m["sign2"] == "-"):
        value = -value
    return sympy.Rational(value.numerator, value.denominator)


def _tame(expr) -> bool:
    """A finite number, or sums/products/small powers of them: cheap to compare, no symbols."""
    if isinstance(expr, sympy.Number):
        return bool(expr.is_finite)
    if isinstance(expr, (sympy.Add, sympy.Mul)):
        return all(_tame(a) for a in expr.args)
    if isinstance(expr, sympy.Pow):
        return (expr.exp.is_Rational and abs(expr.exp) <= 64 and not expr.base.has(sympy.Pow)
                and _tame(expr.base))
    return False


def _latex_value(s: str):
    """Parse latex with math-verify's latex parser (never ``parse_expr``); None unless a tame number."""
    s = s.replace("$", "").replace("%", "").strip()
    if not s or len(s) > _MAX_SPAN:
        return None
    for candidate in (f"${s}$", s):
        parsed = mv_parse(candidate, extraction_config=_LATEX_CFG, fallback_mode="no_fallback",
                          parsing_timeout=None)
        if parsed and isinstance(parsed[0], sympy.Basic) and _tame(parsed[0]):
            return parsed[0]
    return None


def _trim(s: str) -> str:
    s = s.strip().strip("*").strip()
    s = s.rstrip(".,;:!").strip().strip("*").strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left): -len(right)].strip()
    return _ASSIGNMENT.sub("", s)


def _lead_in(head: str) -> bool:
    """Whether ``head`` is only words before a value: a letter first, then letters, spaces, ``:`` and ``,``."""
    return _LETTER.match(head) is not None and _NOT_LEAD_IN.search(head) is None


def _strict(span: str, words_before: bool = True) -> tuple[object, str | None]:
    """The value of a span that should be just an answer (or None), and what the span says about it.

    The value: either latex that math-verify reads as a plain number, or exactly one number with only
    words around it: unit words after (``12 apples``) and, when ``words_before``, a lead-in before
    (``#### The total is 12``). No second number, no code characters.

    The problem (None, "rejected" or "range"): the words around that one number may still negate it
    (``#### not 72``, ``\\boxed{\\text{not } 72}``), judge it (``72 is wrong``) or bound it (``at least 5``,
    ``5 or more``). math-verify drops a trailing ``\\text{...}``, so the words are read from the span with
    its ``\\text{}`` commands unwrapped, whichever path read the value.
    """
    s = _trim(span)
    if not s or len(s) > _MAX_SPAN:
        return None, None
    latex = _LATEX_CMD.search(s) is not None
    plain = _TEXT_CMD.sub(r" \1", s) if latex else s
    value = _latex_value(s) if latex else None
    if value is None:
        s = plain.strip()
        m = _NUM.search(s) if words_before else _NUM.match(s)
        if m is None:
            return None, None
        head, tail = s[: m.start()].strip(), s[m.end():].strip().rstrip(".,;:!*").strip()
        if (head and not _lead_in(head)) or (tail and not _UNIT_TAIL.fullmatch(tail)):
            return None, None
        value = _number(m)
    if value is None:
        return None, None
    tokens = _tokens(plain)
    if tokens:
        first, last = tokens[0], tokens[-1]
        if _negated(plain, first) or _judged_wrong(plain, last):
            return value, "rejected"
        if _bounded(plain, first, last):
            return value, "range"
    return value, None


def _strict_value(span: str, words_before: bool = True):
    """The value of :func:`_strict`, whatever the words around it say (references are trusted data)."""
    return _strict(span, words_before)[0]


@dataclass
class _Token:
    """One candidate value in the text: a ``\\boxed{}``, a latex fraction, or a plain number."""

    start: int
    end: int
    text: str
    kind: str  # "boxed" | "frac" | "num"
    match: re.Match | None = None
    _value: object = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    @property
    def value(self):
        if not self._done:
            if self.kind == "num":
                self._value = _number(self.match)
            elif self.kind == "boxed":
                self._value = _strict_value(_normalise_chars(self.text))
            else:
                self._value = _latex_value(self.text)
            self._done = True
        return self._value


def _tokens(text: str) -> list[_Token]:
    """All candidate values, left to right; numbers inside a box or a fraction are not separate tokens."""
    blockers: list[_Token] = []  # sorted, non-overlapping: outermost boxes, then fractions outside them
    for s in sorted(_boxed_spans(text), key=lambda s: s.start):
        if not blockers or s.start >= blockers[-1].end:  # a box inside a box is part of it
            blockers.append(_Token(s.start, s.end, s.text, "boxed"))

    def free(start: int, end: int) -> bool:
        i = bisect.bisect_left(starts, end) - 1  # the last blocker starting before `end`
        return i < 0 or blockers[i].end <= start

    starts = [t.start for t in blockers]
    fracs = [_Token(m.start(), m.end(), m.group(0), "frac")
             for m in _LATEX_FRAC.finditer(text) if free(m.start(), m.end())]
    blockers = sorted(blockers + fracs, key=lambda t: t.start)
    starts = [t.start for t in blockers]
    nums = [_Token(m.start(), m.end(), m.group(0), "num", m)
            for m in _NUM.finditer(text) if free(m.start(), m.end())]
    return sorted(blockers + nums, key=lambda t: t.start)


def _same(gold, pred) -> bool:
    if gold is None or pred is None:
        return False
    if gold.is_Rational and pred.is_Rational:
        return gold == pred  # exact: 5.0 == 5, 0.75 == 3/4, but 0.33 != 1/3
    return mv_verify(gold, pred, timeout_seconds=None)


# -------------------------------------------------------------------------------- what the text says about a value

# The context of a value is read through a window of _LOOK characters on each side, so each check costs
# a constant and a whole completion stays linear. The longest phrase read there ("would be definitely
# not the correct answer") is well under it.
_LOOK = 64
_OPEN = r"(?:[ \t]|[$*(]|\\\(|\\\[)*"  # between a word and the value: spaces, math/bold/paren openers
_CLOSE = r"(?:[ \t]|[$*)]|\\\)|\\\])*"  # between the value and a word

# "not 72", "isn't 72", "cannot be 72", "never 72", "not equal to 72", "≠ 72", "\neq 72", "!= 72". Only
# "be", "been", "equal(s) (to)" and "exactly" may sit between the negation and the number, so "not only 5"
# and "not more than 5" do not negate 5. Newlines end it: "... or not\n72" is not a negation.
_NEG_BEFORE = re.compile(
    r"(?:\b(?:not|never|cannot|no[ \t]+longer)\b|n[’']t\b|≠|\\neq?(?![A-Za-z])|!=|=/=)"
    r"(?:[ \t]+(?:be|been|equals?(?:[ \t]+to)?|exactly)\b)*" + _OPEN + r"$",
    re.IGNORECASE)
# "72 is wrong", "72 was incorrect", "72 is a mistake", "72 is not right/correct/the answer",
# "72 isn't correct", "72 (wrong)", "72 - wrong". A verb is required ("Is 72 wrong? No." rejects nothing),
# and only these judgements count: "72 is not prime" states a property.
_BAD = r"(?:wrong|incorrect|a[ \t]+mistake|an[ \t]+error)"
_NOT_RIGHT = r"(?:right|correct|it|the[ \t]+(?:(?:final|right|correct)[ \t]+)?answer)"
_JUDGED_WRONG = re.compile(
    _CLOSE + r"(?:\([ \t]*" + _BAD + r"[ \t]*\)"
    r"|[-—–:][ \t]*" + _BAD + r"\b"
    r"|(?:is|was|would[ \t]+be|seems|looks|appears|must[ \t]+be)[ \t]+"
    r"(?:(?:definitely|clearly|obviously|certainly|also|still|actually|simply|just|totally)[ \t]+)?"
    r"(?:" + _BAD + r"|not[ \t]+" + _NOT_RIGHT + r")\b"
    r"|(?:is|was)n[’']t[ \t]+" + _NOT_RIGHT + r"\b)",
    re.IGNORECASE)
# A bound is not a value: "at least 5", "more than 5", "up to 5", "≤ 5" / "5 or more", "5+", "5 at most".
# Bare "<" / ">" are left out: GSM8K working writes "<<6*7=42>>42" and arrows "=> 42".
_BOUND_BEFORE = re.compile(
    r"(?:\b(?:at[ \t]+(?:least|most)|(?:no[ \t]+)?(?:more|less|fewer|greater|higher|lower)[ \t]+than"
    r"|up[ \t]+to|over|under|above|below)\b|[≤≥]|\\(?:le|ge|leq|geq)(?![A-Za-z]))" + _OPEN + r"$",
    re.IGNORECASE)
_BOUND_AFTER = re.compile(
    _CLOSE + r"(?:\+(?![ \t]*[\d$(\\])|or[ \t]+(?:more|less|fewer|greater|higher|lower|above|below|over|under)\b"
    r"|and[ \t]+(?:up|above|over|more)\b|at[ \t]+(?:least|most)\b)",
    re.IGNORECASE)
_RANGE_WORD = re.compile(r"\b(?:between|from)\b" + _OPEN + r"$", re.IGNORECASE)
_BETWEEN = re.compile(r"\bbetween\b" + _OPEN + r"$", re.IGNORECASE)
# Arithmetic between two values ("6 * 7 = 42"): such values are operands, and the run's result is read.
_OPERATOR_GAP = re.compile(r"[ \t]*(?:[-+*/×÷=x]|\\times|\\cdot|\\div)[ \t]*[$€£¥]?")


def _negated(text: str, t: _Token) -> bool:
    return _NEG_BEFORE.search(text, max(0, t.start - _LOOK), t.start) is not None


def _judged_wrong(text: str, t: _Token) -> bool:
    return _JUDGED_WRONG.match(text, t.end, t.end + _LOOK) is not None


def _affirmed(text: str, t: _Token) -> bool:
    """Neither negated nor judged wrong: the text may be stating this value."""
    return not _negated(text, t) and not _judged_wrong(text, t)


def _bounded(text: str, first: _Token, last: _Token) -> bool:
    return (_BOUND_BEFORE.search(text, max(0, first.start - _LOOK), first.start) is not None
            or _BOUND_AFTER.match(text, last.end, last.end + _LOOK) is not None)


def _pick(text: str, tokens: list[_Token], lo: int = 0, hi: int | None = None) -> int | None:
    """Index of the value a statement starting at ``tokens[lo]`` commits to, or None if it has none.

    The first affirmed, readable value in ``tokens[lo:hi]``; when it starts an arithmetic run the run's
    result: "6 * 7 = 42" reads 42 (the value after the first "="), "42 = 6 * 7" reads 42 (a run that
    starts with "=" states its first value), and "48 + 24" (no "=") reads its first value.
    """
    hi = len(tokens) if hi is None else hi
    i = next((k for k in range(lo, hi) if tokens[k].value is not None and _affirmed(text, tokens[k])), None)
    if i is None:
        return None
    run, gaps = [i], []
    while run[-1] + 1 < len(tokens) and len(run) <= _MAX_CHAIN:
        nxt = tokens[run[-1] + 1]
        gap = text[tokens[run[-1]].end: nxt.start]
        if not _OPERATOR_GAP.fullmatch(gap) or nxt.value is None or not _affirmed(text, nxt):
            break
        run.append(run[-1] + 1)
        gaps.append(gap)
    equals = [k for k, gap in enumerate(gaps) if "=" in gap]
    return run[equals[0] + 1] if equals and equals[0] > 0 else run[0]


# ------------------------------------------------------------------------------------- hedges, alternatives, ranges

_HEDGE_GAP = re.compile(r"[\s,;.(]*(?:(?:or|either|maybe|perhaps|possibly|even)\b[\s,;.(]*)+", re.IGNORECASE)
_LIST_GAP = re.compile(r"\s*,\s*")
_AND_GAP = re.compile(r"[ \t]*(?:,[ \t]*)?(?:and(?:/or)?|&)[ \t]*", re.IGNORECASE)
_SLASH_GAP = re.compile(r"[ \t]*/[ \t]*[$€£¥]?")  # "5 / 6", "$5/$6", "\boxed{5}/\boxed{6}": "5/6" is one token
_RANGE_GAP = re.compile(r"[ \t]*(?:-|–|—|to|through|thru)[ \t]*", re.IGNORECASE)
# "12 apples/13 apples": the 13 is glued to the slash, so it is no token; the slash still joins two values.
_SLASH_AFTER = re.compile(r"[ \t]*(?:[^\W\d_]+[ \t]*)?/[ \t]*[$€£¥]?\d")
_ARITH_AFTER = re.compile(r"[ \t]*(?:[*×÷=+x]|\\times|\\cdot|\\div)[ \t]*[$(\\]?\d")


def _chain(text: str, tokens: list[_Token], index: int, answer: bool) -> tuple[list[_Token], str | None]:
    """The tokens joined to ``tokens[index]``, and the problem with them: None, "hedged" or "range".

    ``answer``: the value stands in an answer (``####``, a box, an answer phrase, a correction), where
    "and", a comma list, a slash and range words also join values, and a bound makes a range. Otherwise
    (the last number of the text) only "or"-like words join values, and "between A and B" is a range.
    A chain of equal values (``3/4 or 0.75``) is no problem; an unreadable member counts as different.
    """
    lo = hi = index
    kinds: set[str] = set()

    def link(i: int) -> str | None:  # the kind of gap between tokens i and i+1
        gap = text[tokens[i].end: tokens[i + 1].start]
        if _HEDGE_GAP.fullmatch(gap):
            return "or"
        if _LIST_GAP.fullmatch(gap):
            return "list"
        if answer:
            for kind, pattern in (("and", _AND_GAP), ("slash", _SLASH_GAP), ("range", _RANGE_GAP)):
                if pattern.fullmatch(gap):
                    return kind
        return None

    # A chain longer than _MAX_CHAIN each way is cut there and counts as a hedge (no honest answer
    # repeats itself 20 times, and a different value may hide past the cut); each latex value costs a parse.
    while lo > 0 and index - lo < _MAX_CHAIN and (kind := link(lo - 1)):
        kinds.add(kind)
        lo -= 1
    while hi + 1 < len(tokens) and hi - index < _MAX_CHAIN and (kind := link(hi)):
        if answer and kind == "list" and _ARITH_AFTER.match(text, tokens[hi + 1].end):
            break  # "the answer is 42, 6 * 7 = 42": working after a comma, not a second value
        kinds.add(kind)
        hi += 1
    cut = (lo > 0 and index - lo >= _MAX_CHAIN and link(lo - 1) is not None) or (
        hi + 1 < len(tokens) and hi - index >= _MAX_CHAIN and link(hi) is not None)
    chained = hi > lo if answer else "or" in kinds
    group = tokens[lo: hi + 1] if chained else [tokens[index]]
    if chained:
        values = [t.value for t in group]
        if cut or values[0] is None or any(v is None or not _same(values[0], v) for v in values[1:]):
            ranged = "range" in kinds or _RANGE_WORD.search(text, max(0, group[0].start - _LOOK), group[0].start)
            return group, "range" if ranged else "hedged"
    if answer:
        if _bounded(text, group[0], group[-1]):
            return group, "range"
        if _SLASH_AFTER.match(text, group[-1].end, group[-1].end + _LOOK):
            return group, "hedged"
    elif index > 0 and _AND_GAP.fullmatch(text[tokens[index - 1].end: tokens[index].start]) \
            and _BETWEEN.search(text, max(0, tokens[index - 1].start - _LOOK), tokens[index - 1].start) \
            and not _same(tokens[index - 1].value, tokens[index].value):
        return tokens[index - 1: index + 1], "range"
    return group, None


# ---------------------------------------------------------------------------------------------------- verifier


@lru_cache(maxsize=4096)
def _reference_value_cached(reference: str):
    text = reference.rsplit("####", 1)[-1] if "####" in reference else reference
    value = _strict_value(_normalise_chars(text), words_before=False)
    if value is None:
        shown = reference if len(reference) <= 80 else reference[:77] + "..."
        raise DataError(
            f"math verifier: reference {shown!r} is not a number; give a bare value (e.g. '72', '3/4', "
            f"'\\frac{{3}}{{4}}') or a GSM8K answer ending in '#### <number>'"
        )
    return value


def reference_value(reference) -> sympy.Expr:
    """The numeric value of a reference (a bare value, a GSM8K answer whose final line is ``#### x``, or a
    reasoning-gym entry stored as JSON, whose ``answer`` is used).

    Raises :class:`~workbench.errors.DataError` when it is not a number.
    """
    if isinstance(reference, (int, float, Fraction)) and not isinstance(reference, bool):
        reference = str(reference)
    if not isinstance(reference, str) or not reference.strip():
        raise DataError(f"math verifier: reference must be a non-empty string, got {reference!r}")
    if reference.lstrip().startswith("{"):
        # A reasoning-gym entry stored as JSON (see reasoning_gym.entry_to_reference): its gold is `answer`.
        import json

        try:
            entry = json.loads(reference)
        except ValueError:
            entry = None
        if isinstance(entry, dict) and "answer" in entry:
            reference = str(entry["answer"])
    return _reference_value_cached(reference)


@dataclass(frozen=True)
class _Reading:
    rule: str | None
    extracted: str | None
    value: object = None
    problem: str | None = None  # "hedged" | "range" | "rejected"


# Corrections (module docstring). "wait" only as an interjection; "I said N but" up to 200 characters, so
# a sentence of "I said I said ..." cannot make the scan quadratic ("I had"/"I gave ... but" are left out:
# word problems told in the first person use them for the story, not for corrections).
_CORRECTION = re.compile(
    r"\b(?:actually|correcting[ \t]+(?:myself|that)|(?:scratch|strike)[ \t]+that|on[ \t]+second[ \t]+thought"
    r"|or[ \t]+rather|I[ \t]+mean|sorry|oops|my[ \t]+(?:mistake|bad))\b"
    r"|\bcorrection[ \t]*:"
    r"|\b(?:no,?[ \t]+)?wait\b(?=[ \t]*(?:[,.!:;—–-]|no\b))"
    r"|\bI[ \t]+(?:said|wrote|got|put|thought|claimed|answered)\b[^.\n]{0,200}?\bbut\b",
    re.IGNORECASE)


def _shown(text: str, group: list[_Token]) -> str:
    return text[group[0].start: group[-1].end]


def _in_answer(rule: str, text: str, tokens: list[_Token], index: int) -> _Reading | None:
    """A reading for a value in an answer that is chained to others or bounded; None for a lone value."""
    group, problem = _chain(text, tokens, index, answer=True)
    if problem is None and len(group) == 1:
        return None
    return _Reading(rule, _shown(text, group), None if problem else tokens[index].value, problem)


def _read_hash(span: str) -> _Reading:
    tokens = _tokens(span)
    reading = _in_answer("####", span, tokens, 0) if tokens else None
    if reading is not None:
        return reading
    value, problem = _strict(span)
    return _Reading("####", span.strip(), value, problem)


def _read_box(text: str, tokens: list[_Token], index: int, box: _Span) -> _Reading:
    reading = _in_answer("boxed", text, tokens, index)
    if reading is not None:
        return reading
    value, problem = _strict(box.text)
    return _Reading("boxed", box.text.strip(), value, problem)


def _read_phrase(span: str, tokens: list[_Token], index: int) -> _Reading:
    reading = _in_answer("answer_is", span, tokens, index)
    if reading is not None:
        return reading
    if index == 0:  # the span may be one latex value ("$\sqrt{16}$" is 4, not its token 16)
        value, problem = _strict(span)
        if value is not None:
            return _Reading("answer_is", _trim(span), value, problem)
    return _Reading("answer_is", tokens[index].text, tokens[index].value)


def _last_box(text: str, tokens: list[_Token], starts: list[int]):
    """The last ``\\boxed{}`` the text does not reject from outside: (token index, span), or None."""
    for box in sorted(_boxed_spans(text), key=lambda s: s.start, reverse=True):
        index = bisect.bisect_right(starts, box.start) - 1  # the outermost box holding it
        if _affirmed(text, tokens[index]):
            return index, box
    return None


def _last_phrase(text: str, floor: int):
    """The last answer phrase starting after ``floor`` that commits to a value, or None.

    Returns (start, span, span tokens, index of the value). Each phrase is read up to the end of its line
    or the next phrase, so the spans are disjoint and reading all of them stays linear.
    """
    matches = list(_ANSWER_PHRASE.finditer(text))
    for k in range(len(matches) - 1, -1, -1):
        m = matches[k]
        if m.start() <= floor:
            break
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        if k + 1 < len(matches):
            end = min(end, matches[k + 1].start())
        span = text[m.end(): end]
        tokens = _tokens(span)
        index = _pick(span, tokens)
        if index is not None:
            return m.start(), span, tokens, index
    return None


def _last_correction(text: str, tokens: list[_Token], starts: list[int], floor: int):
    """The last correction ending after ``floor`` that states a value: (end of the trigger, token index).

    Each trigger is read up to the end of the next one (disjoint stretches, so linear).
    """
    triggers = [m for m in _CORRECTION.finditer(text) if m.end() > floor]
    for k in range(len(triggers) - 1, -1, -1):
        lo = bisect.bisect_left(starts, triggers[k].end())
        hi = bisect.bisect_left(starts, triggers[k + 1].end()) if k + 1 < len(triggers) else len(tokens)
        index = _pick(text, tokens, lo, hi)
        if index is not None:
            return triggers[k].end(), index
    return None


def _read_prose(text: str, tokens: list[_Token]) -> tuple[_Reading, int]:
    """No commitment: the last affirmed number (among the last _MAX_CHAIN values)."""
    rejected = None
    for index in range(len(tokens) - 1, max(-1, len(tokens) - 1 - _MAX_CHAIN), -1):
        token = tokens[index]
        if not _affirmed(text, token):
            rejected = rejected or token
        elif token.value is not None:
            group, problem = _chain(text, tokens, index, answer=False)
            return _Reading("last_number", _shown(text, group), None if problem else token.value, problem), token.start
    if rejected is not None:
        return _Reading("last_number", rejected.text, None, "rejected"), rejected.start
    return _Reading(None, None), 0


def _rejected_from(text: str, tokens: list[_Token], starts: list[int], start: int, value) -> bool:
    """Whether the text rejects ``value`` at or after ``start``.

    More than _MAX_CHAIN rejections after an answer count as rejecting it: an honest answer is not
    followed by dozens of "not N", and comparing each (a latex parse) would cost unbounded time.
    """
    seen = 0
    for token in tokens[bisect.bisect_left(starts, start):]:
        if not _affirmed(text, token):
            seen += 1
            if seen > _MAX_CHAIN or _same(value, token.value):
                return True
    return False


def _read(completion: str) -> _Reading:
    """Apply the rules of the module docstring: the last commitment, a later correction, else the last number."""
    text = _normalise_chars(completion)
    tokens = _tokens(text)
    starts = [t.start for t in tokens]

    commitments = []  # (position, read it)
    hashes = [m for m in _HASH.finditer(text) if m.group(1).strip()]
    if hashes:
        commitments.append((hashes[-1].start(), lambda m=hashes[-1]: _read_hash(m.group(1))))
    if box := _last_box(text, tokens, starts):
        commitments.append((tokens[box[0]].start, lambda: _read_box(text, tokens, *box)))
    floor = max((position for position, _ in commitments), default=-1)
    if phrase := _last_phrase(text, floor):
        commitments.append((phrase[0], lambda: _read_phrase(*phrase[1:])))

    if not commitments:
        reading, start = _read_prose(text, tokens)
    else:
        start, read = max(commitments, key=lambda c: c[0])
        if correction := _last_correction(text, tokens, starts, start):
            start, index = correction
            reading = _in_answer("correction", text, tokens, index) or _Reading(
                "correction", tokens[index].text, tokens[index].value)
        else:
            reading = read()
    if reading.problem is None and reading.value is not None \
            and _rejected_from(text, tokens, starts, start, reading.value):
        return _Reading(reading.rule, reading.extracted, None, "rejected")
    return reading


@register_verifier("math")
class MathVerifier(Verifier):
    """Numeric final answers (GSM8K and the like). See the module docstring for the rules.

    score is 1.0 when passed, else 0.0. Thread-safe: no signal-based timeouts, no shared mutable state. Built by
    ``get_verifier("math")``, each call runs under a hard time limit in a child process (``TimeLimitedVerifier``).
    """

    time_limit = DEFAULT_TIME_LIMIT_S

    def verify(self, prompt: str, completion: str, reference: str) -> Verdict:
        gold = reference_value(reference)  # bad data fails loudly, even for an empty completion
        details = {"reference_value": str(gold)}
        if completion is None or not str(completion).strip():
            return Verdict(0.0, False, {**details, "extracted": None, "reason": "empty completion", "rule": None})
        reading = _read(str(completion))
        details.update(extracted=reading.extracted, rule=reading.rule)
        if reading.rule is None:
            reason = "no answer found"
        elif reading.problem is not None:
            reason = reading.problem
        elif reading.value is None:
            reason = "unparseable answer"
        else:
            details["value"] = str(reading.value)
            passed = _same(gold, reading.value)
            return Verdict(float(passed), passed, {**details, "reason": "correct" if passed else "wrong answer"})
        return Verdict(0.0, False, {**details, "reason": reason})
