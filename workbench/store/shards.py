"""Sharded Parquet output with a manifest written last: the resume and scale-out mechanism of every long job.

Work is split into deterministic *units* (unit k = items [k*S, (k+1)*S) of the input, in input order). Unit k's rows
go to ``shard-{k:05d}.parquet``, written to a temp name and renamed when the unit is complete, so a shard file
exists only if it is whole. Hence:

* **Resume** after SIGKILL at any moment: rerun the same command; units whose shard exists are skipped, the unit that
  was in flight is redone from scratch. Every row appears exactly once.
* **Scale-out**: rank r of W takes the units with k % W == r (accelerate/torchrun ranks, SLURM array tasks, or the
  ``rank``/``world_size`` config). Shards never collide.
* **Merge**: :func:`finalize` checks that every unit's shard exists with the expected row count and writes
  ``manifest.json`` last. A folder with a manifest is complete; ``datasets.load_dataset("parquet",
  data_files=".../shard-*.parquet")`` reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from workbench.errors import WorkbenchError
from workbench.store.files import atomic_write

MANIFEST = "manifest.json"


@dataclass
class Partition:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, rank: int | None = None, world_size: int | None = None) -> "Partition":
        """Config values win; then accelerate/torchrun (RANK, WORLD_SIZE); then a SLURM array."""
        if world_size is not None and world_size > 1:
            return cls(rank or 0, world_size)
        env = os.environ
        if "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
            return cls(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]))
        if "SLURM_ARRAY_TASK_COUNT" in env and int(env["SLURM_ARRAY_TASK_COUNT"]) > 1:
            first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            return cls(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
        return cls(0, 1)

    @classmethod
    def merge_only(cls) -> "Partition":
        """Owns no unit: running a job with it only checks completeness and writes the manifest."""
        return cls(-1, 1)

    def owns(self, unit: int) -> bool:
        return unit % self.world_size == self.rank


def shard_path(folder: Path, unit: int) -> Path:
    return Path(folder) / f"shard-{unit:05d}.parquet"


def num_units(num_items: int, unit_size: int) -> int:
    return (num_items + unit_size - 1) // unit_size


def pending_units(folder: Path, num_items: int, unit_size: int, part: Partition) -> list[int]:
    return [k for k in range(num_units(num_items, unit_size)) if part.owns(k) and not shard_path(folder, k).exists()]


def write_shard(folder: Path, unit: int, rows: list[dict], schema=None) -> Path:
    """Write one unit's rows atomically (temp file + fsync + rename).

    ``schema`` (a ``pyarrow.Schema``) types the columns; it is required for zero rows, which are written as a file
    with the schema and no row group: every column is there, typed, for pyarrow and for the next stage. (``datasets``
    5.2 cannot load a zero-row split at all -- "Instruction 'train' corresponds to no data" -- so the stages check
    the manifest's ``num_rows`` first and say why there are no rows.)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = shard_path(folder, unit)
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    if rows:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    elif schema is None:
        raise ValueError("write_shard: zero rows need a schema")
    else:
        pq.ParquetWriter(tmp, schema).close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def read_rows(folder: Path, columns: list[str] | None = None) -> list[dict]:
    """All rows of a finished shard folder, in unit order."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in sorted(Path(folder).glob("shard-*.parquet")):
        rows.extend(pq.read_table(f, columns=columns).to_pylist())
    return rows


def clean_temp(folder: Path, units: Iterable[int] | None = None) -> None:
    """Remove temp shards a killed writer left: of ``units`` only (another rank may be writing its own), or all."""
    if units is None:
        files = Path(folder).glob(".shard-*.tmp-*")
    else:
        files = [f for k in units for f in Path(folder).glob(f".{shard_path(folder, k).name}.tmp-*")]
    for f in files:
        f.unlink(missing_ok=True)


def finalize(folder: Path, expected_rows: Iterable[int], info: dict) -> dict:
    """Check every unit's shard is present with its expected row count, then write the manifest (last)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    expected = list(expected_rows)
    shards, missing, wrong = [], [], []
    for k, n in enumerate(expected):
        p = shard_path(folder, k)
        if not p.exists():
            missing.append(k)
            continue
        got = pq.ParquetFile(p).metadata.num_rows
        if got != n:
            wrong.append(f"{p.name}: {got} rows, expected {n}")
        shards.append({"file": p.name, "rows": got})
    if missing or wrong:
        raise WorkbenchError(
            f"{folder}: cannot finalize: "
            + (f"missing shards for units {missing[:20]}{'...' if len(missing) > 20 else ''} "
               "(a rank has not finished; rerun it) " if missing else "")
            + (f"wrong row counts: {wrong[:5]}" if wrong else ""))
    manifest = {"complete": True, "num_rows": sum(s["rows"] for s in shards), "shards": shards, **info}
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=2, default=float))
    return manifest


