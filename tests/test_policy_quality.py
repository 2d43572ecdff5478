"""benchmarks/policy_quality.py without training anything: the split, the config hash, and the report's statistics on
synthetic unit records whose answers are worked out by hand."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module():
    spec = importlib.util.spec_from_file_location("bench_policy_quality", BENCH / "policy_quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


pq = _module()


def test_a_problem_and_its_commuted_twin_share_a_key():
    k = pq.problem_key
    assert k("Calculate 5 + 33.") == k("Calculate 33 + 5.")
    assert k("Solve the following multiplication: 15 * 43. Give") == k("x: 43 * 15.")
    assert k("Calculate 5 - 33.") != k("Calculate 33 - 5.")
    assert k("no numbers here") == "no numbers here"


def test_held_out_and_training_problems_are_disjoint_by_key_and_files_are_stable(tmp_path):
    task = {"train": {"task": "basic_arithmetic", "seed": 3, "size": 150,
                      "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                 "operators": ["+"], "allow_parentheses": False, "allow_negation": False}},
            "heldout_size": 20,
            "transfer": {"task": "products", "seed": 4, "size": 10, "config": {"min_digits": 1, "max_digits": 1}}}
    # 1-digit sums: 45 unordered pairs of 1..9 -- fewer than 170 distinct problems, so the builder must refuse.
    with pytest.raises(SystemExit, match="distinct problems"):
        pq.build_prompts(task, tmp_path / "small")
    task["train"]["size"] = 20
    hashes = pq.build_prompts(task, tmp_path / "p")
    rows = {n: [json.loads(x) for x in (tmp_path / "p" / f"{n}.jsonl").read_text().splitlines()]
            for n in ("train", "heldout", "transfer")}
    assert [len(rows[n]) for n in ("train", "heldout", "transfer")] == [20, 20, 10]
    keys = {n: {pq.problem_key(r["prompt"]) for r in rows[n]} for n in ("train", "heldout")}
    assert len(keys["train"]) == 20 and len(keys["heldout"]) == 20  # distinct within each split too
    assert not keys["train"] & keys["heldout"]
    mtime = (tmp_path / "p" / "train.jsonl").stat().st_mtime_ns
    assert pq.build_prompts(task, tmp_path / "p") == hashes  # same seed, same bytes
    assert (tmp_path / "p" / "train.jsonl").stat().st_mtime_ns == mtime  # and not rewritten under a running job


def test_the_config_hash_moves_only_for_the_units_a_setting_affects():
    units = {u.name: u for u in pq.plan()}
    base, dpo, grpo = units["base-s0"], units["dpo-beta0.1-s0"], units["grpo-s0"]
    mode = pq.mode_settings(False)
    changed = {**mode, "pref_optim": {**mode["pref_optim"], "learning_rate": 1.0}}
    h = lambda u, m: pq.config_hash(u, m, {"train": "x"})  # noqa: E731
    assert h(base, mode) == h(base, changed) and h(grpo, mode) == h(grpo, changed)
    assert h(dpo, mode) != h(dpo, changed)
    assert h(base, mode) != pq.config_hash(base, mode, {"train": "y"})  # a new task invalidates everything
    assert h(base, mode) != h(units["base-s1"], mode)


def test_priority_one_comes_first_and_answers_the_main_question():
    plan = pq.plan()
    first = [u for u in plan if u.priority == 1]
    assert plan[:len(first)] == first
    assert {(u.method, u.seed) for u in first} == {(m, s) for m in ("base", "dpo", "hypo") for s in (0, 1)}
    assert {u.method for u in plan if u.priority == 2} == {"grpo"}
    assert len({u.name for u in plan}) == len(plan)


def _record(label, method, seed, greedy_correct, kl_per_prompt=None, setting=None, transfer_correct=None):
    ids = [f"p{i}" for i in range(100)]
    correct = {p: int(i in greedy_correct) for i, p in enumerate(ids)}
    sampled = {"correct": {p: 4 * c for p, c in correct.items()}, "samples": {p: 4 for p in ids},
               "per_query": {p: {"pass@4": float(c), "maj@4": float(c)} for p, c in correct.items()},
               "metrics": {"mean_length": 30.0}}
    if kl_per_prompt is not None:
        sampled["kl_per_prompt"] = kl_per_prompt
        sampled["kl"] = {"kl": sum(kl_per_prompt.values()) / len(kl_per_prompt), "kl_se": 0.01}
    t_ids = [f"t{i}" for i in range(50)]
    transfer = {"correct": {p: int(i in (transfer_correct or range(10))) for i, p in enumerate(t_ids)},
                "metrics": {"mean_length": 20.0}}
    return {"config_hash": "x", "prompt_sha256": {}, "results": {
        "unit": f"{label}-{seed}", "label": label, "method": method, "seed": seed, "setting": setting or {},
        "timings_s": {"total": 600.0, "train": 300.0}, "data": None,
        "outcomes": {"greedy": {"correct": correct, "metrics": {"mean_length": 30.0}}, "sampled": sampled,
                     "transfer": transfer}}}


def test_aggregate_pools_seeds_per_prompt_and_pairs_against_base():
    # base solves prompts 0-29 (both seeds); DPO seed 0 solves 0-69, seed 1 solves 0-49. Pooled per prompt, DPO is
    # 1 on 0-49, 0.5 on 50-69, 0 elsewhere: 0.6 against base's 0.3, a delta of 0.3. Seeds: 0.7 and 0.5.
    kl_d = {f"p{i}": 0.4 for i in range(20)}
    kl_h = {f"p{i}": 0.1 for i in range(20)}
    recs = [_record("base", "base", s, range(30)) for s in (0, 1)]
    recs += [_record("DPO b=0.1", "dpo", 0, range(70), kl_d, {"beta": 0.1}),
             _record("DPO b=0.1", "dpo", 1, range(50), kl_d, {"beta": 0.1}, transfer_correct=range(5))]
    recs += [_record("HyPO l=0.5", "hypo", s, range(60), kl_h, {"beta": 0.1, "lam": 0.5}) for s in (0, 1)]
    agg = pq.aggregate(recs)
    c = agg["comparisons"]["DPO b=0.1 - base"]["greedy"]
    assert c["delta"] == pytest.approx(0.3) and c["seeds_a"] == 2 and c["seeds_b"] == 2 and c["excludes_zero"]
    spread = agg["methods"]["DPO b=0.1"]["greedy"]
    assert spread["values"] == [pytest.approx(0.7), pytest.approx(0.5)] and spread["sd"] == pytest.approx(
        math.sqrt(0.02))
    # transfer: base 10/50; DPO 10/50 and 5/50 -> pooled 0.15, a loss of 0.05 (beyond the 2-point budget).
    assert agg["comparisons"]["DPO b=0.1 - base"]["transfer"]["delta"] == pytest.approx(-0.05)
    hd = agg["comparisons"]["HyPO l=0.5 - DPO b=0.1"]
    assert hd["kl"]["delta"] == pytest.approx(-0.3) and hd["kl"]["prompts"] == 20
    assert hd["greedy"]["delta"] == pytest.approx(0.0)
    lines = "\n".join(pq.goals(agg))
    assert "DPO b=0.1 vs base, greedy held-out accuracy: +0.300" in lines and "beats base" in lines
    assert "DPO b=0.1 transfer (forgetting) vs base: -0.050" in lines and "loses more than" in lines
    assert "lower, CI below 0" in lines and "HyPO's KL is lower than DPO's' is met" in lines


def test_the_plots_carry_error_bars(tmp_path, monkeypatch):
    recs = [_record("base", "base", 0, range(30)), _record("DPO b=0.1", "dpo", 0, range(50), {"p0": 0.2},
                                                           {"beta": 0.1})]
    agg = pq.aggregate(recs)
    import matplotlib.axes

    bars, errorbars = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, *a, **k: bars.append(k))
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, *a, **k: errorbars.append(k) or real(
        self, *a, **k))
    files = pq.plots(agg, tmp_path)
    assert len(files) == 2 and all(Path(f).exists() for f in files)
    assert len(bars) == 3 and all(k.get("yerr") is not None for k in bars)
    assert errorbars and all(k.get("yerr") is not None and k.get("xerr") is not None for k in errorbars)


def test_metric_by_prompt_reads_each_metric_by_hand():
    rec = _record("DPO b=0.1", "dpo", 0, range(3), {"p0": 0.25}, {"beta": 0.1})
    o = rec["results"]["outcomes"]
    o["sampled"]["correct"]["p0"] = 3  # 3 of 4 samples right: 0.75, not 3
    o["sampled"]["per_query"]["p1"] = {"pass@4": 1.0, "maj@4": 0.0}
    assert pq._metric_by_prompt(rec, "sampled")["p0"] == pytest.approx(0.75)
    assert pq._metric_by_prompt(rec, "greedy")["p0"] == 1.0 and pq._metric_by_prompt(rec, "greedy")["p5"] == 0.0
    assert pq._metric_by_prompt(rec, "pass@4")["p1"] == 1.0 and pq._metric_by_prompt(rec, "maj@4")["p1"] == 0.0
    assert pq._metric_by_prompt(rec, "transfer")["t9"] == 1.0 and pq._metric_by_prompt(rec, "transfer")["t10"] == 0.0
    assert pq._metric_by_prompt(rec, "kl") == {"p0": 0.25}
    assert pq._metric_by_prompt(_record("base", "base", 0, range(3)), "kl") == {}
    with pytest.raises(KeyError):
        pq._metric_by_prompt(rec, "nonsense")


def test_the_config_hash_for_every_setting_family():
    units = {u.name: u for u in pq.plan()}
    mode = pq.mode_settings(False)
    h = lambda u, m: pq.config_hash(units[u], m, {"train": "x"})  # noqa: E731
    everyone = ("base-s0", "dpo-beta0.1-s0", "hypo-beta0.1-lam0.5-s0", "grpo-s0", "veripo-iterations2-s0")
    moves = {  # setting -> the units whose hash it must move (all others: unchanged)
        "data": {"dpo-beta0.1-s0", "hypo-beta0.1-lam0.5-s0"},
        "grpo_optim": {"grpo-s0", "veripo-iterations2-s0"},
        "pref_optim": {"dpo-beta0.1-s0", "hypo-beta0.1-lam0.5-s0", "veripo-iterations2-s0"},
        "lora": {"dpo-beta0.1-s0", "hypo-beta0.1-lam0.5-s0", "grpo-s0", "veripo-iterations2-s0"},
        "dpo": {"dpo-beta0.1-s0", "hypo-beta0.1-lam0.5-s0", "veripo-iterations2-s0"},
        "hypo": {"hypo-beta0.1-lam0.5-s0"},
        "grpo": {"grpo-s0", "veripo-iterations2-s0"},
        "veripo": {"veripo-iterations2-s0"},
        "eval": set(everyone), "template": set(everyone), "max_tokens": set(everyone), "model": set(everyone),
        "backend": set(everyone),
    }
    assert set(moves) | {"task"} == set(mode), "every settings group is covered"
    for key, expected in moves.items():
        changed = {**mode, key: {"changed": True}}
        moved = {u for u in everyone if h(u, mode) != h(u, changed)}
        assert moved == expected, key
    # the setting itself is part of the unit: HyPO at another lambda is another unit
    assert h("hypo-beta0.1-lam0.5-s0", mode) != h("hypo-beta0.1-lam2.0-s0", mode)


def test_identical_seeds_give_the_interval_of_one_seed_through_aggregate():
    # A method recorded twice with the same outcomes (two "seeds") must give exactly the one-seed interval: the
    # prompts are the clusters. Flattening (prompt, seed) rows would shrink it by about sqrt(2).
    base = [_record("base", "base", 0, range(30))]
    one = pq.aggregate(base + [_record("DPO b=0.1", "dpo", 0, [i for i in range(100) if i % 3 == 0],
                                       {"p0": 0.2}, {"beta": 0.1})])
    two = pq.aggregate(base + [_record("DPO b=0.1", "dpo", s, [i for i in range(100) if i % 3 == 0], {"p0": 0.2},
                                       {"beta": 0.1}) for s in (0, 1)])
    a, b = one["comparisons"]["DPO b=0.1 - base"]["greedy"], two["comparisons"]["DPO b=0.1 - base"]["greedy"]
    assert a["ci_high"] - a["ci_low"] > 0.05  # a real interval, not a degenerate one
    assert (a["delta"], a["ci_low"], a["ci_high"]) == (b["delta"], b["ci_low"], b["ci_high"])
    assert (a["seeds_a"], b["seeds_a"]) == (1, 2)


def test_a_method_on_other_prompts_than_base_is_refused():
    recs = [_record("base", "base", 0, range(30)), _record("DPO b=0.1", "dpo", 0, range(50), {"p0": 0.2},
                                                             {"beta": 0.1})]
    del recs[1]["results"]["outcomes"]["greedy"]["correct"]["p99"]
    with pytest.raises(ValueError, match="different prompts"):
        pq.aggregate(recs)


def test_hypo_is_matched_with_dpo_only_at_the_same_beta():
    kl = {f"p{i}": 0.3 for i in range(10)}
    recs = [_record("base", "base", 0, range(30)),
            _record("DPO b=0.1", "dpo", 0, range(40), kl, {"beta": 0.1}),
            _record("DPO b=0.5", "dpo", 0, range(40), kl, {"beta": 0.5}),
            _record("HyPO l=0.5", "hypo", 0, range(40), kl, {"beta": 0.1, "lam": 0.5}),
            _record("HyPO l=2", "hypo", 0, range(40), kl, {"beta": 0.1, "lam": 2.0})]
    keys = {k for k in pq.aggregate(recs)["comparisons"] if not k.endswith(" - base")}
    assert keys == {"HyPO l=0.5 - DPO b=0.1", "HyPO l=2 - DPO b=0.1"}


def test_goals_say_so_when_a_goal_is_not_met():
    # DPO equals base on every prompt (no gain); HyPO's KL is lower on average (0.35 vs 0.40) but its per-prompt
    # differences are -0.4 on ten prompts and +0.3 on ten: the interval (se about 0.08) includes 0.
    kl_d = {f"p{i}": 0.4 for i in range(20)}
    kl_h = {f"p{i}": 0.0 if i < 10 else 0.7 for i in range(20)}
    recs = [_record("base", "base", 0, range(30)),
            _record("DPO b=0.1", "dpo", 0, range(30), kl_d, {"beta": 0.1}, transfer_correct=range(9)),
            _record("HyPO l=0.5", "hypo", 0, range(30), kl_h, {"beta": 0.1, "lam": 0.5})]
    agg = pq.aggregate(recs)
    assert agg["comparisons"]["HyPO l=0.5 - DPO b=0.1"]["kl"]["delta"] == pytest.approx(-0.05)
    lines = pq.goals(agg)
    dpo = next(x for x in lines if x.startswith("DPO b=0.1 vs base"))
    assert "+0.000" in dpo and "does NOT beat base" in dpo
    # transfer: 9/50 against 10/50, a loss of exactly 2 points, is within the budget ("more than 2 points" is not met)
    t = next(x for x in lines if x.startswith("DPO b=0.1 transfer"))
    assert "-0.020" in t and "within" in t
    hd = next(x for x in lines if x.startswith("HyPO l=0.5 - DPO b=0.1"))
    assert "equal within the CI" in hd and "not shown lower" in hd and "is NOT met" in hd


def test_an_exact_two_point_transfer_loss_with_three_seeds_is_within_the_budget():
    # Base solves t0-t9 on three seeds; DPO seeds 0 and 1 the same, seed 2 solves t4-t10. Pooled per prompt: t0-t3
    # lose 1/3 each, t10 gains 1/3, a net -1/50 = exactly -0.02 -- a 2-point loss, which the goal allows. In floating
    # point the thirds sum to -0.020000000000000004, so a `delta >= -0.02` test calls it "loses more than".
    recs = [_record("base", "base", s, range(30)) for s in (0, 1, 2)]
    recs += [_record("DPO b=0.1", "dpo", s, range(30), {"p0": 0.1}, {"beta": 0.1},
                     transfer_correct=range(10) if s < 2 else range(4, 11)) for s in (0, 1, 2)]
    agg = pq.aggregate(recs)
    assert agg["comparisons"]["DPO b=0.1 - base"]["transfer"]["delta"] == pytest.approx(-0.02)
    t = next(x for x in pq.goals(agg) if x.startswith("DPO b=0.1 transfer"))
    assert "within" in t, t


def test_the_error_bars_are_the_interval_lengths_by_hand(tmp_path, monkeypatch):
    # base solves 0-29 and DPO 0-59: the paired differences are 1 on 30 prompts, 0 elsewhere; the bars' error lengths
    # must be delta - ci_low and ci_high - delta (not the interval's ends). The KL point: two seeds, s.e. 0.01 each,
    # so the mean's s.e. is 0.01 / sqrt(2) and its half-width 1.96 * 0.01 / sqrt(2); its height 0.3 + 0.3 = 0.6.
    recs = [_record("base", "base", 0, range(30))]
    recs += [_record("DPO b=0.1", "dpo", s, range(60), {"p0": 0.2 + 0.2 * s}, {"beta": 0.1}) for s in (0, 1)]
    agg = pq.aggregate(recs)
    import matplotlib.axes

    bars, errorbars = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, *a, **k: bars.append((a, k)))
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, *a, **k: errorbars.append((a, k)))
    pq.plots(agg, tmp_path)
    c = agg["comparisons"]["DPO b=0.1 - base"]["greedy"]
    assert c["delta"] == pytest.approx(0.3) and 0.2 < c["ci_low"] < 0.3 < c["ci_high"] < 0.4
    (args, k) = bars[0]  # the greedy panel
    assert list(args[1]) == [pytest.approx(0.3)]
    (down,), (up,) = k["yerr"]
    assert down == pytest.approx(0.3 - c["ci_low"]) and up == pytest.approx(c["ci_high"] - 0.3)
    (args, k), = errorbars
    assert args[0] == [pytest.approx(0.3)] and args[1] == [pytest.approx(0.6)]  # KL mean of 0.2 and 0.4; accuracy
    (xd,), (xu,) = k["xerr"]
    assert xd == pytest.approx(1.96 * 0.01 / math.sqrt(2)) and xu == pytest.approx(xd)
    (yd,), (yu,) = k["yerr"]
    assert yd == pytest.approx(0.3 - c["ci_low"]) and yu == pytest.approx(c["ci_high"] - 0.3)


def test_a_phase_finished_by_an_earlier_attempt_keeps_that_attempts_time(tmp_path):
    clock = pq._Clock(tmp_path / "timings.json", {"eval_greedy": 90.0, "total": 90.0})
    calls = []
    clock.phase("eval_greedy", True, lambda: calls.append("greedy"))  # done before, time known: kept
    clock.phase("eval_sampled", True, lambda: calls.append("sampled"))  # done, but no time known: measured
    clock.phase("train", False, lambda: calls.append("train"))
    assert calls == ["greedy", "sampled", "train"]  # every phase still runs (a done job returns at once)
    t = clock.totals()
    assert t["eval_greedy"] == 90.0 and 0 <= t["eval_sampled"] < 5 and 0 <= t["train"] < 5
    assert t["total"] == pytest.approx(90.0 + t["eval_sampled"] + t["train"])
    # a new attempt reads the file, not the earlier record
    again = pq._Clock(tmp_path / "timings.json", {"eval_greedy": 1.0})
    assert again.t["eval_greedy"] == 90.0 and "total" not in again.t
