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
* **Integrity**: the manifest records each shard's ``size`` and ``sha256``. They are computed when the shard is
  written, from the bytes just written (the temp file, still in the page cache), and saved beside it as
  ``.shard-{k:05d}.parquet.digest.json`` *before* the rename that commits the shard: a shard that exists always has
  its digest, whenever the writer is killed, and :func:`finalize` copies the digests into the manifest without
  re-reading a shard. :func:`check_shards` compares a folder with its manifest (every listed shard there, with its
  size and sha256; no shard the manifest does not list); a stage reading a folder runs it through
  :func:`require_complete` before it creates anything, and ``workbench check RUN_DIR`` runs it on a whole run.
  A manifest written before digests existed (shard entries with ``file`` and ``rows`` only) stays readable: its
  shards are checked for existence and for the row count in their Parquet footer, which catches a truncated or
  missing shard but not bytes changed in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
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


def _why(e: Exception) -> str:
    """A library's error on one line (pyarrow's span several)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def digest_path(shard: Path) -> Path:
    """Where a shard's size and sha256 are kept until :func:`finalize` copies them into the manifest (hidden: the
    ``shard-*.parquet`` globs, ``datasets`` and the row readers never see it)."""
    shard = Path(shard)
    return shard.with_name(f".{shard.name}.digest.json")


def file_digest(path: Path) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def write_shard(folder: Path, unit: int, rows: list[dict], schema=None) -> Path:
    """Write one unit's rows atomically (temp file + fsync + rename), its digest saved just before the rename.

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
    # The digest of the bytes just written, made durable before the rename that commits the shard: the rename commits
    # both. A kill before it leaves no shard (the unit is redone and the digest rewritten), so the digest file needs
    # no rename of its own and a half-written one is never read (finalize runs only once every shard exists).
    with open(digest_path(final), "w") as fh:
        fh.write(json.dumps(file_digest(tmp)))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


def read_rows(folder: Path, columns: list[str] | None = None) -> list[dict]:
    """All rows of a finished shard folder, in unit order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in sorted(Path(folder).glob("shard-*.parquet")):
        try:
            rows.extend(pq.read_table(f, columns=columns).to_pylist())
        except (pa.ArrowException, OSError) as e:  # damage no digest caught (a manifest from before digests)
            raise WorkbenchError(f"{f}: damaged: not a readable Parquet file ({_why(e)}); "
                                 f"{recovery(Path(folder), delete=f)}") from None
    return rows


def clean_temp(folder: Path, units: Iterable[int] | None = None) -> None:
    """Remove temp shards a killed writer left: of ``units`` only (another rank may be writing its own), or all."""
    if units is None:
        files = Path(folder).glob(".shard-*.tmp-*")
    else:
        files = [f for k in units for f in Path(folder).glob(f".{shard_path(folder, k).name}.tmp-*")]
    for f in files:
        f.unlink(missing_ok=True)


def _written_digest(shard: Path) -> dict:
    """The digest saved when ``shard`` was written; a shard written before digests existed is hashed now."""
    try:
        d = json.loads(digest_path(shard).read_text())
        if isinstance(d.get("size"), int) and isinstance(d.get("sha256"), str):
            return {"size": d["size"], "sha256": d["sha256"]}
    except (OSError, ValueError, AttributeError):
        pass
    return file_digest(shard)


def finalize(folder: Path, expected_rows: Iterable[int], info: dict) -> dict:
    """Check every unit's shard is present, unchanged since written and with its expected row count, then write the
    manifest (last), with each shard's ``file, rows, size, sha256``."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    expected = list(expected_rows)
    shards, missing, wrong = [], [], []
    for k, n in enumerate(expected):
        p = shard_path(folder, k)
        if not p.exists():
            missing.append(k)
            continue
        digest = _written_digest(p)
        size = p.stat().st_size
        if size != digest["size"]:
            wrong.append(f"{p.name}: {size} bytes, {digest['size']} when written (damaged since: delete it and rerun)")
            continue
        try:
            got = pq.ParquetFile(p).metadata.num_rows
        except Exception as e:  # a damaged footer: name the file, not pyarrow's internals
            wrong.append(f"{p.name}: unreadable Parquet ({_why(e)}; delete it and rerun)")
            continue
        if got != n:
            wrong.append(f"{p.name}: {got} rows, expected {n}")
        shards.append({"file": p.name, "rows": got, **digest})
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
    """For a downstream stage, before it creates anything: the folder must hold a finished job (manifest present)
    whose shards are exactly those the manifest lists, each with its recorded size and sha256 (:func:`check_shards`).
    Otherwise one :class:`WorkbenchError` line names the first bad shard, what differs and how to recover."""
    m = read_manifest(folder)
    if m is None:
        raise WorkbenchError(f"{folder}: no {MANIFEST}: the {what} job there has not finished. "
                             "Rerun it (it resumes), or run its merge step if it ran on several ranks.")
    found = check_shards(folder, m)
    if found.problems:
        more = len(found.problems) - 1
        raise WorkbenchError(found.problems[0].message + (
            f" ({more} more problem(s) in {folder}: `workbench check {shlex.quote(str(folder))}` lists them)"
            if more else ""))
    return m


