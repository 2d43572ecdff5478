"""The ``reasoning_gym`` verifier: any reasoning-gym task, scored by the task's own ``score_answer``.

Why the task's scorer and not ours: reasoning-gym tasks define what "correct" means (partial credit,
tolerated formats, several valid answers), and a reward that disagrees with the benchmark's scorer
trains toward the wrong target. We only *extract* the answer from a free-form completion, because
the scorers expect the bare answer string.

The reference is the whole dataset entry (``question``, ``answer``, ``metadata``) as a JSON string, so
a row carries it through Parquet unchanged: build it with :func:`entry_to_reference` (or get whole rows
from :func:`make_rows`); :meth:`ReasoningGymVerifier.verify` parses it back. JSON turns tuples into
lists; scorers that only read ``answer``/``metadata`` values are unaffected.

Answer extraction (first that applies): the last ``<answer>...</answer>`` (reasoning-gym's own format),
the last ``#### x`` line, the last ``\\boxed{x}``, the rest of the line after the last "answer is" /
"answer:", else the last non-empty line.

The verifier builds the task's dataset (``size=1``) only to get its scorer; pass the same
``task_config`` the rows were generated with, because some scorers read their config.

The ``products`` task (multiplication), handy as a tiny smoke-test task. Its config keys
(``reasoning_gym.arithmetic.products.ProductsConfig``):

* ``min_digits`` / ``max_digits`` (default 1 / 5): digits per operand; ``min_digits=1, max_digits=1``
  gives 1-digit operands (0..9, zero included);
* ``min_terms`` / ``max_terms`` (default 2 / 2): how many numbers are multiplied;
* ``allow_negation`` (default False): negative operands;
* ``seed``, ``size``: as for every reasoning-gym dataset.

Its scorer (``compute_decimal_reward``) gives 1.0 for a numerically equal answer ("+01,000.00" == "1000")
and partial credit len(answer)/len(extracted) when the right number merely appears inside the extracted
text; hence ``pass_threshold`` (default 1.0) separates "passed" from "partial credit".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.errors import WorkbenchError
from workbench.generation.prompts import entry_to_reference, reference_to_entry  # the format the prompt source writes
from workbench.verifiers.math import answer_phrase, hash_answer, last_boxed
from workbench.verifiers.verdict import DEFAULT_TIME_LIMIT_S, Verdict, Verifier, register_verifier

__all__ = ["ReasoningGymVerifier", "entry_to_reference", "reference_to_entry", "extract_answer", "make_rows"]

def _last_answer_tag(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>``, pairing each ``<answer>`` with the first ``</answer>`` after
    it, left to right (what ``re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)[-1]`` gives), or None.

    A scan with ``str.find``, not that lazy pattern: the pattern tries again from every ``<answer>`` that has no close
    and scans to the end each time, so a completion repeating the tag costs time quadratic in its length. Here each
    stretch of text is scanned once: once an ``<answer>`` has no close after it, no later one has either.
    """
    last, pos = None, 0
    while (start := text.find("<answer>", pos)) >= 0:
        close = text.find("</answer>", start + len("<answer>"))
        if close < 0:
            break
        last, pos = text[start + len("<answer>"): close], close + len("</answer>")
    return last


def extract_answer(completion: str) -> tuple[str | None, str | None]:
    """``(answer, rule)``: the answer string the task scorer should see, and which rule found it."""
    tag = _last_answer_tag(completion)
    if tag is not None:
        return tag.strip(), "answer_tag"
    for rule, find in (("####", hash_answer), ("boxed", last_boxed), ("answer_is", answer_phrase)):
        found = find(completion)
        if found is not None and found.strip():
            answer = found.strip()
            return (answer.rstrip(".").strip() if rule == "answer_is" else answer), rule
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    return (lines[-1], "last_line") if lines else (None, None)


def _create_dataset(task: str, **config: Any):
    import reasoning_gym  # ~1 s to import: only when a reasoning_gym verifier or row is actually needed

    try:
        return reasoning_gym.create_dataset(task, **config)
    except (ValueError, TypeError, AssertionError) as e:
        raise WorkbenchError(f"reasoning_gym task {task!r} with config {config}: {e}") from e


def make_rows(task: str, *, size: int, seed: int, task_config: dict | None = None) -> list[dict]:
    """Rows for a prompt set: ``{"prompt": question, "reference": entry JSON, "answer": gold answer}``.

    E.g. ``make_rows("products", size=100, seed=0, task_config={"min_digits": 1, "max_digits": 1})``.
    """
    dataset = _create_dataset(task, size=size, seed=seed, **(task_config or {}))
    return [
        {"prompt": entry["question"], "reference": entry_to_reference(entry), "answer": str(entry["answer"])}
        for entry in dataset
    ]


@dataclass
class ReasoningGymOptions:
    task: str = ""  # the reasoning-gym task name, e.g. products
    task_config: dict[str, Any] = field(default_factory=dict)  # the task's dataset kwargs
    pass_threshold: float = 1.0

    def validate(self):
        if not self.task:
            raise ValueError("reasoning_gym verifier needs `task` (e.g. products)")
        if not 0.0 < self.pass_threshold <= 1.0:
            raise ValueError(f"pass_threshold must be in (0, 1], got {self.pass_threshold}")


@register_verifier("reasoning_gym")
class ReasoningGymVerifier(Verifier):
    """Score with the reasoning-gym task's own scorer; ``passed`` = score >= ``pass_threshold``."""

    options = ReasoningGymOptions
    time_limit = DEFAULT_TIME_LIMIT_S  # the task's own scorer reads model text too (some parse it with sympy)

    def __init__(self, task: str, task_config: dict | None = None, pass_threshold: float = 1.0):
        if not 0.0 < pass_threshold <= 1.0:
            raise WorkbenchError(f"reasoning_gym verifier: pass_threshold must be in (0, 1], got {pass_threshold}")
        self.task = task
        self.task_config = dict(task_config or {})
        self.pass_threshold = float(pass_threshold)
        self._dataset = _create_dataset(task, **{"size": 1, "seed": 0, **self.task_config})

    def verify(self, prompt: str, completion: str, reference: str) -> Verdict:
        entry = reference_to_entry(reference)
        if completion is None or not str(completion).strip():
            return Verdict(0.0, False, {"extracted": None, "reason": "empty completion", "rule": None})
        answer, rule = extract_answer(str(completion))
        details: dict[str, Any] = {"extracted": answer, "rule": rule, "task": self.task}
        try:
            score = float(self._dataset.score_answer(answer, entry))
        except Exception as e:  # noqa: BLE001 - model output is arbitrary; a scorer crash is a 0, not a dead run
            return Verdict(0.0, False, {**details, "reason": f"scorer error: {type(e).__name__}: {e}"})
        score = min(1.0, max(0.0, score))
        passed = score >= self.pass_threshold
        reason = "correct" if passed else ("partial credit" if score > 0 else "wrong answer")
        return Verdict(score, passed, {**details, "reason": reason})
