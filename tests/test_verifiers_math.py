"""The math verifier: every row of the shipped case table, plus the safety and API guarantees."""

from __future__ import annotations

import builtins
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import workbench.verifiers
from workbench.errors import DataError
from workbench.verifiers import UnknownVerifierError, Verdict, get_verifier
from workbench.verifiers.verdict import TimeLimitedVerifier
from workbench.verifiers.math import MathVerifier, last_boxed, reference_value

CASES = Path(workbench.verifiers.__file__).parent / "data" / "math_cases.tsv"
HEADER = ["completion", "reference", "expected_pass", "rule"]


def decode(field: str) -> str:
    """TSV escaping (data/README.md): ``\\n`` is a newline, ``\\\\`` a backslash, other backslashes literal."""
    return re.sub(r"\\\\|\\n", lambda m: "\\" if m.group() == "\\\\" else "\n", field)


def load_cases() -> list:
    lines = CASES.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == HEADER
    params = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        assert len(fields) == 4, f"{CASES.name} line {number}: expected 4 tab-separated fields, got {len(fields)}"
        completion, reference, expected, rule = fields
        assert expected in ("true", "false"), f"{CASES.name} line {number}: expected_pass must be true/false"
        params.append(pytest.param(decode(completion), decode(reference), expected == "true", rule,
                                   id=f"{rule}-{number}"))
    return params


CASE_PARAMS = load_cases()


@pytest.fixture(scope="module")
def verifier() -> TimeLimitedVerifier:
    """As recipes build it: each call runs in a child process under the hard time limit."""
    return get_verifier("math")


@pytest.fixture(scope="module")
def inprocess() -> MathVerifier:
    """The rules in this process: for tests that watch this process (eval spies) or its threads."""
    return MathVerifier()


@pytest.mark.parametrize("completion, reference, expected, rule", CASE_PARAMS)
def test_case_table(verifier, completion, reference, expected, rule):
    verdict = verifier.verify("", completion, reference)
    assert verdict.passed is expected, (rule, verdict.details)
    assert verdict.score == (1.0 if expected else 0.0)


# The rule families of the module docstring (negations, ranges, alternatives, self-corrections, several
# markers): each needs rows that must FAIL and rows that must still PASS, or a verifier that fails (or
# passes) a whole family would go unnoticed by the table.
FAMILIES = {
    "negated": ["negated", "negated-isnt", "negated-is-not", "negated-cannot-be", "negated-never", "negated-neq",
                "negated-neq-latex", "negated-wrong", "negated-incorrect", "negated-hash", "negated-boxed-text",
                "negated-boxed-outside", "negated-after-marker", "negated-other-value", "negated-then-stated",
                "not-negated-not-only", "not-negated-property", "not-negated-superseded", "not-negated-question"],
    "range": ["range-between", "range-between-prose", "range-from-to", "range-hyphen", "range-en-dash", "range-to",
              "range-boxed", "range-bound", "not-range-hyphen-working", "not-range-from-to-prose",
              "not-range-between-working", "not-range-bound-working"],
    "alternatives": ["alternatives-and", "alternatives-list", "alternatives-slash", "not-alternatives-fraction",
                     "not-alternatives-same-value", "not-alternatives-working"],
    "correction": ["correction-actually", "correction-no-wait", "correction-colon", "correction-i-said",
                   "correction-wait-working", "correction-rejects", "correction-prose", "not-correction-no-value",
                   "not-correction-wait-verb"],
    "markers": ["markers-last-wins", "markers-restated", "markers-agree", "markers-phrase-without-value"],
}


def test_case_table_covers_the_rules():
    rules = {p.values[3] for p in CASE_PARAMS}
    assert len(CASE_PARAMS) >= 130
    for needed in ["hash", "boxed", "boxed-nested-fraction", "answer-is", "last-number", "thousands", "currency",
                   "units", "trailing-zero", "fraction-vs-decimal", "decimal-vs-fraction", "negative", "percent",
                   "hedged-hash", "hedged-either", "hedged-boxed", "code", "empty", "wrong-answer",
                   "answer-is-working", *(rule for family in FAMILIES.values() for rule in family)]:
        assert needed in rules, needed


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_rule_family_has_rows_that_pass_and_rows_that_fail(family):
    expected = {p.values[2] for p in CASE_PARAMS if p.values[3] in FAMILIES[family]}
    assert expected == {True, False}, family


@pytest.mark.parametrize("completion, reference, expected, rule", CASE_PARAMS)
def test_verdict_shape(verifier, completion, reference, expected, rule):
    verdict = verifier.verify("", completion, reference)
    assert isinstance(verdict, Verdict)
    assert 0.0 <= verdict.score <= 1.0
    assert "extracted" in verdict.details and "reason" in verdict.details
    assert verdict.reason and isinstance(verdict.reason, str)
    assert verdict.extracted is None or isinstance(verdict.extracted, str)


