"""Trainer callbacks shared by every trainer: metrics always land in the run's metrics.jsonl, exactly once."""

from __future__ import annotations

from transformers import TrainerCallback


def train_loss(state) -> float | None:
    """The mean training loss over steps 1..global_step, from the logged per-window losses in ``state.log_history``.

    transformers' own ``train_loss`` sums the losses of *this process's* steps only (``_total_loss_scalar`` starts at
    0 in every ``train()`` call) and divides by all steps, so a run resumed from checkpoint N reports
    ``sum(loss over N+1..T) / T`` -- wrong, and different from the uninterrupted run. The log history is restored
    with the checkpoint, and each logged ``loss`` is the mean over the steps since the previous log, so
    ``sum(loss_i * window_i) / T`` is the mean over every step whichever process ran it. It covers every step because
    :class:`MetricsJsonlCallback` logs the last step too.
    """
    total, last = 0.0, 0
    for entry in state.log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else None


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log event (loss, rewards, kl/online, eval metrics, ...) to ``<run>/metrics.jsonl``.

    Only the main process writes, so multi-process runs log once. A resumed run logs each step once because
    :func:`workbench.training.checkpoints.resume_point` first cuts the file back to what it held at the checkpoint.
    The last step is always logged (not only every ``logging_steps``), so the curve ends at the final step and the
    summary's ``train_loss`` is exact (:func:`train_loss`).
    """

    def __init__(self, run):
        self.run = run

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            row = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            if "train_loss" in row:  # the end-of-training summary: transformers' value is wrong after a resume
                row["train_loss"] = train_loss(state)
            self.run.log_metrics(row, step=state.global_step, epoch=state.epoch)
