"""Trainer callbacks shared by every trainer: metrics always land in the run's metrics.jsonl, exactly once."""

from __future__ import annotations

from transformers import TrainerCallback


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log event (loss, rewards, kl/online, eval metrics, ...) to ``<run>/metrics.jsonl``.

    Only the main process writes, so multi-process runs log once. A run resumed from checkpoint N first drops the
    rows it logged after step N before it was killed: the resumed run logs those steps again, and each step must
    appear once (the training curves read this file).
    """

    def __init__(self, run):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0:
            self.run.drop_metrics_after(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.run.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                 step=state.global_step, epoch=state.epoch)
