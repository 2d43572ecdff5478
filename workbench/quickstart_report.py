"""The quickstart's final report: both halves' tables, plots, and a plain statement of what helped and what did not.

A difference is called an improvement only when its 95% interval excludes 0: a paired bootstrap over the held-out
prompts (queries), each prompt's outcome compared between the two systems (``workbench_eval.stats``). Otherwise the
report says the methods are indistinguishable at this size. Every bar in the plots carries its 95% interval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The benchmark-size evidence the quickstart points to (it runs from a checkout; absent elsewhere).
POLICY_RECORD = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "policy_quality.json"
POLICY = [("base", "policy_eval_base"), ("DPO", "policy_eval_dpo"), ("HyPO", "policy_eval_hypo")]
RETRIEVAL = [("MiniLM (base)", "retrieval_eval_minilm"), ("BM25", "retrieval_eval_bm25"),
             ("MiniLM + ws2", "retrieval_eval_ws2"), ("MiniLM + infonce", "retrieval_eval_infonce")]


def _results(out: Path, name: str) -> dict | None:
    p = out / name / "results.json"
    return json.loads(p.read_text()) if p.exists() else None


def _verdict(a: float, b: float, ci: dict | None, what: str, better: str, base: str) -> str:
    if ci is None:
        return (f"{better} vs {base}: {what} {b:.3f} vs {a:.3f}: not compared, the two evaluations cover different "
                "prompts (rerun both on the same held-out set).")
    diff, lo, hi = ci["delta"], ci["ci_low"], ci["ci_high"]
    span = f"{b:.3f} vs {a:.3f} ({diff:+.3f}, paired 95% CI [{lo:+.3f}, {hi:+.3f}] over {ci['prompts']} prompts)"
    if not ci["excludes_zero"]:
        return f"{better} vs {base}: {what} {span}: no difference we can distinguish at this size."
    word = "improved" if diff > 0 else "hurt"
    return f"{better} vs {base}: {what} {span}: {better} {word} it."


def _paired(a: dict[str, float], b: dict[str, float]) -> dict | None:
    """b minus a, paired over the held-out prompts; None when the two evaluations cover different prompts (a
    comparison on the common part would sit next to accuracies over all of them, so it is not made)."""
    from workbench_eval.stats import paired_bootstrap

    if not a or set(a) != set(b):
        return None
    return paired_bootstrap({p: [b[p]] for p in b}, {p: [a[p]] for p in a})


def _interval(values: dict[str, float]) -> tuple[float, float]:
    """(down, up) error-bar lengths: the 95% bootstrap interval of the mean over prompts."""
    from workbench_eval.stats import error_bar

    return error_bar(values)


def _bars(path: Path, labels: list[str], series: dict[str, list[float]], title: str,
          errors: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """One panel per metric; ``errors[metric]`` gives each bar's (down, up) 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = errors or {}
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.4), squeeze=False)
    for ax, (metric, vals) in zip(axes[0], series.items()):
        err = errors.get(metric)
        yerr = [[e[0] for e in err], [e[1] for e in err]] if err else None
        ax.bar(range(len(labels)), vals, yerr=yerr, capsize=4, color=[f"C{i}" for i in range(len(labels))])
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(metric + (" (95% CI)" if err else ""), fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="left", va="bottom", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # Through a temp file and a rename, like every other output: a kill mid-save leaves no half PNG.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _per_prompt_lengths(run_dir: Path) -> dict[str, float]:
    p = run_dir / "samples.parquet"
    if not p.exists():
        return {}
    import pyarrow.parquet as pq

    by: dict[str, list[int]] = {}
    for r in pq.read_table(p, columns=["prompt_id", "num_tokens"]).to_pylist():
        by.setdefault(str(r["prompt_id"]), []).append(r["num_tokens"])
    return {k: sum(v) / len(v) for k, v in by.items()}


def _benchmark_evidence(prompts: int) -> list[str]:
    """The quickstart is demo-sized: say so, and quote what the benchmark-size record says (its own verdict lines)."""
    lines = [f"- This run is demo-sized ({prompts} held-out prompts, one seed): an interval this wide rarely excludes 0, "
             "so it shows that the stages run, not which method is better."]
    if not POLICY_RECORD.exists():
        return lines
    rec = json.loads(POLICY_RECORD.read_text())
    quoted = [n for n in rec.get("notes", []) if "greedy held-out accuracy" in n]
    when = f"{rec.get('started', '?')[:10]}, commit {(rec.get('git', {}).get('commit') or '?')[:10]}"
    lines.append(f"- At benchmark size, `benchmarks/results/policy_quality.json` ({when}) records:")
    return lines + [f"  - {n}" for n in quoted]


def _policy_section(out: Path) -> tuple[list[str], list[str]]:
    rows = [(label, _results(out, name)) for label, name in POLICY]
    rows = [(label, r) for label, r in rows if r]
    if not rows:
        return [], []
    lines = ["## Policy half: SmolLM2-135M-Instruct on reasoning-gym `products` (1-digit)", ""]
    verify = out / "policy_verify" / "verdicts" / "manifest.json"
    pairs = out / "policy_pairs" / "pairs" / "counts.json"
    if verify.exists():
        st = json.loads(verify.read_text())["stats"]
        lines.append(f"Base policy on the training prompts: {st['passed']}/{st['rows']} samples correct "
                     f"({st['passed'] / st['rows']:.1%}) by the math verifier.")
    if pairs.exists():
        c = json.loads(pairs.read_text())
        lines.append(f"Pairs: {c['pairs']} from {c['kept']} of {c['prompts']} prompts (pruned {c['pruned_all_passed']} "
                     f"where every sample passed, {c['pruned_none_passed']} where none did).")
    lines += ["", "| policy | accuracy | pass@2 | maj@2 | KL to base | mean length (tokens) | samples |",
              "|---|---|---|---|---|---|---|"]
    for label, r in rows:
        m = r["metrics"]
        lines.append(f"| {label} | {m['accuracy']:.3f} | {m.get('pass@2', float('nan')):.3f} | "
                     f"{m.get('maj@2', float('nan')):.3f} | {m.get('kl_to_ref', float('nan')):.3f} | "
                     f"{m['mean_length']:.1f} | {r['counts']['samples']} |")
    base = dict(rows).get("base")
    verdicts = []
    acc = {label: {p: q["accuracy"] for p, q in (r.get("per_query") or {}).items()} for label, r in rows}
    if base:
        a = base["metrics"]["accuracy"]
        for label, r in rows[1:]:
            verdicts.append("- " + _verdict(a, r["metrics"]["accuracy"], _paired(acc["base"], acc[label]),
                                            "held-out accuracy", label, "base"))
            verdicts.append(f"- {label}'s KL to the base model: {r['metrics'].get('kl_to_ref', float('nan')):.3f} "
                            f"(s.e. {r['metrics'].get('kl_to_ref_se', float('nan')):.3f}) nats per completion; mean "
                            f"length {r['metrics']['mean_length']:.1f} vs {base['metrics']['mean_length']:.1f} tokens.")
    verdicts += _benchmark_evidence(len(acc[rows[0][0]]))
    lengths = {label: _per_prompt_lengths(out / name) for label, name in POLICY}
    kl_err = [(1.96 * r["metrics"].get("kl_to_ref_se", 0.0),) * 2 for _, r in rows]
    _bars(out / "policy.png", [label for label, _ in rows],
          {"accuracy": [r["metrics"]["accuracy"] for _, r in rows],
           "KL to base": [r["metrics"].get("kl_to_ref", 0.0) for _, r in rows],
           "mean length": [r["metrics"]["mean_length"] for _, r in rows]}, "Policy half (held-out prompts)",
          errors={"accuracy": [_interval(acc[label]) for label, _ in rows], "KL to base": kl_err,
                  "mean length": [_interval(lengths.get(label, {})) for label, _ in rows]})
    return lines + [""] + verdicts + ["", "![policy](policy.png)", ""], ["policy.png"]


def _retrieval_section(out: Path) -> list[str]:
    rows = [(label, _results(out, name)) for label, name in RETRIEVAL]
    rows = [(label, r) for label, r in rows if r]
    if not rows:
        return []
    lines = ["## Retrieval half: SciFact-nano held-out claims", "",
             "| retriever | nDCG@10 | Recall@100 | queries |", "|---|---|---|---|"]
    for label, r in rows:
        m = r["metrics"]
        lines.append(f"| {label} | {m['nDCG@10']:.3f} | {m['Recall@100']:.3f} | {len(r.get('per_query') or {})} |")
    by = dict(rows)
    verdicts = []
    base = by.get("MiniLM (base)")
    if base:
        for label in ("MiniLM + ws2", "MiniLM + infonce"):
            r = by.get(label)
            if not r:
                continue
            ci = _paired({q: v["nDCG@10"] for q, v in base["per_query"].items()},
                         {q: v["nDCG@10"] for q, v in r["per_query"].items()})
            verdicts.append("- " + _verdict(base["metrics"]["nDCG@10"], r["metrics"]["nDCG@10"], ci, "nDCG@10",
                                            label, "MiniLM (base)"))
    cal = out / "retrieval_lists" / "calibration.json"
    if cal.exists():
        c = json.loads(cal.read_text())
        kappa, rho = c.get("kappa_quadratic"), c.get("spearman")
        if isinstance(rho, dict):
            rho = rho.get("rho")
        fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
        lines += ["", f"Label calibration (the judge re-grades each synthetic document against its claim; intended vs "
                      f"judged grade): quadratic-weighted kappa {fmt(kappa)}, Spearman {fmt(rho)}; "
                      f"{c.get('n_unparseable', '?')} of {c.get('n', '?')} judge answers were "
                      "unparseable and are left out of those statistics. See `retrieval_lists/calibration.md`."]
        if (out / "retrieval_lists" / "calibration.png").exists():
            lines += ["", "![calibration](retrieval_lists/calibration.png)"]
    _bars(out / "retrieval.png", [label for label, _ in rows],
          {"nDCG@10": [r["metrics"]["nDCG@10"] for _, r in rows],
           "Recall@100": [r["metrics"]["Recall@100"] for _, r in rows]}, "Retrieval half (held-out claims)",
          errors={m: [_interval({q: v[m] for q, v in (r.get("per_query") or {}).items() if m in v}) for _, r in rows]
                  for m in ("nDCG@10", "Recall@100")})
    return lines + [""] + verdicts + ["", "![retrieval](retrieval.png)", ""]


def write_report(out: Path, stage_names: list[str], timings: dict) -> Path:
    from workbench.store.files import atomic_write
    from workbench.store.runs import env_info

    env = env_info()
    lines = ["# contrast-workbench quickstart", "",
             f"Machine: {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, GPUs: {env['gpus'] or 'none'}; "
             f"commit {(env['git_commit'] or '-')[:10]}; {env['time']}.", ""]
    policy_lines, _ = _policy_section(out)
    lines += policy_lines
    lines += _retrieval_section(out)
    lines += ["## Stage timings (this machine)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {timings.get(s, '-')} |" for s in stage_names]
    lines += ["", f"Total measured: {sum(v for v in timings.values()):.0f} s (a stage resumed after a kill counts the "
              "attempt that finished it; '-': killed between its end and the saving of its time). Every stage's own "
              "run folder holds its "
              "config, environment, metrics and outputs; rerun any of them with `workbench <stage> --config "
              "recipes/quickstart/<stage>.yaml`."]
    path = out / "report.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path
