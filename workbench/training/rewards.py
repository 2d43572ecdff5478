"""A verifier as a TRL reward function: the same object that scores rollouts and the reasoning eval.

TRL calls ``reward(prompts=..., completions=..., **columns)`` with every other dataset column as a list; the
``reference`` column carries each prompt's gold answer. Conversational prompts/completions (lists of messages) are
reduced to their text: the last user message and the assistant's reply.
"""

from __future__ import annotations

from workbench.errors import DataError


def _text(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    return str(x)


def verifier_reward(verifier):
    def reward(prompts, completions, **columns) -> list[float]:
        if "reference" not in columns:
            raise DataError(f"GRPO reward '{verifier.name}': the dataset has no 'reference' column (have: "
                            f"{sorted(columns)}). Map your gold-answer column with data.column_map.reference.")
        verdicts = verifier.verify_batch([_text(p) for p in prompts], [_text(c) for c in completions],
                                         [str(r) for r in columns["reference"]])
        return [v.score for v in verdicts]

    reward.__name__ = f"{verifier.name}_reward"  # TRL logs rewards/<name>
    return reward
