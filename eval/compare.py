"""`workbench report RUN_DIR [RUN_DIR ...]`: runs side by side, as a markdown table and PNG plots.

* every run with a ``results.json`` contributes a row of metrics (and says which model, data, split and commit made
  each number); ``metric_bars.png`` draws each metric across runs, with its 95% interval where the run has the
  per-query values (a bootstrap over queries) or a standard error;
* every run with training logs in ``metrics.jsonl`` contributes curves (``training_curves.png``: loss, rewards,
  margins, kl/online ... against the step);
* rows logged with an ``iteration`` key (the iterative loop) are plotted against the iteration
  (``iterations.png``) and tabulated.
"""

from __future__ import annotations

import json
from pathlib import Path

from workbench.errors import WorkbenchError

CURVE_KEYS = ["loss", "rewards/margins", "rewards/accuracies", "kl/online", "reward", "eval_loss",
              "eval_ndcg@10", "learning_rate"]


def _load(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise WorkbenchError(f"{run_dir}: not a folder; pass run folders (runs/<name>)")
    info = {"name": run_dir.name, "path": str(run_dir), "results": None, "log": [], "iterations": []}
    res = run_dir / "results.json"
    if res.exists():
        info["results"] = json.loads(res.read_text())
    log = run_dir / "metrics.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                (info["iterations"] if "iteration" in row else info["log"]).append(row)
    if info["results"] is None and not info["log"] and not info["iterations"]:
        raise WorkbenchError(f"{run_dir}: neither results.json nor metrics.jsonl: nothing to report")
    return info


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def render(runs: list[dict], plots: list[str]) -> str:
    out = ["# Run comparison", ""]
    evals = [r for r in runs if r["results"]]
    if evals:
        names = []
        for r in evals:
            names += [k for k in r["results"]["metrics"] if k not in names]
        out += ["## Evaluation metrics", "", "| run | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names)]
        for r in evals:
            m = r["results"]["metrics"]
            out.append(f"| {r['name']} | " + " | ".join(_fmt(m[n]) if n in m else "-" for n in names) + " |")
        out += ["", "Where each number comes from:", "", "| run | model | data | split | commit |", "|---|---|---|---|---|"]
        for r in evals:
            res = r["results"]
            out.append(f"| {r['name']} | {res.get('model')} | {res.get('dataset')} | {res.get('split') or '-'} | "
                       f"{(res.get('git_commit') or '-')[:10]} |")
    iters = [r for r in runs if r["iterations"]]
    for r in iters:
        keys = [k for k in r["iterations"][-1] if k not in ("time", "iteration")]
        out += ["", f"## Per-iteration summary: {r['name']}", "", "| iteration | " + " | ".join(keys) + " |",
                "|---|" + "---|" * len(keys)]
        for row in r["iterations"]:
            out.append(f"| {row['iteration']} | " + " | ".join(_fmt(row.get(k, '-')) for k in keys) + " |")
    trained = [r for r in runs if any("loss" in row for row in r["log"])]
    if trained:
        out += ["", "## Training (last logged values)", "", "| run | steps | " + " | ".join(CURVE_KEYS[:5]) + " |",
                "|---|---|" + "---|" * 5]
        for r in trained:
            last = {}
            for row in r["log"]:
                last.update({k: v for k, v in row.items() if k in CURVE_KEYS or k == "step"})
            out.append(f"| {r['name']} | {last.get('step', '-')} | "
                       + " | ".join(_fmt(last[k]) if k in last else "-" for k in CURVE_KEYS[:5]) + " |")
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def _error_bar(results: dict, metric: str) -> tuple[float, float]:
    """A bar's 95% interval as (down, up) lengths: the bootstrap over the run's queries (prompts) when every one of
    them has the metric, 1.96 s.e. for a metric reported with its s.e. (the KL), else none (0, 0)."""
    per = results.get("per_query") or {}
    if per and all(metric in v for v in per.values()):
        from workbench_eval.stats import error_bar

        return error_bar({q: float(v[metric]) for q, v in per.items()})
    se = results.get("metrics", {}).get(f"{metric}_se")
    return (1.96 * se, 1.96 * se) if isinstance(se, (int, float)) else (0.0, 0.0)


def plot(runs: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    evals = [r for r in runs if r["results"]]
    if evals:
        names = []
        for r in evals:
            names += [k for k in r["results"]["metrics"] if k not in names]
        names = names[:8]
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
        for ax, n in zip(axes[0], names):
            vals = [r["results"]["metrics"].get(n, 0.0) for r in evals]
            errs = [_error_bar(r["results"], n) for r in evals]
            yerr = [[e[0] for e in errs], [e[1] for e in errs]] if any(e != (0.0, 0.0) for e in errs) else None
            ax.bar(range(len(evals)), vals, yerr=yerr, capsize=3, color=[f"C{i}" for i in range(len(evals))])
            ax.set_xticks(range(len(evals)), [r["name"] for r in evals], rotation=30, ha="right", fontsize=7)
            ax.set_title(n, fontsize=9)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "metric_bars.png", dpi=110)
        plt.close(fig)
        made.append("metric_bars.png")
    keys = [k for k in CURVE_KEYS if any(k in row for r in runs for row in r["log"])]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.2), squeeze=False)
        for ax, k in zip(axes[0], keys):
            for i, r in enumerate(runs):
                pts = [(row.get("step", j), row[k]) for j, row in enumerate(r["log"]) if k in row]
                if pts:
                    ax.plot(*zip(*pts), label=r["name"], color=f"C{i}", marker=".")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        made.append("training_curves.png")
    iters = [r for r in runs if r["iterations"]]
    if iters:
        keys = [k for k in iters[0]["iterations"][-1] if k not in ("time", "iteration")
                and isinstance(iters[0]["iterations"][-1][k], (int, float))][:8]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
        for ax, k in zip(axes[0], keys):
            for i, r in enumerate(iters):
                pts = [(row["iteration"], row[k]) for row in r["iterations"] if isinstance(row.get(k), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=r["name"], color=f"C{i}")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "iterations.png", dpi=110)
        plt.close(fig)
        made.append("iterations.png")
    return made


def report(run_dirs: list[str], out_dir: str) -> Path:
    from workbench.store.files import atomic_write

    runs = [_load(Path(d)) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(runs, out)
    path = out / "report.md"
    atomic_write(path, render(runs, plots))
    return path
