"""Checkpoints a killed run can trust: a checkpoint counts only once it is complete.

transformers writes ``checkpoint-<step>/`` file by file (weights, optimizer, scheduler, RNG states, and
``trainer_state.json`` last, itself not atomically). A SIGKILL in the middle leaves a folder that looks like a
checkpoint and crashes the resume (``FileNotFoundError`` on a missing ``trainer_state.json``, or a half-written one).
So :class:`CompleteCheckpointCallback` marks a checkpoint complete, atomically, after the trainer has finished
saving it (``on_save`` runs after the save and the rotation of old checkpoints), and
:func:`last_complete_checkpoint` resumes only from a marked one, removing unmarked leftovers first so that the
trainer never mixes their files into a new save of the same step.

The marker also records how many rows ``metrics.jsonl`` held when the checkpoint became complete. Everything logged
after that (steps past the checkpoint, an evaluation, the end-of-training summary row) is redone by the resumed run,
so :func:`resume_point` cuts the file back to that row count: each step is logged once, however late the kill came
(even after the last checkpoint, when the resumed run trains no step but logs the summary again). A run with no
complete checkpoint starts over, so its file is emptied.

It records, too, the counters a trainer keeps outside ``TrainerState`` (:data:`TRAINER_COUNTERS`), which no checkpoint
holds: TRL's DPOTrainer logs ``num_tokens`` from one, and a resumed run would count from 0 again.
:func:`restore_counters` puts them back. And :func:`train` resumes without training past ``max_steps``, which
transformers does when the checkpoint is the last step's.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from transformers import TrainerCallback

from workbench.store.files import atomic_write

MARKER = ".workbench-complete"
TRAINER_COUNTERS = ("_total_train_tokens",)  # TRL DPOTrainer (and HyPO): the cumulative ``num_tokens`` it logs


def _step(path: Path) -> int | None:
    tail = path.name.rpartition("-")[2]
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


class CompleteCheckpointCallback(TrainerCallback):
    """Write ``<checkpoint>/.workbench-complete`` once every rank has saved the checkpoint (with ``run``: and the
    number of rows its metrics.jsonl holds then; with ``trainer``: and its :data:`TRAINER_COUNTERS`)."""

    def __init__(self, run=None, trainer=None):
        self.run, self.trainer = run, trainer

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's shards are written before the checkpoint is declared complete
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                marker = {"global_step": state.global_step}
                if self.run is not None:
                    marker["metrics_rows"] = len(_metric_lines(self.run.path / "metrics.jsonl"))
                counters = {a: getattr(self.trainer, a) for a in TRAINER_COUNTERS if hasattr(self.trainer, a)}
                if counters:
                    marker["counters"] = counters
                atomic_write(folder / MARKER, json.dumps(marker))


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


def _metric_lines(path: Path) -> list[str]:
    """The complete rows of a metrics.jsonl (a row cut short by a kill has no newline yet and is not one)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [line for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def resume_point(run, clean: bool = True) -> str | None:
    """The checkpoint to resume ``run`` from (None: start over), with the run's metrics cut back to that point.

    With ``clean`` (the main process): incomplete checkpoints are removed and ``metrics.jsonl`` keeps only the rows
    it held when the checkpoint was marked complete (none when there is no checkpoint: training starts over)."""
    resume = last_complete_checkpoint(run.path / "checkpoints", clean=clean)
    path = run.path / "metrics.jsonl"
    if not clean or not path.exists():
        return resume
    rows = _metric_lines(path)
    if resume is None:
        rows = []
    elif (keep := json.loads((Path(resume) / MARKER).read_text()).get("metrics_rows")) is not None:
        rows = rows[:keep]
    else:  # a marker from before the row count: drop the rows logged for steps after the checkpoint's
        rows = [r for r in rows if (json.loads(r).get("step") or 0) <= _step(Path(resume))]
    text = "".join(line + "\n" for line in rows)
    if path.read_text() != text:
        atomic_write(path, text)
    return resume


def restore_counters(trainer, resume: str | None) -> None:
    """Set the trainer's :data:`TRAINER_COUNTERS` to their values at the ``resume`` checkpoint (every rank)."""
    if resume:
        for name, value in json.loads((Path(resume) / MARKER).read_text()).get("counters", {}).items():
            setattr(trainer, name, value)


def train(trainer, resume: str | None):
    """``trainer.train(resume_from_checkpoint=resume)``, except when ``resume`` already holds the last step.

    transformers resumes mid-epoch by skipping the batches already seen and running the rest of the epoch's loop,
    which checks ``max_steps`` only *after* a step: resumed from the checkpoint of the last step (a run killed while
    saving its model) when ``max_steps`` ends mid-epoch, it trains one step more than the uninterrupted run did. There
    is nothing left to train then: the checkpoint's weights and state are loaded and the end-of-training summary is
    logged as ``train()`` logs it, its wall-clock fields left out (that time was spent by the killed process).
    """
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    from workbench.training.callbacks import train_loss

    if not (resume and trainer.args.max_steps > 0 and _step(Path(resume)) >= trainer.args.max_steps):
        return trainer.train(resume_from_checkpoint=resume)
    trainer._load_from_checkpoint(resume)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if (Path(resume) / "generation_config.json").is_file() and hasattr(model, "generation_config"):
        from transformers import GenerationConfig

        # as training left it (generate() normalises it, e.g. eos_token_id to a list), not as the base model shipped it
        model.generation_config = GenerationConfig.from_pretrained(resume)
    trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    metrics = {"total_flos": trainer.state.total_flos, "train_loss": train_loss(trainer.state)}
    trainer.log(dict(metrics))
    return TrainOutput(trainer.state.global_step, metrics["train_loss"], metrics)