@pytest.mark.parametrize("reference", ["Paris", "#### banana", "x + 1", "five", "", "   ", None, "#### "])
def test_non_numeric_reference_raises_data_error(verifier, reference):
    with pytest.raises(DataError, match="reference"):
        verifier.verify("", "#### 5", reference)


def test_bad_reference_fails_even_for_an_empty_completion(verifier):
    with pytest.raises(DataError):
        verifier.verify("", "", "not a number")


@pytest.mark.parametrize("reference, value", [("72", 72), ("#### 1,234", 1234), ("Text\n#### -5", -5),
                                              ("3/4", 0.75), (r"\frac{3}{4}", 0.75), (72, 72), ("$18.00", 18)])
def test_reference_forms(reference, value):
    assert float(reference_value(reference)) == value


@pytest.mark.parametrize("completion", [
    "#### 42 or 43",
    "The answer is either 42 or 43.",
    r"\boxed{42} or \boxed{43}",
    "So he has 42, or maybe 43.",
    "Final answer: 42 or possibly 43",
    "The answer is 42. Or 43.",
])
def test_hedged_answers_fail_with_reason(verifier, completion):
    verdict = verifier.verify("", completion, "42")
    assert not verdict.passed
    assert verdict.reason == "hedged"
    assert "42" in verdict.extracted and "43" in verdict.extracted


@pytest.mark.parametrize("completion", [
    "3 + 4 = 7 so 7 or more... in total 42",
    "She could take 2 or 3 buses; either way she pays $42",
    "#### 42\n(could it be 41 or 43? no.)",
])
def test_hedging_is_only_judged_on_the_final_answer(verifier, completion):
    assert verifier.verify("", completion, "42").passed


@pytest.mark.parametrize("completion, reason", [
    ("", "empty completion"), ("   \n ", "empty completion"), (None, "empty completion"),
    ("I have no idea.", "no answer found"), ("####", "no answer found"), (r"\boxed{x}", "unparseable answer"),
    ("#### 41", "wrong answer"), ("#### 42", "correct"),
    # what the text says about the value, in every place an answer can stand
    ("The answer is not 42.", "rejected"), ("#### not 42", "rejected"), (r"\boxed{42} is wrong.", "rejected"),
    ("#### 42\n42 is incorrect.", "rejected"), (r"\boxed{42}. Actually, 42 is wrong.", "rejected"),
    ("The answer is between 40 and 45.", "range"), ("#### 40-45", "range"), (r"\boxed{\text{at least } 42}", "range"),
    ("Perhaps between 40 and 42.", "range"), ("#### 42 or more", "range"),
    ("The answer is 42 and 43.", "hedged"), ("#### 42, 43", "hedged"), (r"\boxed{42}/\boxed{43}", "hedged"),
    ("\\boxed{41}\nNo wait, 42 or 43.", "hedged"),
])
def test_reasons(verifier, completion, reason):
    verdict = verifier.verify("", completion, "42")
    assert verdict.reason == reason
    if reason == "empty completion":
        assert verdict.extracted is None and verdict.score == 0.0


CODE_LIKE = [
    "__import__('os').system('rm -rf /')",
    '\\boxed{os.system("ls")}',
    "#### __import__('os').system('echo 42')",
    "The answer is exec(\"import os; os.system('echo 42')\")",
    "eval('6*7')",
    "print(42)",
]


@pytest.mark.parametrize("completion", CODE_LIKE)
def test_code_like_text_never_runs_and_never_passes(inprocess, monkeypatch, completion):
    inprocess.verify("", r"\boxed{\frac{1}{2}}", "0.5")  # warm up lazy imports before eval/exec are removed

    def forbidden(*args, **kwargs):
        raise AssertionError(f"model output reached a code runner: {args[:1]!r}")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    verdict = inprocess.verify("", completion, "42")
    assert not verdict.passed


@pytest.mark.parametrize("completion", CODE_LIKE + [
    r"\boxed{\text{__import__('os').system('ls')}}",
    r"The answer is \frac{__import__('os')}{2}",
    r"#### \sqrt{__import__('os').system('ls')}",
])
def test_no_model_text_reaches_eval(inprocess, monkeypatch, completion):
    """Even the latex path: latex2sympy's internal eval sees numerals only (see math.py's docstring)."""
    seen: list[str] = []
    real_eval, real_exec = builtins.eval, builtins.exec

    def spy(real):
        def wrapper(source, *args, **kwargs):
            seen.append(source if isinstance(source, str) else repr(source))
            return real(source, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "eval", spy(real_eval))
    monkeypatch.setattr(builtins, "exec", spy(real_exec))
    verdict = inprocess.verify("", completion, "42")
    monkeypatch.undo()
    assert not verdict.passed
    for source in seen:
        assert "__import__" not in source and "system" not in source and "os." not in source, source


