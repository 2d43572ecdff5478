"""Config sections shared by several jobs. Each stage's own job config lives next to the stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunConfig:
    """Top-level keys of every recipe that produces a run folder."""

    job: str
    run_name: str
    output_dir: str | None = None  # default: runs/<run_name>
    seed: int = 0

    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.run_name)