def read_manifest(folder: Path) -> dict | None:
    p = Path(folder) / MANIFEST
    return json.loads(p.read_text()) if p.exists() else None


def stage_folder(path: str | Path, stage: str) -> Path:
    """The shard folder of a stage's output: ``<run>/<stage>`` when given the run folder, else the folder itself."""
    p = Path(path)
    return p / stage if (p / stage).is_dir() else p


def require_complete(folder: Path, what: str = "input") -> dict:
    """For a downstream stage: the folder must hold a finished job (manifest present)."""
    m = read_manifest(folder)
    if m is None:
        raise WorkbenchError(f"{folder}: no {MANIFEST}: the {what} job there has not finished. "
                             "Rerun it (it resumes), or run its merge step if it ran on several ranks.")
    return m


def run_units(items: list, unit_size: int, folder: Path, part: Partition, process, desc: str,
              samples_per_item: int = 1, schema=None) -> dict:
    """Process this rank's pending units in order, writing one shard each; show progress and throughput.

    ``process(unit_items, unit) -> (rows, num_tokens)``: ``unit`` is the unit's index, from which a job derives the
    unit's sampling seed, so a unit's rows do not depend on which units ran before it in this process (resume, ranks).
    Returns throughput stats for this invocation.
    """
    import time

    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    units = [k for k in range(num_units(len(items), unit_size)) if part.owns(k)]
    clean_temp(folder, units)
    todo = [k for k in units if not shard_path(folder, k).exists()]
    total = sum(len(items[k * unit_size:(k + 1) * unit_size]) for k in units) * samples_per_item
    done = total - sum(len(items[k * unit_size:(k + 1) * unit_size]) for k in todo) * samples_per_item
    stats = {"samples": 0, "tokens": 0, "seconds": 0.0, "units_done_before": len(units) - len(todo),
             "units_run": len(todo)}
    if not todo:
        return stats
    bar = tqdm(total=total, initial=done, desc=desc, unit="sample", dynamic_ncols=True)
    t0 = time.perf_counter()
    for k in todo:
        chunk = items[k * unit_size:(k + 1) * unit_size]
        rows, ntok = process(chunk, k)
        write_shard(folder, k, rows, schema)
        stats["samples"] += len(chunk) * samples_per_item
        stats["tokens"] += ntok
        elapsed = time.perf_counter() - t0
        bar.update(len(chunk) * samples_per_item)
        bar.set_postfix({"samples/s": f"{stats['samples'] / elapsed:.1f}", "tok/s": f"{stats['tokens'] / elapsed:.0f}"})
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    stats["samples_per_s"] = stats["samples"] / stats["seconds"]
    stats["tokens_per_s"] = stats["tokens"] / stats["seconds"]
    return stats


def all_units_present(folder: Path, num_items: int, unit_size: int) -> bool:
    return all(shard_path(folder, k).exists() for k in range(num_units(num_items, unit_size)))
