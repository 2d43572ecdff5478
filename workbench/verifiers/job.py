"""`workbench verify`: add verdict columns to rollout shards, resumably.

Each input shard ``shard-k`` of a finished rollouts job becomes output ``shard-k`` with the rollout columns plus
``score, passed, verifier, details`` (``details`` is a JSON string: extracted answer, reason, and the verifier's own
fields). One verifier object scores every row; the same objects serve as GRPO rewards and in the reasoning eval.

Rows whose reference the verifier cannot read (a non-numeric reference for ``math``) are kept, marked
``passed=False`` with ``details.skipped`` giving the reason, and counted in the manifest; the pairs stage ignores them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import register_job
from workbench.errors import DataError, WorkbenchError
from workbench.store import shards
from workbench.generation.rollouts import ROLLOUT_COLUMNS
from workbench.store.runs import RunConfig
from workbench.verifiers.verdict import TIME_LIMIT_REASON

VERDICT_COLUMNS = ["score", "passed", "verifier", "details"]


@dataclass
class VerifierConfig:
    name: str = "math"  # math | reasoning_gym | judge | rollout_aware | any registered verifier
    options: dict[str, Any] = field(default_factory=dict)  # passed to the verifier's constructor

    def validate(self):
        """Check the name and, through the verifier's own options class, its options (`workbench check`)."""
        from workbench.verifiers import VERIFIERS

        if self.name not in VERIFIERS:
            import difflib

            close = difflib.get_close_matches(self.name, list(VERIFIERS), n=1)
            raise ValueError(f"unknown verifier {self.name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" Known: {', '.join(sorted(VERIFIERS))}")
        VERIFIERS[self.name].check_options(self.options, source="options")

    def build(self):
        from workbench.verifiers import get_verifier

        return get_verifier(self.name, **self.options)


@register_job("verify")
@dataclass
class VerifyConfig(RunConfig):
    input_dir: str = ""  # a rollouts run folder (or its rollouts/ subfolder)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)

    def validate(self):
        if not self.input_dir:
            raise ValueError("input_dir is required: the rollouts run folder to verify")


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in ROLLOUT_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{path}: rollout shard lacks column(s) {missing}; it has {columns}. "
                        "verify reads the output of `workbench generate rollouts` (schema: "
                        f"{', '.join(ROLLOUT_COLUMNS)}).")


def score_rows(verifier, rows: list[dict]) -> tuple[list[dict], dict]:
    """Verdict columns for rows (in one batch, so judge-based verifiers make one backend call)."""
    counts = {"skipped": {}, "empty_completion": sum(1 for r in rows if not (r["completion"] or "").strip())}
    todo, out = list(range(len(rows))), [None] * len(rows)
    try:
        verdicts = verifier.verify_batch([rows[i]["prompt"] for i in todo], [rows[i]["completion"] for i in todo],
                                         [rows[i]["reference"] for i in todo])
    except DataError:
        verdicts = None  # some reference is bad: score row by row to find and count exactly which
    for k, i in enumerate(todo):
        r = rows[i]
        if verdicts is not None:
            v = verdicts[k]
            details = dict(v.details)
            score, passed = v.score, v.passed
        else:
            try:
                v = verifier.verify(r["prompt"], r["completion"], r["reference"])
                details, score, passed = dict(v.details), v.score, v.passed
            except DataError as e:
                counts["skipped"]["invalid reference"] = counts["skipped"].get("invalid reference", 0) + 1
                details, score, passed = {"extracted": None, "reason": f"skipped: {e}", "skipped": str(e)}, 0.0, False
        out[i] = {**r, "score": float(score), "passed": bool(passed), "verifier": verifier.name,
                  "details": json.dumps(details, default=str)}
    return out, counts


