"""The ``math`` verifier: GSM8K-style numeric answers, checked by rule (no model, no eval).

Why rules and not "does the reference appear somewhere": a reward that credits any mention of the right
number teaches a policy to list numbers. So the verifier reads ONE final answer, the way a grader would,
and refuses answers that hedge between values.

Extraction (the first rule that applies decides; "last" means the last occurrence in the completion):

1. ``#### x`` -- the rest of the last ``####`` line. Decisive: if it is not exactly one number with only
   words around it (``#### 18``, ``#### The total is 18 apples``), the verdict fails ("unparseable
   answer") rather than falling back to some number in the reasoning.
2. ``\\boxed{x}`` (or ``\\fbox{x}``) -- the last one; nested braces are balanced (``\\boxed{\\frac{3}{4}}``).
   Decisive, like ``####``.
3. "the answer is x" / "final answer: x" (any case, ``**bold**`` tolerated) -- the first number in the rest
   of the line after the last such phrase. Not decisive: prose such as "the answer is not obvious" has no
   number, and then the next rule applies.
4. Otherwise the last number in the text.

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
* not handled: number words ("five"), mixed numbers in plain text ("1 1/2"), scientific notation.

Hedging: the extracted answer fails with reason "hedged" when it is joined to a *different* value by
"or" / "either" / "maybe" / "perhaps" / "possibly" (optionally after a comma or full stop):
``42 or 43``, ``either 5 or 6``, ``\\boxed{42} or \\boxed{43}``, ``#### 42 or 43``, ``42. Or maybe 43``.
Only the values directly chained to the final answer count, so working such as
``3 + 4 = 7 so 7 or more`` or ``either 2 or 3 boxes fit, so 5`` is not a hedge, and ``3/4 or 0.75``
(same value) is not a hedge either.

Safety: model output is never evaluated. Plain numbers are read by a regular expression into
``fractions.Fraction``; latex goes through math-verify's ANTLR latex parser only. math-verify's
``ExprExtractionConfig`` is deliberately NOT used: it hands the matched text to ``sympy.parse_expr``,
which calls ``eval``. (One quirk remains inside the latex parser: latex2sympy turns each numeric lexer
token into ``sympy.Number(token)``, and sympy evaluates that digit-only string internally, e.g.
``eval("Integer (5 )")``. The lexer guarantees it is a numeral, never free text; the tests spy on
``eval``/``exec`` to check no model text reaches them.) math-verify's signal-based timeouts are
disabled (``parsing_timeout=None``, ``timeout_seconds=None``) because ``signal.alarm`` only works in the
main thread (and would cancel pytest-timeout's alarm); the span length cap and the "plain number" check
above stand in for them.
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
from workbench.verifiers.verdict import Verdict, Verifier, register_verifier

__all__ = ["MathVerifier", "reference_value", "last_boxed", "hash_answer", "answer_phrase"]

_MAX_SPAN = 300  # longest answer span handed to the latex parser (there is no timeout: see docstring)
_MAX_CHAIN = 20  # values looked at around the answer (hedge chains, unreadable trailing tokens)

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
_LEAD_IN = re.compile(r"(?:[^\W\d_]+[\s:,]*)+")  # "The total is", "Answer:"
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


def _strict_value(span: str, words_before: bool = True):
    """The value of a span that should be just an answer, or None.

    Either latex that math-verify reads as a plain number, or exactly one number with only words
    around it: unit words after (``12 apples``) and, when ``words_before``, a lead-in before
    (``#### The total is 12``). No second number, no code characters.
    """
    s = _trim(span)
    if not s or len(s) > _MAX_SPAN:
        return None
    if _LATEX_CMD.search(s):
        value = _latex_value(s)
        if value is not None:
            return value
        s = _TEXT_CMD.sub(r" \1", s).strip()
    m = _NUM.search(s) if words_before else _NUM.match(s)
    if m is None:
        return None
    head, tail = s[: m.start()].strip(), s[m.end():].strip().rstrip(".,;:!*").strip()
    if (head and not _LEAD_IN.fullmatch(head)) or (tail and not _UNIT_TAIL.fullmatch(tail)):
        return None
    return _number(m)


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


# ----------------------------------------------------------------------------------------------------- hedging

_HEDGE_GAP = re.compile(r"[\s,;.(]*(?:(?:or|either|maybe|perhaps|possibly|even)\b[\s,;.(]*)+", re.IGNORECASE)
_LIST_GAP = re.compile(r"\s*,\s*")


def _chain(text: str, tokens: list[_Token], index: int) -> tuple[list[_Token], bool]:
    """The tokens joined to ``tokens[index]`` by "or"-like words (and commas), and whether that is a hedge.

    A hedge is a chain holding at least two different values; ``3/4 or 0.75`` is a chain, not a hedge.
    Without an "or"-like word a chain is just ``[tokens[index]]`` (a comma list alone is not a hedge).
    """
    lo = hi = index
    hedge_words = False

    def link(i: int) -> str | None:  # the kind of gap between tokens i and i+1
        gap = text[tokens[i].end: tokens[i + 1].start]
        if _HEDGE_GAP.fullmatch(gap):
            return "or"
        return "list" if _LIST_GAP.fullmatch(gap) else None

    # A chain longer than _MAX_CHAIN each way is cut there: it is a hedge long before that, and
    # each latex value costs a parse.
    while lo > 0 and index - lo < _MAX_CHAIN and (kind := link(lo - 1)):
        hedge_words |= kind == "or"
        lo -= 1
    while hi + 1 < len(tokens) and hi - index < _MAX_CHAIN and (kind := link(hi)):
        hedge_words |= kind == "or"
        hi += 1
    if not hedge_words:
        return [tokens[index]], False
    group = tokens[lo: hi + 1]
    values = [t.value for t in group if t.value is not None]
    return group, any(not _same(values[0], v) for v in values[1:])


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
    hedged: bool = False


def _read(completion: str) -> _Reading:
    """Apply the extraction rules in order (see the module docstring)."""
    text = _normalise_chars(completion)

    def chained(rule: str, where: str, tokens: list[_Token], index: int) -> _Reading | None:
        """A reading for a hedge, or for an agreeing chain ("3/4 or 0.75"); None for a lone value."""
        group, hedged = _chain(where, tokens, index)
        if len(group) == 1:
            return None
        shown = where[group[0].start: group[-1].end]
        return _Reading(rule, shown, None if hedged else tokens[index].value, hedged)

    span = hash_answer(text)
    if span is not None:
        tokens = _tokens(span)
        return (tokens and chained("####", span, tokens, 0)) or _Reading("####", span.strip(), _strict_value(span))

    boxes = _boxed_spans(text)
    if boxes:
        last = max(boxes, key=lambda s: s.start)
        tokens = _tokens(text)
        index = next(i for i, t in enumerate(tokens) if t.start <= last.start < t.end)
        return chained("boxed", text, tokens, index) or _Reading("boxed", last.text.strip(), _strict_value(last.text))

    span = answer_phrase(text)
    if span is not None:
        tokens = _tokens(span)
        if tokens and (reading := chained("answer_is", span, tokens, 0)):
            return reading
        value = _strict_value(span)
        if value is not None:
            return _Reading("answer_is", _trim(span), value)
        if tokens and tokens[0].value is not None:
            return _Reading("answer_is", tokens[0].text, tokens[0].value)

    tokens = _tokens(text)
    for index in range(len(tokens) - 1, max(-1, len(tokens) - 1 - _MAX_CHAIN), -1):  # the last number that reads
        if tokens[index].value is not None:
            return chained("last_number", text, tokens, index) or _Reading(
                "last_number", tokens[index].text, tokens[index].value)
    return _Reading(None, None)


@register_verifier("math")
class MathVerifier(Verifier):
    """Numeric final answers (GSM8K and the like). See the module docstring for the rules.

    score is 1.0 when passed, else 0.0. Thread-safe: no signal-based timeouts, no shared mutable state.
    """

    def verify(self, prompt: str, completion: str, reference: str) -> Verdict:
        gold = reference_value(reference)  # bad data fails loudly, even for an empty completion
        details = {"reference_value": str(gold)}
        if completion is None or not str(completion).strip():
            return Verdict(0.0, False, {**details, "extracted": None, "reason": "empty completion", "rule": None})
        reading = _read(str(completion))
        details.update(extracted=reading.extracted, rule=reading.rule)
        if reading.rule is None:
            reason = "no answer found"
        elif reading.hedged:
            reason = "hedged"
        elif reading.value is None:
            reason = "unparseable answer"
        else:
            details["value"] = str(reading.value)
            passed = _same(gold, reading.value)
            return Verdict(float(passed), passed, {**details, "reason": "correct" if passed else "wrong answer"})
        return Verdict(0.0, False, {**details, "reason": reason})
