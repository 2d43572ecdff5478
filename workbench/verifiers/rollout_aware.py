"""The ``rollout_aware`` verifier: VerIPO's Rollout-Aware Verifier, for reasoning rollouts.

VerIPO (Li et al. 2025, "VerIPO: Cultivating Long Reasoning in Video-LLMs via Verifier-Guided Iterative
Policy Optimization", arXiv 2505.19000) puts a verifier between its GRPO and DPO phases. It checks each
rollout on four aspects and uses them to pick preference pairs: chosen rollouts are correct, with reasoning
that is consistent with the final answer, free of repetition, and long; rejected ones are wrong, or reach
their answer through reasoning that does not support it ("right answer, wrong thinking"), or loop. The
consistency check is a small LLM used as a judge. The paper states these as filters, not as a formula;
the weighted score below is this workbench's way of exposing them to its pair builders, and ``passed`` is
the filter.

The four checks, each reported in ``details``:

1. **accuracy** -- a rule verifier built by name (``accuracy_verifier``, default ``math``, with
   ``accuracy_options``): ``accuracy`` is its score in [0, 1], ``accurate`` its ``passed``.
2. **consistency** -- the judge (:meth:`~workbench.verifiers.judge.JudgeVerifier.judge_consistency`) is
   asked whether the reasoning actually derives the final answer; a right answer reached by wrong reasoning
   is inconsistent. ``consistent`` is True/False, or None when the judge is disabled (``use_judge: false``)
   or its answer was malformed (``consistency_malformed`` True, counted in the judge's ``stats``). A
   malformed answer counts as inconsistent in the score and in ``passed``; a disabled judge drops the check.
3. **repetition** -- ``repetition_ratio`` = ``1 - unique_ngrams / total_ngrams`` over word tokens with
   ``n = repetition_n`` (defined in :mod:`workbench.verifiers.repetition`); ``repetitive`` is
   ``repetition_ratio > repetition_threshold``. The default threshold 0.4 sits above every GSM8K train
   reference solution (4-grams: median 0.0, 99th percentile 0.17, max 0.32 over 7,473 solutions) and well
   below a looping completion (one 10-word sentence repeated ten times: 0.90).
4. **length** -- ``length`` = the number of word tokens; ``length_ok`` is ``min_len <= length <= max_len``
   (no upper bound when ``max_len`` is None).

Score (weights from the config, all >= 0):

    score = (w_acc * accuracy + w_con * c + w_rep * (1 - repetitive) + w_len * length_ok)
            / (w_acc + w_con + w_rep + w_len)

with ``c`` = 1 if consistent else 0 (malformed -> 0); when the judge is disabled the ``w_con`` terms are
dropped from numerator and denominator, so the score stays in [0, 1]. ``passed`` is the AND of the checks
named in ``require`` (default accuracy, consistency, non_repetition; a disabled judge skips consistency).

Batching: :meth:`RolloutAwareVerifier.verify_batch` asks the judge about the whole batch in one
``generate`` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from workbench.verifiers.judge import JudgeConfig, JudgeVerifier
from workbench.verifiers.repetition import ngram_repetition_ratio, word_tokens
from workbench.verifiers.verdict import Verdict, Verifier, get_verifier, register_verifier

__all__ = ["RolloutAwareConfig", "RolloutAwareVerifier", "CHECKS"]

CHECKS = ("accuracy", "consistency", "non_repetition", "length")


@dataclass
class RolloutAwareConfig:
    """Options of the ``rollout_aware`` verifier (a recipe section, or ``get_verifier`` keywords)."""

    accuracy_verifier: str = "math"  # a registered rule verifier
    accuracy_options: dict[str, Any] = field(default_factory=dict)  # its constructor options
    use_judge: bool = True  # false: no consistency check, no judge model (cheap runs)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    repetition_n: int = 4
    repetition_threshold: float = 0.4  # repetitive when repetition_ratio > this
    min_len: int = 1  # word tokens
    max_len: int | None = None
    weight_accuracy: float = 1.0
    weight_consistency: float = 0.5
    weight_non_repetition: float = 0.25
    weight_length: float = 0.25
    require: list[str] = field(default_factory=lambda: ["accuracy", "consistency", "non_repetition"])

    def validate(self):
        if self.accuracy_verifier == "rollout_aware":
            raise ValueError("accuracy_verifier must be a rule verifier (e.g. math), not rollout_aware itself")
        if self.repetition_n < 1:
            raise ValueError(f"repetition_n must be >= 1, got {self.repetition_n}")
        if not 0.0 <= self.repetition_threshold <= 1.0:
            raise ValueError(f"repetition_threshold must be in [0, 1], got {self.repetition_threshold}")
        if self.min_len < 0:
            raise ValueError(f"min_len must be >= 0, got {self.min_len}")
        if self.max_len is not None and self.max_len < self.min_len:
            raise ValueError(f"max_len ({self.max_len}) must be >= min_len ({self.min_len})")
        weights = self.weights()
        for name, w in weights.items():
            if w < 0:
                raise ValueError(f"weight_{name} must be >= 0, got {w}")
        active = sum(w for name, w in weights.items() if self.use_judge or name != "consistency")
        if active <= 0:
            raise ValueError("the weights of the active checks sum to 0; give at least one a positive weight")
        unknown = [r for r in self.require if r not in CHECKS]
        if unknown:
            raise ValueError(f"require: unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
        self.judge.validate()

    def weights(self) -> dict[str, float]:
        return {"accuracy": self.weight_accuracy, "consistency": self.weight_consistency,
                "non_repetition": self.weight_non_repetition, "length": self.weight_length}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "RolloutAwareConfig":
        from workbench.config import build

        return build(cls, dict(options), source="rollout_aware verifier options")


@register_verifier("rollout_aware")
class RolloutAwareVerifier(Verifier):
    options = RolloutAwareConfig

    """``RolloutAwareVerifier(judge_verifier=None, judge_backend=None, config=None, **options)``.

    ``options`` are :class:`RolloutAwareConfig` fields (``judge`` a mapping of :class:`JudgeConfig` fields),
    or ``config`` a whole :class:`RolloutAwareConfig`. ``judge_verifier`` is a ready
    :class:`JudgeVerifier` to use instead of building one from ``config.judge``; ``judge_backend`` a ready
    generation backend for the judge built from ``config.judge``. With ``use_judge: false`` no judge is
    built or called.
    """

    def __init__(self, judge_verifier: JudgeVerifier | None = None, judge_backend: Any = None,
                 config: RolloutAwareConfig | None = None, **options: Any):
        if config is not None and options:
            raise TypeError("RolloutAwareVerifier: pass either config= or option keywords, not both")
        if config is None:
            opts = dict(options)
            judge_cfg = opts.pop("judge") if isinstance(opts.get("judge"), JudgeConfig) else None
            config = RolloutAwareConfig.from_options(opts)
            if judge_cfg is not None:
                config = replace(config, judge=judge_cfg)
        config.validate()
        self.config = config
        self.accuracy = get_verifier(config.accuracy_verifier, **config.accuracy_options)
        self.judge: JudgeVerifier | None = None
        if config.use_judge:
            self.judge = (judge_verifier if judge_verifier is not None
                          else JudgeVerifier(backend=judge_backend, config=config.judge))

    @property
    def stats(self) -> dict[str, int]:
        """The judge's counters as ``judge_total`` / ``judge_malformed`` / ...; empty when the judge is disabled."""
        return {f"judge_{k}": v for k, v in self.judge.stats.items()} if self.judge is not None else {}

    def verify(self, prompt: str, completion: str, reference: str) -> Verdict:
        return self.verify_batch([prompt], [completion], [reference])[0]

    def verify_batch(self, prompts: Sequence[str], completions: Sequence[str],
                     references: Sequence[str]) -> list[Verdict]:
        if not len(prompts) == len(completions) == len(references):
            raise ValueError(f"verify_batch needs equally long lists, got {len(prompts)} prompts, "
                             f"{len(completions)} completions, {len(references)} references")
        accuracy = self.accuracy.verify_batch(prompts, completions, references)
        consistency: list[dict | None] = [None] * len(prompts)
        if self.judge is not None:
            # An empty completion has no reasoning to judge: inconsistent without a judge call.
            todo = [i for i, c in enumerate(completions) if c is not None and str(c).strip()]
            answers = self.judge.judge_consistency_batch([prompts[i] for i in todo],
                                                         [str(completions[i]) for i in todo])  # one generate call
            for i, answer in zip(todo, answers):
                consistency[i] = answer
            for i in set(range(len(prompts))) - set(todo):
                consistency[i] = {"consistent": False, "malformed": False, "parse_error": None, "raw": None,
                                  "reason": "empty completion"}
        return [self._combine(acc, con, "" if c is None else str(c), self.judge is not None)
                for acc, con, c in zip(accuracy, consistency, completions)]

    def _combine(self, acc: Verdict, con: dict | None, completion: str, judged: bool) -> Verdict:
        cfg = self.config
        tokens = word_tokens(completion)
        ratio = ngram_repetition_ratio(tokens, cfg.repetition_n)
        repetitive = ratio > cfg.repetition_threshold
        length = len(tokens)
        length_ok = length >= cfg.min_len and (cfg.max_len is None or length <= cfg.max_len)

        if not judged:
            consistent, malformed, con_reason, con_raw = None, False, "judge disabled", None
        else:
            consistent, malformed, con_raw = con["consistent"], con["malformed"], con["raw"]
            if "reason" in con:
                con_reason = con["reason"]
            elif malformed:
                con_reason = f"malformed judge output: {con['parse_error']}"
            else:
                con_reason = "reasoning supports the answer" if consistent else "reasoning does not support the answer"

        # (check -> value in [0, 1]); consistency is absent when the judge is disabled.
        values = {"accuracy": acc.score, "non_repetition": float(not repetitive), "length": float(length_ok)}
        if judged:
            values["consistency"] = float(bool(consistent))  # malformed (None) counts as inconsistent
        weights = cfg.weights()
        total = sum(weights[k] for k in values)
        score = sum(weights[k] * v for k, v in values.items()) / total

        checks = {"accuracy": acc.passed, "non_repetition": not repetitive, "length": length_ok}
        if judged:
            checks["consistency"] = consistent is True
        failed = [name for name in cfg.require if name in checks and not checks[name]]
        passed = not failed
        upper = cfg.max_len if cfg.max_len is not None else "inf"
        labels = {"accuracy": f"inaccurate ({acc.reason})", "consistency": f"inconsistent ({con_reason})",
                  "non_repetition": f"repetitive (ratio {ratio:.3f} > {cfg.repetition_threshold})",
                  "length": f"length {length} outside [{cfg.min_len}, {upper}]"}
        reason = "passed" if passed else "; ".join(labels[name] for name in failed)

        details = {
            "extracted": acc.extracted,
            "reason": reason,
            "accuracy": acc.score,
            "accurate": acc.passed,
            "accuracy_reason": acc.reason,
            "consistent": consistent,
            "consistency_malformed": malformed,
            "consistency_reason": con_reason,
            "consistency_raw": con_raw,
            "repetition_ratio": ratio,
            "repetitive": repetitive,
            "length": length,
            "length_ok": length_ok,
            "components": values,
        }
        return Verdict(min(1.0, max(0.0, score)), passed, details)