# ----------------------------------------------------------------------------------------------- checking a folder


@dataclass
class Problem:
    """One way a shard folder differs from its manifest. ``kind``: missing | size | sha256 | extra | unreadable |
    rows | unfinished. ``message``: one line naming the file, what differs and how to recover."""

    path: Path
    kind: str
    message: str


@dataclass
class FolderCheck:
    folder: Path
    manifest: dict | None
    problems: list[Problem] = field(default_factory=list)
    checked: int = 0  # shards compared with the manifest
    legacy: int = 0  # of them, listed without size/sha256 (a manifest from before digests): existence + rows only

    @property
    def ok(self) -> bool:
        return not self.problems


def recovery(folder: Path, delete: Path | None = None) -> str:
    """How to recover ``folder`` (``<run>/<output>``): delete the damaged shard ``delete`` (if any), and rerun the
    stage that wrote the folder, which resumes and rewrites what is missing -- with the exact command when the run
    folder's ``config.yaml`` says which stage it was (:func:`~workbench.store.runs.rerun_command`)."""
    from workbench.store.runs import rerun_command

    cmd = rerun_command(Path(folder).parent)
    rm = f"rm {shlex.quote(str(delete))}" if delete else ""
    if cmd:
        return (f"{'delete it and ' if delete else ''}rerun the stage that wrote it, which resumes and rewrites only "
                f"what is missing: {' && '.join(filter(None, [rm, cmd]))}")
    return (f"{f'delete it ({rm}) and ' if delete else ''}rerun the stage that wrote {folder} with the same command: "
            "it resumes and rewrites only what is missing")


def check_shards(folder: Path, manifest: dict | None = None, full: bool = True) -> FolderCheck:
    """Compare a shard folder with its manifest: every listed shard present with its recorded size and (``full``)
    sha256, and no ``shard-*.parquet`` the manifest does not list. ``full=False`` only stats the files (existence and
    size: no shard is read). Shards listed without a digest (a manifest from before digests) are checked for
    existence and, when ``full``, for the row count in their Parquet footer."""
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    res = FolderCheck(folder, manifest)
    if manifest is None:
        n = len(list(folder.glob("shard-*.parquet")))
        res.problems.append(Problem(folder, "unfinished", f"{folder}: no {MANIFEST}: the job writing it has not "
                                    f"finished ({n} shard(s) so far); {recovery(folder)}"))
        return res
    listed = set()
    for entry in manifest.get("shards", []):
        p = folder / entry["file"]
        listed.add(entry["file"])
        res.checked += 1
        if not p.is_file():
            res.problems.append(Problem(p, "missing", f"{p}: missing: {MANIFEST} lists it ({entry.get('rows')} rows) "
                                        f"but there is no such file; {recovery(folder)}"))
            continue
        fix = recovery(folder, delete=p)
        if "size" not in entry or "sha256" not in entry:
            res.legacy += 1
            if full:
                problem = _footer_problem(p, entry)
                if problem:
                    res.problems.append(Problem(p, problem[0], f"{p}: damaged: {problem[1]}; {fix}"))
            continue
        size = p.stat().st_size
        if size != entry["size"]:
            res.problems.append(Problem(p, "size", f"{p}: damaged: {size} bytes, {MANIFEST} records {entry['size']} "
                                        f"(truncated or rewritten since it was written); {fix}"))
        elif full and (got := file_digest(p)["sha256"]) != entry["sha256"]:
            res.problems.append(Problem(p, "sha256", f"{p}: damaged: sha256 {got[:16]}... differs from "
                                        f"{entry['sha256'][:16]}... in {MANIFEST} (same size, {size} bytes: "
                                        f"bytes changed in place); {fix}"))
    for p in sorted(folder.glob("shard-*.parquet")):
        if p.name not in listed:
            res.problems.append(Problem(p, "extra", f"{p}: extra shard: not listed in {folder / MANIFEST}, so not "
                                        f"part of this output (a stray or copied file) but a reader would take its "
                                        f"rows; delete it: rm {shlex.quote(str(p))}"))
    return res


def _footer_problem(p: Path, entry: dict) -> tuple[str, str] | None:
    """For a shard listed without a digest: its Parquet footer must be readable and hold the listed row count."""
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(p).metadata.num_rows
    except Exception as e:  # a truncated or overwritten footer
        return "unreadable", f"not a readable Parquet file ({_why(e)})"
    if "rows" in entry and rows != entry["rows"]:
        return "rows", f"{rows} rows, {MANIFEST} records {entry['rows']}"
    return None


def shard_folders(root: Path) -> list[Path]:
    """Every shard folder under ``root`` (itself included): a folder holding a manifest or ``shard-*.parquet``,
    skipping hidden folders (temp and cache folders)."""
    root = Path(root)
    found = []
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if any(part.startswith(".") for part in d.relative_to(root).parts):
            continue
        if (d / MANIFEST).is_file() or any(d.glob("shard-*.parquet")):
            found.append(d)
    return found


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
