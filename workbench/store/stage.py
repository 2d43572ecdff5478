"""Starting a stage: open its run folder, and say whether its output is already finished.

Every sharded stage (rollouts, documents, verify, pairs, lists) begins the same way::

    stage = start_stage(cfg, "rollouts", overwrite=overwrite)
    if stage.finished:
        return stage.manifest           # "complete; nothing to do" was printed
    ... stage.run (the Run), stage.out (its shard folder) ...

and a stage that writes one shard per unit ends with :func:`finish_units`, which checks every unit's shard and row
count and writes the manifest last.

A finished output whose shard was deleted (the recovery a reader's integrity error asks for: "delete it and rerun
the stage that wrote it") is not finished: :func:`start_stage` drops every manifest of the run that lists a shard no
longer there, marks the run unfinished, and the stage resumes, rewriting only the missing units.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.store import shards
from workbench.store.runs import Run, open_run


@dataclass
class Stage:
    run: Run
    out: Path  # the stage's output folder (shards + manifest)
    manifest: dict | None  # the finished output's manifest, or None

    @property
    def finished(self) -> bool:
        return self.manifest is not None


def start_stage(cfg, output: str, overwrite: bool = False, quiet: bool = False) -> Stage:
    """Open ``cfg``'s run folder (create, resume or refuse: :func:`~workbench.store.runs.open_run`) and look for a
    finished ``<run>/<output>``. Call it only after the inputs are validated: the folder is created here.

    Finished means the run is marked done (``run.json``, written after every output), not merely that a manifest
    exists: a stage killed between its manifest and ``run.json`` redoes its (idempotent) last steps on rerun; and
    a shard its manifest lists must be there (one deleted is rewritten: the stage resumes) with its recorded size.
    """
    from workbench.config import to_dict

    if not overwrite:
        _refuse_resized_shards(cfg.run_dir())
    run = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite, quiet=quiet)
    out = run.path / output
    if run.resumed:
        _reopen_if_shards_missing(run, output, quiet)
    manifest = shards.read_manifest(out) if run.done else None
    if manifest is not None and not quiet:
        print(f"[{output}] {out} is complete; nothing to do", file=sys.stderr)
    return Stage(run, out, manifest)


def finish_units(stage: Stage, num_items: int, unit_size: int, rows_per_item: int, info: dict, what: str
                 ) -> dict | None:
    """Write the manifest once every unit's shard is there (any rank may be the last to finish); None until then.

    Unit k holds items [k*S, (k+1)*S) and so ``min(S, n - k*S) * rows_per_item`` rows; zero items is one empty unit.
    """
    if not shards.all_units_present(stage.out, num_items, unit_size):
        print(f"[{what}] this rank is done; other ranks' shards are still missing. The last rank to finish writes "
              "the manifest (or run `workbench generate merge --config ...`).", file=sys.stderr)
        return None
    units = shards.num_units(num_items, unit_size)
    expected = [min(unit_size, num_items - k * unit_size) * rows_per_item for k in range(units)] or [0]
    return shards.finalize(stage.out, expected, info)


def _manifest_folders(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and (p / shards.MANIFEST).is_file()) \
        if Path(run_dir).is_dir() else []


def _refuse_resized_shards(run_dir: Path) -> None:
    """A shard whose size differs from its manifest is damage that resuming cannot repair (the unit's shard exists,
    so it would be skipped): stop before the run folder is opened, naming it and the fix. A stat per shard."""
    for folder in _manifest_folders(run_dir):
        damaged = [p for p in shards.check_shards(folder, full=False).problems if p.kind == "size"]
        if damaged:
            raise WorkbenchError(damaged[0].message)


def _reopen_if_shards_missing(run: Run, output: str, quiet: bool) -> None:
    """Every manifest in the run must list only shards that are there (a stat per shard; nothing is read). When one
    lists a missing shard, the run is marked unfinished, then that manifest is dropped (a kill in between leaves an
    unfinished run whose manifest still lists the missing shard: the rerun comes here again), and the stage resumes:
    it rewrites the missing units and writes the manifest anew."""
    stale = []
    for folder in _manifest_folders(run.path):
        missing = [p.path.name for p in shards.check_shards(folder, full=False).problems if p.kind == "missing"]
        if missing:
            stale.append((folder, missing))
    if not stale:
        return
    run.mark_unfinished()
    for folder, missing in stale:
        (folder / shards.MANIFEST).unlink(missing_ok=True)
        if not quiet:
            print(f"[{output}] {folder}: {', '.join(missing)} listed in its manifest but missing: resuming to rewrite "
                  f"{'it' if len(missing) == 1 else 'them'} (the other shards are kept)", file=sys.stderr)
