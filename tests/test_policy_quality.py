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
    assert "HyPO's KL is lower" in lines


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
