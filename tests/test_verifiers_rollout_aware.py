"""The rollout-aware (VerIPO) verifier: repetition ratios and weighted scores checked against hand-computed values."""

from __future__ import annotations

import pytest

from workbench.config import RecipeError
from workbench.generation.backends import FakeBackend
from workbench.verifiers import UnknownVerifierError, get_verifier
from workbench.verifiers.judge import JudgeVerifier
from workbench.verifiers.repetition import ngram_repetition_ratio, word_tokens
from workbench.verifiers.rollout_aware import RolloutAwareConfig, RolloutAwareVerifier

# 10 copies of a 4-token phrase, then "#### 5": 42 tokens, 39 4-grams. The periodic part (tokens 0..39)
# holds 4 distinct 4-grams; the two windows reaching into "#### 5" add 2 more: 1 - 6/39 = 33/39.
LOOP = "the answer is 5 " * 10 + "#### 5"
CLEAN = "3 + 4 = 7. #### 7"  # 7 word tokens, 4 distinct 4-grams: ratio 0


# ------------------------------------------------------------------------------------------------ repetition

@pytest.mark.parametrize("text, n, expected", [
    ("a b c a b c", 2, 1 - 3 / 5),   # ab bc ca ab bc
    ("a b c a b c", 3, 1 - 3 / 4),   # abc bca cab abc
    ("x x x x x", 1, 1 - 1 / 5),
    ("The the THE", 1, 1 - 1 / 3),   # case-folded
    ("one two three", 4, 0.0),       # fewer tokens than n: no n-grams
    ("", 4, 0.0),
    ("a b c d e f", 2, 0.0),
    (LOOP, 4, 33 / 39),
    (CLEAN, 4, 0.0),
])
def test_ngram_repetition_ratio_hand_computed(text, n, expected):
    assert ngram_repetition_ratio(text, n) == pytest.approx(expected)


def test_repetition_tokens_and_bad_n():
    assert word_tokens("  Apple. apple\nAPPLE ") == ["apple.", "apple", "apple"]
    assert ngram_repetition_ratio(["a", "a"], 1) == pytest.approx(0.5)  # a token list is accepted as is
    with pytest.raises(ValueError, match="n-gram size"):
        ngram_repetition_ratio("a b", 0)


# ------------------------------------------------------------------------------------------------ combination

def cheap(**options) -> RolloutAwareVerifier:
    return get_verifier("rollout_aware", use_judge=False, **options)


def judged(*answers, **options) -> tuple[RolloutAwareVerifier, FakeBackend]:
    backend = FakeBackend(list(answers))
    return RolloutAwareVerifier(judge_backend=backend, **options), backend


def test_judge_disabled_drops_consistency_from_score_and_pass():
    v = cheap()
    assert v.judge is None
    right, wrong = v.verify_batch(["q", "q"], [CLEAN, "3 + 4 = 8. #### 8"], ["7", "7"])
    # weights 1, 0.25, 0.25 (consistency dropped): (1 + 0.25 + 0.25) / 1.5 and (0 + 0.25 + 0.25) / 1.5
    assert right.score == pytest.approx(1.0) and right.passed
    assert wrong.score == pytest.approx(0.5 / 1.5) and not wrong.passed
    d = right.details
    assert d["consistent"] is None and d["consistency_reason"] == "judge disabled" and d["consistency_raw"] is None
    assert d["accuracy"] == 1.0 and d["accurate"] is True and d["accuracy_reason"] == "correct"
    assert d["repetition_ratio"] == 0.0 and d["repetitive"] is False and d["length"] == 7 and d["length_ok"]
    assert d["extracted"] == "7" and "consistency" not in d["components"]
    assert wrong.reason.startswith("inaccurate (wrong answer)")


@pytest.mark.parametrize("answer, consistent, malformed, score, passed", [
    ("The steps derive 7.\nCONSISTENT: YES", True, False, 2.0 / 2.0, True),
    ("Adds wrongly but lands on 7.\nCONSISTENT: NO", False, False, 1.5 / 2.0, False),   # right answer, wrong reasoning
    ("CONSISTENT: maybe", None, True, 1.5 / 2.0, False),  # malformed: counts as inconsistent
])
def test_consistency_from_judge(answer, consistent, malformed, score, passed):
    v, backend = judged(answer)
    verdict = v.verify("What is 3 + 4?", CLEAN, "7")
    # (1*1 + 0.5*c + 0.25*1 + 0.25*1) / 2.0
    assert verdict.score == pytest.approx(score) and verdict.passed is passed
    assert verdict.details["consistent"] is consistent and verdict.details["consistency_malformed"] is malformed
    assert verdict.details["consistency_raw"] == answer
    assert v.judge.stats["malformed"] == int(malformed) and v.judge.stats["total"] == 1
    if not passed:
        assert "inconsistent" in verdict.reason
    assert backend.calls[0][1].temperature == 0.0


