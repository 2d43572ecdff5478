"""`workbench eval reasoning`: accuracy, pass@k and maj@k on a reasoning task, plus policy diagnostics.

Reads top to bottom: the task's prompts -> generations through the rollouts job (vLLM when available; resumable
shards in ``<run>/generations``) -> each sample scored by the task's verifier (the same object GRPO uses as its
reward) -> per-sample outputs in ``<run>/samples.parquet`` -> metrics -> ``results.json`` + ``report.md``.

* accuracy: the mean pass rate over all samples (an estimate of pass@1);
* pass@k: the unbiased estimator of Chen et al. 2021, 1 - C(n-c, k) / C(n, k), averaged over prompts;
* maj@k: majority vote over the answers extracted from the first k samples (ties broken by first occurrence); the
  prompt counts as solved when the majority answer passes;
* diagnostics: mean verifier score, mean completion length (tokens), and, when ``reference_model`` is set, the
  reverse KL(pi_theta || pi_ref) with its standard error and per-token value (:mod:`workbench_eval.diagnostics`). The KL is
  estimated on samples of pi itself: T=1, top_p=1, float32, ``kl.n`` per prompt. When the accuracy samples were drawn
  that way they are reused; otherwise a dedicated KL sampling pass (resumable shards in ``<run>/kl_samples``) draws
  them. Both models score the sampled token ids.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from math import comb
from pathlib import Path

from workbench_eval.tasks import TaskConfig, Task
from workbench.config import register_job
from workbench.generation.backends import BackendConfig, SamplingConfig
from workbench.store.runs import RunConfig


@dataclass
class KLConfig:
    """The KL sampling pass: samples of pi itself (T=1, top_p=1), in float32, scored by both models in float32."""

    n: int = 4  # samples per prompt (>= 2 gives a within-prompt standard error)
    prompts: int | None = None  # the KL on the first `prompts` prompts only (accuracy is cheap, the KL pass is not)
    max_tokens: int | None = None  # default: sampling.max_tokens
    dtype: str = "float32"  # the sampler's dtype: the samples must come from the pi that is scored (float32)

    def validate(self):
        if self.n < 1:
            raise ValueError(f"kl.n must be >= 1, got {self.n}")
        if self.prompts is not None and self.prompts < 1:
            raise ValueError(f"kl.prompts must be >= 1 (or null: every prompt), got {self.prompts}")


@register_job("eval_reasoning")
@dataclass
class ReasoningEvalConfig(RunConfig):
    model: str = "smollm2-135m-instruct"
    task: TaskConfig = field(default_factory=TaskConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4, temperature=0.7, max_tokens=256))
    k: list[int] = field(default_factory=lambda: [1, 4])  # for pass@k and maj@k (each <= sampling.n)
    reference_model: str | None = None  # set to compute KL(pi_theta || pi_ref) (see KLConfig)
    kl: KLConfig = field(default_factory=KLConfig)
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


def _sampled_from_pi(sampling: SamplingConfig, backend: BackendConfig, dtype: str) -> bool:
    """Were these samples drawn from pi itself, in the dtype that is scored? (Then the KL pass can reuse them.)"""
    from workbench.generation.backends import _on_cpu, resolve_auto, vllm_cpu_dtype

    if sampling.temperature != 1.0 or sampling.top_p != 1.0:
        return False
    kind = backend.backend if backend.backend != "auto" else resolve_auto()
    # hf on CPU with dtype auto loads float32; vLLM with dtype auto downcasts a float32 model to bf16/fp16, except on
    # a CPU without bf16 instructions, where the workbench asks it for float32 (vllm_cpu_dtype).
    resolved = backend.dtype
    if backend.dtype == "auto" and _on_cpu():
        resolved = "float32" if kind == "hf" else vllm_cpu_dtype("auto")
    return resolved in (dtype, "float" if dtype == "float32" else dtype)


def _kl_to_reference(cfg: ReasoningEvalConfig, run_, prompts_file, rows: list[dict]) -> dict:
    """KL(pi || pi_ref) on samples of pi (see KLConfig), scored on their token ids by both models."""
    from workbench_eval.diagnostics import reverse_kl
    from workbench.config import build, to_dict
    from workbench.generation import rollouts
    from workbench.store.shards import read_rows
    from workbench.models import merged_model_dir, resolve_model

    max_tokens = cfg.kl.max_tokens or cfg.sampling.max_tokens
    policy = merged_model_dir(resolve_model(cfg.model))
    ref = merged_model_dir(resolve_model(cfg.reference_model))
    if Path(policy).resolve() == Path(ref).resolve():  # the same weights: KL is 0 by definition, nothing to sample
        return {"kl": 0.0, "kl_se": 0.0, "kl_per_token": 0.0, "samples": 0, "reference_model": cfg.reference_model,
                "sampling": "none: the policy is the reference model"}
    reuse = (_sampled_from_pi(cfg.sampling, cfg.backend, cfg.kl.dtype) and cfg.kl.n == cfg.sampling.n
             and max_tokens == cfg.sampling.max_tokens and not cfg.sampling.stop)
    if cfg.kl.prompts is not None:  # the subset: the first kl.prompts prompts of the eval, in the eval's order
        lines = [line for line in Path(prompts_file).read_text().splitlines() if line.strip()]
        keep = {json.loads(line)["id"] for line in lines[:cfg.kl.prompts]}
        rows = [r for r in rows if r["prompt_id"] in keep]
        if not reuse and len(keep) < len(lines):
            from workbench.store.files import atomic_write

            subset = run_.path / "kl_prompts.jsonl"
            atomic_write(subset, "".join(line + "\n" for line in lines[:cfg.kl.prompts]))
            prompts_file = subset
    if not reuse:
        kl_cfg = build(rollouts.RolloutsConfig, {
            "job": "rollouts", "run_name": "kl_samples", "output_dir": str(run_.path / "kl_samples"),
            "seed": cfg.seed + 1, "model": cfg.model, "template": cfg.task.template, "chat": cfg.chat,
            "system_prompt": cfg.system_prompt, "prompts": {"kind": "jsonl", "path": str(prompts_file)},
            "backend": {**to_dict(cfg.backend), "dtype": cfg.kl.dtype},
            "sampling": {"n": cfg.kl.n, "temperature": 1.0, "top_p": 1.0, "max_tokens": max_tokens, "stop": []}})
        rollouts.run(kl_cfg)
        rows = read_rows(run_.path / "kl_samples" / "rollouts")
    kl = reverse_kl(policy, ref, [r["prompt_token_ids"] for r in rows], [r["completion_token_ids"] for r in rows],
                    [r["prompt_id"] for r in rows])
    # How closely the sampler's own log-probs match the float32 scoring of pi: a large gap means the samples did
    # not come from the pi that was scored (a different dtype or kernel), and the estimate carries that bias.
    gaps = [abs(r["logprob"] - lp) for r, lp in zip(rows, kl.pop("policy_logps"))]
    kl.pop("ref_logps")
    return {**kl, "reference_model": cfg.reference_model, "sampling": "reused accuracy samples" if reuse else
            "dedicated pass (T=1, top_p=1)", "temperature": 1.0, "top_p": 1.0, "max_tokens": max_tokens,
            "dtype": cfg.kl.dtype, "truncated": sum(r["finish_reason"] == "length" for r in rows),
            "sampler_logprob_gap_max": max(gaps), "sampler_logprob_gap_mean": sum(gaps) / len(gaps)}


def _write_parquet(path: Path, table) -> None:
    """Through a temp file, fsync and rename (as every other output): a run killed mid-write leaves a temp file,
    never a truncated samples.parquet for a reader to trip on."""
    import os

    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run(cfg: ReasoningEvalConfig, overwrite: bool = False) -> dict:
    import pyarrow as pa

    from workbench_eval.report import read_results, results_payload, write_report, write_results
    from workbench.config import build, to_dict
    from workbench.generation import rollouts
    from workbench.store.files import atomic_write
    from workbench.store.shards import read_rows
    from workbench.models import model_fingerprint, resolve_model
    from workbench.store.runs import open_run

    # Everything that can fail on the user's input fails here, before the run folder exists.
    task = Task(cfg.task)
    records = task.prompts()
    if not records:
        from workbench.errors import DataError

        raise DataError(f"task {cfg.task.name}: no prompts (size {cfg.task.size}, offset {cfg.task.offset})")
    task.verifier  # noqa: B018  (builds it: a bad verifier name or option fails now)
    for name in filter(None, (cfg.model, cfg.reference_model)):
        resolve_model(name)
    run_ = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite)
    if run_.done:
        return read_results(run_.path)
    prompts_file = run_.path / "prompts.jsonl"
    atomic_write(prompts_file, "".join(json.dumps({"id": r.prompt_id, "prompt": r.prompt, "reference": r.reference})
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
    _write_parquet(run_.path / "samples.parquet", pa.Table.from_pylist(rows))

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
        kl = _kl_to_reference(cfg, run_, prompts_file, rows)
        metrics.update(kl_to_ref=kl["kl"], kl_to_ref_se=kl["kl_se"], kl_per_token=kl["kl_per_token"])
        extra["kl"] = kl
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
