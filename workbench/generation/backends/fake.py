"""The ``fake`` backend: deterministic canned completions for unit tests of orchestration code."""

from __future__ import annotations

from typing import Sequence

from workbench.generation.backends.base import Completion, SamplingConfig, register_backend


@register_backend("fake")
class FakeBackend:
    """Deterministic canned completions for unit tests of orchestration code. Never used by a job or recipe."""

    def __init__(self, responses: Sequence[str] = ("The answer is 42.",), model_name: str = "fake",
                 max_model_len: int = 512):
        self.responses = list(responses)
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.calls: list = []

    @property
    def tokenizer(self):
        return None

    def describe(self) -> dict:
        return {"backend": "fake"}

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None) -> list[list[Completion]]:
        self.calls.append((list(prompts), sampling))
        out, k = [], 0
        for _ in prompts:
            row = []
            for _ in range(sampling.n):
                text = self.responses[k % len(self.responses)]
                k += 1
                row.append(Completion(text, list(range(len(text.split()))), "stop", -float(len(text.split())), [0]))
            out.append(row)
        return out
