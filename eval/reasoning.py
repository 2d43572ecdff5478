"""`workbench eval reasoning`: accuracy, pass@k and maj@k on a reasoning task, plus policy diagnostics.

Reads top to bottom: the task's prompts -> generations through the rollouts job (vLLM when available; resumable
shards in ``<run>/generations``) -> each sample scored by the task's verifier (the same object GRPO uses as its
reward) -> per-sample outputs in ``<run>/samples.parquet`` -> metrics -> ``results.json`` + ``report.md``.

* accuracy: the mean pass rate over all samples (an estimate of pass@1);
* pass@k: the unbiased estimator of Chen et al. 2021, 1 - C(n-c, k) / C(n, k), averaged over prompts;
* maj@k: majority vote over the answers extracted from the first k samples (ties broken by first occurrence); the
  prompt counts as solved when the majority answer passes;
* diagnostics: mean verifier score, mean completion length (tokens), and, when ``reference_model`` is set, the
  reverse KL(pi_theta || pi_ref) estimated on the samples (:mod:`eval.diagnostics`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from math import comb

from eval.tasks import TaskConfig, Task
from workbench.config import register_job
from workbench.generation.backends import BackendConfig, SamplingConfig
from workbench.sections import RunConfig


@register_job("eval_reasoning")
@dataclass
class ReasoningEvalConfig(RunConfig):
    model: str = "smollm2-135m-instruct"
    task: TaskConfig = field(default_factory=TaskConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4, temperature=0.7, max_tokens=256))
    k: list[int] = field(default_factory=lambda: [1, 4])  # for pass@k and maj@k (each <= sampling.n)
    reference_model: str | None = None  # set to compute KL(pi_theta || pi_ref) on the samples
    chat: bool = True
    system_prompt: str | None = None

    def validate(self):
        bad = [k for k in self.k if not 1 <= k <= self.sampling.n]
        if bad:
            raise ValueError(f"k values {bad} must be between 1 and sampling.n ({self.sampling.n})")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021, Eq. 1: the probability that at least one of k samples (of n, c correct) passes."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list[str | None], passed: list[bool], k: int) -> bool:
    """Majority vote over the first k extracted answers (unreadable answers do not vote)."""
    votes = [(a, p) for a, p in zip(answers[:k], passed[:k]) if a is not None]
    if not votes:
        return False
    counts = Counter(a for a, _ in votes)
    top = max(counts.values())
    winner = next(a for a, _ in votes if counts[a] == top)  # first occurrence breaks ties
    return any(p for a, p in votes if a == winner)


def _answer_key(details: dict) -> str | None:
    value = details.get("value")
    if value is not None:
        return str(value)
    extracted = details.get("extracted")
    return None if extracted in (None, "") else str(extracted).strip()


def run(cfg: ReasoningEvalConfig, overwrite: bool = False) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eval.report import read_results, results_payload, write_report, write_results
    from workbench.config import build, to_dict
    from workbench.generation import rollouts
    from workbench.generation.shards import read_rows
    from workbench.models import merged_model_dir, model_fingerprint, resolve_model
    from workbench.runs import open_run

    run_ = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite)
    if run_.done:
        return read_results(run_.path)
    task = Task(cfg.task)
    records = task.prompts()
    prompts_file = run_.path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"id": r.prompt_id, "prompt": r.prompt, "reference": r.reference})
                                    + "\n" for r in records))
    gen_cfg = build(rollouts.RolloutsConfig, {
        "job": "rollouts", "run_name": "generations", "output_dir": str(run_.path / "generations"),
        "seed": cfg.seed, "model": cfg.model, "template": cfg.task.template, "chat": cfg.chat,
        "system_prompt": cfg.system_prompt, "prompts": {"kind": "jsonl", "path": str(prompts_file)},
        "backend": to_dict(cfg.backend), "sampling": to_dict(cfg.sampling)})
    manifest = rollouts.run(gen_cfg)
    rows = read_rows(run_.path / "generations" / "rollouts")

    verdicts = task.verifier.verify_batch([r["prompt"] for r in rows], [r["completion"] for r in rows],
                                          [r["reference"] for r in rows])
    for r, v in zip(rows, verdicts):
        r.update(score=v.score, passed=v.passed, details=json.dumps(v.details, default=str))
    pq.write_table(pa.Table.from_pylist(rows), run_.path / "samples.parquet")

    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    per_query, metrics = {}, {"accuracy": sum(r["passed"] for r in rows) / len(rows)}
    for k in cfg.k:
        metrics[f"pass@{k}"] = 0.0
        metrics[f"maj@{k}"] = 0.0
    for pid, rs in by_prompt.items():
        rs.sort(key=lambda r: r["sample_idx"])
        passed = [bool(r["passed"]) for r in rs]
        answers = [_answer_key(json.loads(r["details"])) for r in rs]
        q = {"accuracy": sum(passed) / len(passed)}
        for k in cfg.k:
            q[f"pass@{k}"] = pass_at_k(len(passed), sum(passed), k)
            q[f"maj@{k}"] = float(majority_correct(answers, passed, k))
            metrics[f"pass@{k}"] += q[f"pass@{k}"] / len(by_prompt)
            metrics[f"maj@{k}"] += q[f"maj@{k}"] / len(by_prompt)
        per_query[pid] = q
    metrics["mean_score"] = sum(r["score"] for r in rows) / len(rows)
    metrics["mean_length"] = sum(r["num_tokens"] for r in rows) / len(rows)
    extra = {}
    if cfg.reference_model:
        from transformers import AutoTokenizer

        from eval.diagnostics import reverse_kl
        from workbench.generation.backends import render_prompts
        from workbench.generation.rollouts import build_messages

        policy = merged_model_dir(resolve_model(cfg.model))
        ref = merged_model_dir(resolve_model(cfg.reference_model))
        tok = AutoTokenizer.from_pretrained(policy)
        texts = render_prompts(tok, [build_messages(r["prompt"], cfg.chat, cfg.system_prompt) for r in rows])
        kl = reverse_kl(policy, ref, texts, [r["completion"] for r in rows])
        metrics["kl_to_ref"] = kl["kl"]
        extra["kl"] = {**kl, "reference_model": cfg.reference_model, "temperature": cfg.sampling.temperature}
    counts = {"prompts": len(by_prompt), "samples": len(rows), "skipped_prompts": manifest.get("skipped", {}),
              "unreadable_answers": sum(1 for v in verdicts if v.details.get("extracted") in (None, ""))}
    payload = results_payload(task="reasoning", model=cfg.model,
                              model_fingerprint=model_fingerprint(resolve_model(cfg.model)),
                              dataset=cfg.task.name + (f" ({cfg.task.path})" if cfg.task.path else ""),
                              split=None, metrics=metrics, per_query=per_query, counts=counts,
                              settings={"n": cfg.sampling.n, "temperature": cfg.sampling.temperature,
                                        "max_tokens": cfg.sampling.max_tokens, "k": cfg.k,
                                        "verifier": task.verifier.name}, **extra)
    write_results(run_.path, payload)
    write_report(run_.path, payload, title=f"Reasoning evaluation ({cfg.task.name})")
    run_.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
    run_.mark_done(metrics)
    print("[eval reasoning] " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f" -> {run_.path}",
          file=sys.stderr)
    return payload
