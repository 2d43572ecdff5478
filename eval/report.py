"""An eval run's outputs: ``results.json`` (versioned schema) and ``report.md``, both written atomically.

Shared by every eval (retrieval now, others later): a payload is a plain dict built by :func:`results_payload`,
with the fixed keys below and any eval-specific extras. Bump :data:`SCHEMA_VERSION` when a fixed key changes meaning.

``results.json`` keys: ``schema_version, task, model, model_fingerprint, dataset, split, git_commit, created,
metrics, per_query, counts`` + extras (e.g. ``timings``, ``settings``, ``metrics_by_mode``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from workbench.store.files import atomic_write

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def _git_commit() -> str | None:
    from workbench.store.runs import env_info

    return env_info().get("git_commit")


def results_payload(*, task: str, model: str, model_fingerprint: str | None, dataset: str, split: str | None,
                    metrics: dict[str, float], per_query: dict[str, dict[str, float]], counts: dict,
                    **extra) -> dict:
    for name, v in metrics.items():
        if not isinstance(v, (int, float)) or math.isnan(v):
            raise ValueError(f"metric {name} is {v!r}; refusing to write a result without a number")
    return {"schema_version": SCHEMA_VERSION, "task": task, "model": model, "model_fingerprint": model_fingerprint,
            "dataset": dataset, "split": split, "git_commit": _git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metrics": metrics,
            "per_query": per_query, "counts": counts, **extra}


def write_results(run_dir: str | Path, payload: dict) -> Path:
    path = Path(run_dir) / RESULTS_FILE
    atomic_write(path, json.dumps(payload, indent=2, default=float) + "\n")
    return path


def read_results(run_dir: str | Path) -> dict:
    payload = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    if payload.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{run_dir}/{RESULTS_FILE}: schema_version {payload.get('schema_version')}, "
                         f"this code reads {SCHEMA_VERSION}")
    return payload


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_report(payload: dict, title: str | None = None, worst: int = 10) -> str:
    """Markdown: what was evaluated, the metrics, the counts, other metric sets, and the weakest queries."""
    metrics = payload["metrics"]
    out = [f"# {title or payload['task'].capitalize() + ' evaluation'}: {payload['model']} on {payload['dataset']}", ""]
    out.append(table([["model", payload["model"]], ["model fingerprint", payload.get("model_fingerprint") or "-"],
                      ["dataset", payload["dataset"]], ["split", payload.get("split") or "-"],
                      ["git commit", payload.get("git_commit") or "-"], ["created", payload.get("created", "-")]],
                     ["", ""]))
    out += ["", "## Metrics", "", table([[k, v] for k, v in metrics.items()], ["metric", "value"])]
    by_mode = payload.get("metrics_by_mode")
    if by_mode:
        names = list(metrics)
        out += ["", "## Metrics by representation", "",
                table([[mode] + [m.get(n, "-") for n in names] for mode, m in by_mode.items()], ["mode"] + names)]
    out += ["", "## Counts", "", table([[k, v] for k, v in payload["counts"].items()], ["count", "value"])]
    timings = payload.get("timings")
    if timings:
        out += ["", "## Timings", "", table([[k, v] for k, v in timings.items()], ["step", "value"])]
    per_query = payload.get("per_query") or {}
    if per_query and metrics:
        key = next((k for k in ("nDCG@10", "accuracy") if k in metrics), next(iter(metrics)))
        low = sorted(per_query.items(), key=lambda kv: (kv[1].get(key, 0.0), kv[0]))[:worst]
        out += ["", f"## Weakest {len(low)} queries by {key}", "",
                table([[q, r.get(key, 0.0)] for q, r in low], ["query", key])]
    return "\n".join(out) + "\n"


def write_report(run_dir: str | Path, payload: dict, title: str | None = None) -> Path:
    path = Path(run_dir) / REPORT_FILE
    atomic_write(path, render_report(payload, title))
    return path
