"""The quickstart report's verdicts and plots: paired 95% intervals, error bars on every compared bar.

Built on hand-made result folders, so the expected verdicts are known: a method that fixes 60 of 100 prompts the base
failed is an improvement, one that flips as many prompts each way is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench import quickstart_report


def _write(folder: Path, metrics: dict, per_query: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"metrics": metrics, "per_query": per_query,
                                                     "counts": {"samples": 2 * len(per_query)}}))


@pytest.fixture
def out(tmp_path):
    base = {f"q{i}": {"accuracy": 1.0 if i < 30 else 0.0} for i in range(100)}
    better = {f"q{i}": {"accuracy": 1.0 if i < 90 else 0.0} for i in range(100)}  # 60 more solved, none lost
    swapped = {f"q{i}": {"accuracy": 1.0 if 30 <= i < 60 else 0.0} for i in range(100)}  # 30 gained, 30 lost
    mean = lambda pq: sum(v["accuracy"] for v in pq.values()) / len(pq)  # noqa: E731
    for name, pq, kl in (("policy_eval_base", base, 0.0), ("policy_eval_dpo", better, 0.4),
                         ("policy_eval_hypo", swapped, 0.2)):
        _write(tmp_path / name, {"accuracy": mean(pq), "mean_length": 20.0, "kl_to_ref": kl, "kl_to_ref_se": 0.05},
               pq)
    ndcg = {f"c{i}": {"nDCG@10": 0.5, "Recall@100": 0.8} for i in range(40)}
    _write(tmp_path / "retrieval_eval_minilm", {"nDCG@10": 0.5, "Recall@100": 0.8}, ndcg)
    _write(tmp_path / "retrieval_eval_ws2", {"nDCG@10": 0.5, "Recall@100": 0.8}, ndcg)
    return tmp_path


def test_verdicts_use_the_paired_interval(out, monkeypatch):
    calls = []
    monkeypatch.setattr(quickstart_report, "_bars", lambda *a, **k: calls.append((a, k)))
    text = quickstart_report.write_report(out, [], {}).read_text()
    dpo = next(line for line in text.splitlines() if line.startswith("- DPO vs base"))
    hypo = next(line for line in text.splitlines() if line.startswith("- HyPO vs base"))
    ws2 = next(line for line in text.splitlines() if line.startswith("- MiniLM + ws2 vs"))
    # DPO: +0.60 on every changed prompt, all in one direction: the interval is far from 0.
    assert "+0.600" in dpo and "DPO improved it" in dpo and "paired 95% CI" in dpo
    # HyPO: the same accuracy as base (30 gained, 30 lost): indistinguishable.
    assert "+0.000" in hypo and "no difference we can distinguish" in hypo
    assert "no difference we can distinguish" in ws2  # identical per-query values
    # Every compared bar has an error bar: accuracy and length from the prompts, KL from its s.e.
    (args, kwargs), = [c for c in calls if c[0][0].name == "policy.png"]
    errors = kwargs["errors"]
    assert set(errors) == {"accuracy", "KL to base", "mean length"}
    down, up = errors["accuracy"][0]  # base: 30 of 100, a 95% interval of about +-0.09
    assert 0.06 < down < 0.12 and 0.06 < up < 0.12
    assert errors["KL to base"][1] == (pytest.approx(1.96 * 0.05),) * 2
    (args, kwargs), = [c for c in calls if c[0][0].name == "retrieval.png"]
    assert set(kwargs["errors"]) == {"nDCG@10", "Recall@100"}


def test_the_plots_are_written(out):
    quickstart_report.write_report(out, [], {})
    assert (out / "policy.png").stat().st_size > 0 and (out / "retrieval.png").stat().st_size > 0


def test_a_method_that_loses_prompts_is_called_hurt(out, monkeypatch):
    # DPO solves only q0-q9 of base's q0-q29: -0.200 on every changed prompt, all one way.
    worse = {f"q{i}": {"accuracy": 1.0 if i < 10 else 0.0} for i in range(100)}
    r = json.loads((out / "policy_eval_dpo" / "results.json").read_text())
    r["per_query"], r["metrics"]["accuracy"] = worse, 0.1
    (out / "policy_eval_dpo" / "results.json").write_text(json.dumps(r))
    monkeypatch.setattr(quickstart_report, "_bars", lambda *a, **k: None)
    text = quickstart_report.write_report(out, [], {}).read_text()
    dpo = next(line for line in text.splitlines() if line.startswith("- DPO vs base"))
    assert "-0.200" in dpo and "DPO hurt it" in dpo and "improved" not in dpo


def test_each_bar_gets_its_own_interval(out, monkeypatch):
    # By hand (normal approximation of the bootstrap): base 30/100 -> 1.96 * sqrt(0.21 / 100) = 0.090; DPO 90/100 ->
    # 1.96 * sqrt(0.09 / 100) = 0.059. Error bars computed from the wrong system's prompts would not tell them apart.
    calls = []
    monkeypatch.setattr(quickstart_report, "_bars", lambda *a, **k: calls.append((a, k)))
    quickstart_report.write_report(out, [], {})
    (args, kwargs), = [c for c in calls if c[0][0].name == "policy.png"]
    assert args[1] == ["base", "DPO", "HyPO"]
    acc = kwargs["errors"]["accuracy"]
    assert sum(acc[0]) / 2 == pytest.approx(0.090, abs=0.01) and sum(acc[1]) / 2 == pytest.approx(0.059, abs=0.01)


def test_length_error_bars_pool_each_prompts_samples(out, monkeypatch):
    # Every prompt has two samples of 10 and 30 tokens: each prompt's mean is 20, so the mean over prompts has no
    # spread at all and the interval is (0, 0). Resampling samples instead of prompts would give a nonzero bar.
    import pyarrow as pa
    import pyarrow.parquet as papq

    rows = [{"prompt_id": f"q{i}", "num_tokens": n} for i in range(100) for n in (10, 30)]
    papq.write_table(pa.Table.from_pylist(rows), out / "policy_eval_base" / "samples.parquet")
    # DPO: half the prompts at 10 tokens, half at 30 (one sample each): half-width about 1.96 * 10 / 10 = 1.96.
    rows = [{"prompt_id": f"q{i}", "num_tokens": 10 if i % 2 else 30} for i in range(100)]
    papq.write_table(pa.Table.from_pylist(rows), out / "policy_eval_dpo" / "samples.parquet")
    calls = []
    monkeypatch.setattr(quickstart_report, "_bars", lambda *a, **k: calls.append((a, k)))
    quickstart_report.write_report(out, [], {})
    (args, kwargs), = [c for c in calls if c[0][0].name == "policy.png"]
    length = kwargs["errors"]["mean length"]
    assert length[0] == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))
    assert sum(length[1]) / 2 == pytest.approx(1.96, rel=0.15)
    assert length[2] == (0.0, 0.0)  # HyPO has no samples file: no bar to draw an interval for


def test_a_comparison_on_different_prompts_is_not_silently_intersected(out, monkeypatch):
    # DPO's results cover only q0-q49 (say a truncated run): comparing it with base on the 50 common prompts and
    # printing it next to accuracies over 100 prompts is the silent intersection workbench_eval.stats refuses.
    r = json.loads((out / "policy_eval_dpo" / "results.json").read_text())
    r["per_query"] = {q: v for q, v in r["per_query"].items() if int(q[1:]) < 50}
    (out / "policy_eval_dpo" / "results.json").write_text(json.dumps(r))
    monkeypatch.setattr(quickstart_report, "_bars", lambda *a, **k: None)
    try:
        text = quickstart_report.write_report(out, [], {}).read_text()
    except ValueError as e:  # refusing is one acceptable answer
        assert "different prompts" in str(e)
        return
    dpo = next(line for line in text.splitlines() if line.startswith("- DPO vs base"))
    assert "different prompts" in dpo and "improved" not in dpo, dpo  # saying so, and no verdict, is the other


def test_the_report_says_it_is_demo_sized_and_quotes_the_benchmark_record(out, monkeypatch, tmp_path_factory):
    monkeypatch.setattr(quickstart_report, "_bars", lambda *a, **k: None)
    record = tmp_path_factory.mktemp("rec") / "policy_quality.json"
    monkeypatch.setattr(quickstart_report, "POLICY_RECORD", record)
    text = quickstart_report.write_report(out, [], {}).read_text()
    assert "demo-sized (100 held-out prompts, one seed)" in text and "At benchmark size" not in text
    record.write_text(json.dumps({"started": "2026-12-08T05:09:15", "git": {"commit": "857ce27abc"}, "notes": [
        "DPO b=0.1 vs base, greedy held-out accuracy: +0.284 [+0.222, +0.344] over 320 prompts: beats base.",
        "Plots: a.png"]}))
    text = quickstart_report.write_report(out, [], {}).read_text()
    assert "(2026-12-08, commit 857ce27abc) records:" in text
    assert "  - DPO b=0.1 vs base, greedy held-out accuracy: +0.284 [+0.222, +0.344]" in text
    assert "Plots: a.png" not in text
