"""Pair strategies and pruning on hand-built verdicts; verify -> pairs through the real CLI; DPOTrainer accepts it."""

import json



from workbench.config import build
from workbench.data.pairs import PairsConfig, build_pairs


def row(pid, idx, completion, score, passed=None, **details):
    passed = score >= 1.0 if passed is None else passed
    return {"prompt_id": pid, "prompt": f"question {pid}", "sample_idx": idx, "completion": completion,
            "score": score, "passed": passed, "details": json.dumps({"extracted": None, "reason": "", **details})}


ROWS = [
    # p1: mixed -> signal
    row("p1", 0, "right, long reasoning", 1.0), row("p1", 1, "wrong", 0.0), row("p1", 2, "right", 1.0),
    row("p1", 3, "half", 0.5, passed=False),
    # p2: all passed -> too easy
    row("p2", 0, "a", 1.0), row("p2", 1, "b", 1.0),
    # p3: none passed -> no signal
    row("p3", 0, "x", 0.0), row("p3", 1, "y", 0.0),
]


def cfg(**kw):
    return build(PairsConfig, {"job": "pairs", "run_name": "t", "input_dir": "x", **kw})


def test_best_vs_worst_and_pruning_counts():
    pairs, counts = build_pairs(ROWS, cfg(), chat=False)
    assert counts == {"prompts": 3, "all_passed": 1, "none_passed": 1, "pruned_all_passed": 1,
                      "pruned_none_passed": 1, "kept": 1, "no_pair": 0, "skipped_rows": 0, "pairs": 1}
    (p,) = pairs
    assert p["prompt"] == "question p1" and p["rejected"] == "wrong" and p["chosen_score"] == 1.0
    assert p["chosen"] in ("right, long reasoning", "right") and p["strategy"] == "best_vs_worst"


def test_margin_strategy_counts_every_pair_above_margin():
    pairs, _ = build_pairs(ROWS, cfg(strategy="margin", margin=0.5, max_pairs_per_prompt=None), chat=False)
    # scores 1,0,1,0.5: pairs with diff >= 0.5: (1,0)x2, (1,0.5)x2, (0.5,0) = 5
    assert len(pairs) == 5
    assert all(p["chosen_score"] - p["rejected_score"] >= 0.5 for p in pairs)


def test_pruning_rules_are_configurable_and_seeded():
    keep_all = cfg(prune={"drop_all_passed": False, "drop_none_passed": False}, margin=0.0)
    _, counts = build_pairs(ROWS, keep_all, chat=False)
    assert counts["kept"] == 3 and counts["no_pair"] == 2  # p2 and p3 have equal scores: no pair
    frac = cfg(prune={"keep_all_passed_fraction": 0.5})
    easy = [row(f"e{i}", j, "a" * (j + 1), 1.0) for i in range(200) for j in range(2)]
    _, c1 = build_pairs(easy, frac, chat=False)
    _, c2 = build_pairs(easy, frac, chat=False)
    assert c1 == c2 and 70 < c1["pruned_all_passed"] < 130


def test_veripo_rule_longest_good_beats_incorrect_or_inconsistent():
    rows = [row("p", 0, "short right", 1.0, accuracy=1.0, consistent=True, repetitive=False),
            row("p", 1, "a much longer right answer", 1.0, accuracy=1.0, consistent=True, repetitive=False),
            row("p", 2, "right by luck", 0.6, passed=False, accuracy=1.0, consistent=False, repetitive=False),
            row("p", 3, "wrong", 0.2, passed=False, accuracy=0.0, consistent=True, repetitive=False),
            row("p", 4, "right but loops loops loops", 0.7, passed=False, accuracy=1.0, consistent=True,
                repetitive=True)]
    pairs, _ = build_pairs(rows, cfg(strategy="veripo", max_pairs_per_prompt=None), chat=False)
    assert {p["chosen"] for p in pairs} == {"a much longer right answer"}
    assert sorted(p["rejected"] for p in pairs) == ["right by luck", "wrong"]  # repetitive-but-right is neither


def test_reflective_pairs_prefer_self_correction():
    rows = [row("p", 0, "wrong attempt", 0.0), row("p", 1, "right answer", 1.0)]
    (p,) = build_pairs(rows, cfg(strategy="reflective", reflection=" | wait | "), chat=False)[0]
    assert p["chosen"] == "wrong attempt | wait | right answer" and p["rejected"] == "wrong attempt"


def test_conversational_format_and_determinism():
    a, _ = build_pairs(ROWS, cfg(strategy="margin", max_pairs_per_prompt=2), chat=True, system_prompt="sys")
    b, _ = build_pairs(ROWS, cfg(strategy="margin", max_pairs_per_prompt=2), chat=True, system_prompt="sys")
    assert a == b and len(a) == 2
    assert a[0]["prompt"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "question p1"}]
    assert a[0]["chosen"][0]["role"] == "assistant"


def test_skipped_rows_are_ignored_and_counted():
    rows = ROWS[:4] + [row("p1", 4, "bad ref", 0.0, skipped="reference 'abc' is not numeric")]
    _, counts = build_pairs(rows, cfg(), chat=False)
    assert counts["skipped_rows"] == 1