def test_repetitive_completion_fails_even_when_right_and_consistent():
    v, _ = judged("CONSISTENT: YES")
    verdict = v.verify("q", LOOP, "5")
    assert verdict.details["accurate"] and verdict.details["consistent"] is True
    assert verdict.details["repetition_ratio"] == pytest.approx(33 / 39) and verdict.details["repetitive"]
    assert verdict.score == pytest.approx((1 + 0.5 + 0 + 0.25) / 2.0) and not verdict.passed
    assert "repetitive" in verdict.reason
    lenient = cheap(repetition_threshold=0.9).verify("q", LOOP, "5")
    assert not lenient.details["repetitive"] and lenient.passed


def test_length_bounds_and_require():
    verdict = cheap(min_len=10, max_len=20).verify("q", CLEAN, "7")  # 7 tokens < 10
    assert verdict.details["length"] == 7 and verdict.details["length_ok"] is False
    assert verdict.score == pytest.approx((1 + 0.25 + 0) / 1.5) and verdict.passed  # length is not required by default
    strict = cheap(min_len=10, require=["accuracy", "length"]).verify("q", CLEAN, "7")
    assert not strict.passed and strict.reason.startswith("length 7 outside [10, inf]")
    long = cheap(max_len=5).verify("q", CLEAN, "7")
    assert long.details["length_ok"] is False


def test_custom_weights():
    v, _ = judged("CONSISTENT: NO", weight_accuracy=2.0, weight_consistency=1.0, weight_non_repetition=0.0,
                  weight_length=1.0)
    verdict = v.verify("q", CLEAN, "7")
    assert verdict.score == pytest.approx((2 * 1 + 1 * 0 + 0 + 1 * 1) / 4)


def test_batch_sends_one_judge_call_and_keeps_order():
    v, backend = judged("CONSISTENT: YES", "CONSISTENT: NO", "nonsense")
    verdicts = v.verify_batch(["q1", "q2", "q3", "q4"], [CLEAN, "", "3 + 4 = 8. #### 8", "#### 7"],
                              ["7", "7", "7", "7"])
    assert len(backend.calls) == 1 and len(backend.calls[0][0]) == 3  # the empty completion is not judged
    assert [x.details["consistent"] for x in verdicts] == [True, False, False, None]
    assert [x.details["consistency_malformed"] for x in verdicts] == [False, False, False, True]
    assert [x.passed for x in verdicts] == [True, False, False, False]
    assert v.judge.stats == {"total": 3, "malformed": 1, "inconsistent_pairs": 0}
    assert v.stats == {"judge_total": 3, "judge_malformed": 1, "judge_inconsistent_pairs": 0}
    assert cheap().stats == {}
    empty = verdicts[1].details
    assert empty["accuracy_reason"] == "empty completion" and empty["consistency_reason"] == "empty completion"
    assert empty["length"] == 0 and empty["consistency_raw"] is None
    # Empty: accuracy 0, inconsistent, not repetitive, length 0 < min_len 1.
    assert verdicts[1].score == pytest.approx(0.25 / 2.0)
    # "#### 7": accurate, malformed judge answer (inconsistent), not repetitive, length 2 ok.
    assert verdicts[3].score == pytest.approx((1 + 0 + 0.25 + 0.25) / 2.0)


def test_prebuilt_judge_and_accuracy_options():
    judge = JudgeVerifier(backend=FakeBackend(["CONSISTENT: YES"]))
    v = RolloutAwareVerifier(judge_verifier=judge, accuracy_verifier="math", accuracy_options={})
    assert v.judge is judge and v.verify("q", CLEAN, "7").passed
    assert judge.stats["total"] == 1


@pytest.mark.parametrize("options, match", [
    ({"require": ["accuracy", "brevity"]}, "unknown check"),
    ({"weight_length": -1.0}, "weight_length"),
    ({"weight_accuracy": 0.0, "weight_non_repetition": 0.0, "weight_length": 0.0}, "sum to 0"),
    ({"accuracy_verifier": "rollout_aware"}, "rule verifier"),
    ({"repetition_threshold": 1.5}, "repetition_threshold"),
    ({"min_len": 10, "max_len": 5}, "max_len"),
    ({"judge": {"scale_max": 0}}, "scale_max"),
    ({"repetiton_n": 3}, "Did you mean 'repetition_n'"),
])
def test_bad_options_fail_clearly(options, match):
    with pytest.raises(RecipeError, match=match):
        get_verifier("rollout_aware", use_judge=False, **options)


def test_unknown_accuracy_verifier():
    with pytest.raises(UnknownVerifierError, match="unknown verifier"):
        cheap(accuracy_verifier="mathh")


def test_config_object():
    cfg = RolloutAwareConfig(use_judge=False, repetition_n=2)
    v = RolloutAwareVerifier(config=cfg)
    verdict = v.verify("q", "a b a b #### 7", "7")
    assert verdict.details["repetition_ratio"] == pytest.approx(1 - 4 / 5)  # bigrams: ab ba ab b#### ####7
