"""Checkpoints a killed run can trust: a checkpoint counts only once it is complete.

transformers writes ``checkpoint-<step>/`` file by file (weights, optimizer, scheduler, RNG states, and
``trainer_state.json`` last, itself not atomically). A SIGKILL in the middle leaves a folder that looks like a
checkpoint and crashes the resume (``FileNotFoundError`` on a missing ``trainer_state.json``, or a half-written one).
So :class:`CompleteCheckpointCallback` marks a checkpoint complete, atomically, after the trainer has finished
saving it (``on_save`` runs after the save and the rotation of old checkpoints), and
:func:`last_complete_checkpoint` resumes only from a marked one, removing unmarked leftovers first so that the
trainer never mixes their files into a new save of the same step.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from transformers import TrainerCallback

from workbench.store.files import atomic_write

MARKER = ".workbench-complete"


def _step(path: Path) -> int | None:
    tail = path.name.rpartition("-")[2]
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


class CompleteCheckpointCallback(TrainerCallback):
    """Write ``<checkpoint>/.workbench-complete`` once every rank has saved the checkpoint."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's shards are written before the checkpoint is declared complete
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write(folder / MARKER, json.dumps({"global_step": state.global_step}))


def last_complete_checkpoint(folder: Path, clean: bool = True) -> str | None:
    """The newest marked ``checkpoint-<step>`` in ``folder``; with ``clean``, unmarked ones are deleted (say it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    checkpoints = [p for p in folder.iterdir() if p.is_dir() and _step(p) is not None]
    complete = [p for p in checkpoints if (p / MARKER).is_file()]
    if clean:
        for p in checkpoints:
            if p not in complete:
                print(f"[train] {p} is an incomplete checkpoint (the run was killed while saving it); removed",
                      file=sys.stderr)
                shutil.rmtree(p, ignore_errors=True)
    return str(max(complete, key=_step)) if complete else None