def run(cfg: VerifyConfig, overwrite: bool = False) -> dict:
    import pyarrow.parquet as pq

    from workbench.store.files import atomic_write
    from workbench.store.stage import start_stage

    src = shards.stage_folder(cfg.input_dir, "rollouts")
    src_manifest = shards.require_complete(src, "rollouts")
    inputs = [src / s["file"] for s in src_manifest["shards"]]
    for p in inputs:  # the input is checked before the run folder exists (see rollouts.run)
        _check_columns(p, pq.ParquetFile(p).schema_arrow.names)
    stage = start_stage(cfg, "verdicts", overwrite=overwrite)
    if stage.finished:
        return stage.manifest
    run_, out = stage.run, stage.out
    verifier = cfg.verifier.build()
    unit_stats = run_.path / "verifier_stats"

    def process(chunk: list[Path], unit: int):
        # A verifier's counters (the judge's malformed answers ...) live in the object and count only this process's
        # units. Each unit's share is saved before its shard is committed, so after a kill and rerun the manifest
        # sums every unit once: a unit redone after a kill overwrites its share.
        before = _verifier_stats(verifier)
        scored, _ = score_rows(verifier, pq.read_table(chunk[0]).to_pylist())
        share = {k: v - before.get(k, 0) for k, v in _verifier_stats(verifier).items()}
        atomic_write(unit_stats / f"unit-{unit:05d}.json", json.dumps(share))
        return scored, 0

    shards.run_units(inputs, 1, out, shards.Partition(), process, desc="verify",
                     samples_per_item=max(1, src_manifest["num_rows"] // max(1, len(inputs))))
    # Counted from the output rows (not this invocation's counters), so a resumed job reports every shard.
    rows = shards.read_rows(out, columns=["passed", "score", "details", "completion"])
    details = [json.loads(r["details"]) for r in rows]
    n_skipped = sum(1 for d in details if "skipped" in d)
    # Samples failed by the hard per-call limit (TimeLimitedVerifier): counted, so a run that lost many says so.
    n_limited = sum(1 for d in details if d.get("reason") in (TIME_LIMIT_REASON, "verifier process died"))
    stats = {"rows": len(rows), "passed": sum(r["passed"] for r in rows), "time_limited_rows": n_limited,
             "empty_completions": sum(1 for r in rows if not (r["completion"] or "").strip()),
             "mean_score": sum(r["score"] for r in rows) / max(1, len(rows)), "skipped_rows": n_skipped,
             **_summed_unit_stats(unit_stats, len(inputs))}
    manifest = shards.finalize(out, [s["rows"] for s in src_manifest["shards"]], {
        "job": "verify", "verifier": cfg.verifier.name, "verifier_options": cfg.verifier.options,
        "input": str(src), "columns": ROLLOUT_COLUMNS + VERDICT_COLUMNS, "chat": src_manifest.get("chat", True),
        "system_prompt": src_manifest.get("system_prompt"), "stats": stats})
    run_.log_metrics({f"verify/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
    run_.mark_done(stats)
    print(f"[verify] {stats['passed']}/{stats['rows']} passed (mean score {stats['mean_score']:.3f}); "
          f"{n_skipped} row(s) skipped with a reason"
          + (f", {n_limited} failed by the verifier's time limit" if n_limited else "") + f" -> {out}", file=sys.stderr)
    return manifest


def _summed_unit_stats(folder: Path, units: int) -> dict:
    """The verifier's counters over every unit, from the per-unit shares (see ``process`` in :func:`run`)."""
    total: dict = {}
    for k in range(units):
        share = folder / f"unit-{k:05d}.json"
        if not share.exists():  # a shard verified by a version before the per-unit shares
            raise WorkbenchError(f"{share}: missing, so the verifier's counters cannot be summed over every unit. "
                                 "Rerun with --overwrite.")
        for key, v in json.loads(share.read_text()).items():
            total[key] = total.get(key, 0) + v
    return total


def _verifier_stats(verifier) -> dict:
    """Counters a verifier keeps (e.g. the judge's malformed outputs), so they reach the manifest and report."""
    stats = getattr(verifier, "stats", None)
    return {f"verifier_{k}": v for k, v in stats.items()} if isinstance(stats, dict) else {}
