"""Trainer callbacks shared by every trainer: metrics always land in the run's metrics.jsonl."""

from __future__ import annotations

from transformers import TrainerCallback


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log event (loss, rewards, kl/online, eval metrics, ...) to ``<run>/metrics.jsonl``.

    Only the main process writes, so multi-process runs log once.
    """

    def __init__(self, run):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.run.log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))},
                                 step=state.global_step, epoch=state.epoch)
