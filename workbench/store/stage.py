"""Starting a stage: open its run folder, and say whether its output is already finished.

Every sharded stage (rollouts, documents, verify, pairs, lists) begins the same way::

    stage = start_stage(cfg, "rollouts", overwrite=overwrite)
    if stage.finished:
        return stage.manifest           # "complete; nothing to do" was printed
    ... stage.run (the Run), stage.out (its shard folder) ...

and a stage that writes one shard per unit ends with :func:`finish_units`, which checks every unit's shard and row
count and writes the manifest last.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

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
    exists: a stage killed between its manifest and ``run.json`` redoes its (idempotent) last steps on rerun.
    """
    from workbench.config import to_dict

    run = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite, quiet=quiet)
    out = run.path / output
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