def test_works_in_worker_threads(inprocess):
    """math-verify's signal-based timeouts are off, so latex parsing works outside the main thread."""
    completions = [r"\boxed{\frac{3}{4}}", r"\boxed{\dfrac{6}{8}}", "#### 3/4", "The answer is 0.75"] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda c: inprocess.verify("", c, "0.75"), completions))
    assert all(v.passed for v in verdicts)


def test_the_case_table_gives_the_same_verdicts_in_worker_threads(inprocess):
    """No shared mutable state: 4 threads over the whole table agree with one thread."""
    args = [(c, r) for c, r, _, _ in (p.values for p in CASE_PARAMS)] * 2
    alone = [inprocess.verify("", c, r).details for c, r in args]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda a: inprocess.verify("", *a).details, args))
    assert threaded == alone


# Adversarial completions for the new scans. A quadratic scan would take hours on these 20k repetitions
# (about 10^5 characters each: 10^10 steps); the linear ones take well under a second each. Nothing is
# timed: a regression shows up as a hung test, and the verdicts are checked.
REPEATS = 20_000


@pytest.mark.parametrize("completion, reason", [
    ("The answer is not 1 " * REPEATS, "rejected"),  # answer phrases with nothing affirmed, one line
    (r"\boxed{1} " + "not \\boxed{1} " * REPEATS, "rejected"),  # rejected boxes
    (r"\boxed{2} " + "actually not 1 " * REPEATS, "rejected"),  # corrections that state nothing
    (r"\boxed{1} " + "I said " * REPEATS, "correct"),  # "I said ... but" never closes
    ("between 1 and " * REPEATS + "2", "range"),
    ("The answer is " + "1-" * REPEATS + "2", "range"),  # a range chain past _MAX_CHAIN
    ("The answer is " + "1 or " * REPEATS + "1", "hedged"),  # equal values past the cut still hedge
    ("#### 1\n" + "wait, " * REPEATS, "correct"),
    ("#### not 1\n" * REPEATS, "rejected"),
])
def test_adversarial_input_is_read_in_linear_time(verifier, completion, reason):
    assert verifier.verify("", completion, "1").reason == reason


def test_pathological_latex_is_refused_quickly(verifier):
    verdict = verifier.verify("", r"\boxed{" + "9^{" * 40 + "9" + "}" * 40 + "}", "9")
    assert not verdict.passed


def test_last_boxed_handles_nesting():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{3}{4}} c") == r"\frac{3}{4}"
    assert last_boxed(r"\boxed{\text{a {b}}}") == r"\text{a {b}}"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("no box") is None


def test_verify_batch(verifier):
    verdicts = verifier.verify_batch(["", ""], ["#### 1", "#### 2"], ["1", "1"])
    assert [v.passed for v in verdicts] == [True, False]
    with pytest.raises(ValueError, match="equally long"):
        verifier.verify_batch([""], ["#### 1", "#### 2"], ["1"])


def test_registry():
    # By name, the verifier runs under its hard time limit (tests/test_verifier_fuzz.py); time_limit=None is in-process.
    limited = get_verifier("math")
    assert isinstance(limited, TimeLimitedVerifier) and isinstance(limited.inner, MathVerifier)
    assert limited.name == "math" and limited.seconds == MathVerifier.time_limit > 0
    assert type(get_verifier("math", time_limit=None)) is MathVerifier
    assert workbench.verifiers.VERIFIERS["math"] is MathVerifier
    assert MathVerifier.name == "math"
    with pytest.raises(UnknownVerifierError, match="did you mean 'math'"):
        get_verifier("maths")


def test_verdict_invariants():
    verdict = Verdict(1.0, True)
    assert verdict.details == {"extracted": None, "reason": ""}
    with pytest.raises(ValueError):
        Verdict(1.5, True)
    with pytest.raises(ValueError):
        Verdict(-0.1, False)


def test_reasoning_gym_json_reference_uses_its_answer():
    from workbench.verifiers.math import MathVerifier
    from workbench.verifiers.reasoning_gym import entry_to_reference

    ref = entry_to_reference({"question": "What is 6 * 7?", "answer": "42", "metadata": {"x": 1}})
    v = MathVerifier()
    assert v.verify("q", "#### 42", ref).passed and not v.verify("q", "#### 41", ref).passed
