"""`workbench report`: a comparison table with provenance, and PNG plots, from run folders."""

import json

from conftest import run_cli


def _run(path, metrics=None, log=()):
    path.mkdir(parents=True)
    if metrics is not None:
        path.joinpath("results.json").write_text(json.dumps({
            "schema_version": 1, "task": "reasoning", "model": f"model-{path.name}", "dataset": "products",
            "split": "test", "git_commit": "abc123def456", "metrics": metrics, "per_query": {}, "counts": {}}))
    path.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return path


def test_report_compares_runs_with_plots(tmp_path):
    a = _run(tmp_path / "base", {"accuracy": 0.30, "kl_to_ref": 0.0})
    b = _run(tmp_path / "dpo", {"accuracy": 0.42, "kl_to_ref": 1.5},
             [{"step": 1, "loss": 0.69, "rewards/margins": 0.0}, {"step": 2, "loss": 0.61, "rewards/margins": 0.2}])
    c = _run(tmp_path / "loop", None, [{"iteration": 0, "accuracy": 0.3, "pairs": 10},
                                       {"iteration": 1, "accuracy": 0.4, "pairs": 7}])
    out = tmp_path / "cmp"
    run_cli("report", a, b, c, "--out", out)
    md = (out / "report.md").read_text()
    assert "| base | 0.3000 | 0.0000 |" in md and "| dpo | 0.4200 | 1.5000 |" in md
    assert "model-dpo | products | test | abc123def4" in md
    assert "Per-iteration summary: loop" in md and "| 1 | 0.4000 | 7 |" in md
    assert "| dpo | 2 | 0.6100 | 0.2000 |" in md
    for png in ("metric_bars.png", "training_curves.png", "iterations.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in md


def test_report_refuses_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    proc = run_cli("report", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "nothing to report" in proc.stderr
