"""`workbench generate rollouts`: n policy samples per prompt, as resumable Parquet shards.

Reads top to bottom: load prompts -> drop (and count) empty and over-long prompts -> for each pending unit of
``shard_size`` prompts, generate ``n`` samples each and write the unit's shard -> write the manifest last.

Row schema: ``prompt_id, prompt, sample_idx, completion, prompt_token_ids, completion_token_ids, reference,
finish_reason, num_tokens, logprob, model, backend``. ``prompt`` is the user message exactly as the policy saw it
(template applied); the manifest records ``chat`` and ``system_prompt`` so later stages can rebuild the conversation.
``prompt_token_ids`` are the exact ids the model continued (chat template applied) and ``completion_token_ids`` the
exact ids it generated, EOS included when it generated one: every later log-prob scores these, never re-tokenised
text. ``logprob`` is log pi(completion_token_ids | prompt_token_ids) under the sampling model's raw distribution.

Unit k's samples are drawn with the seed ``derive_seed(seed, sampling.seed, "rollouts", k)``: the same recipe and seed
give the same rows whether the job ran in one go, was killed and resumed, or ran on several ranks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from workbench.config import register_job
from workbench.generation.backends import BackendConfig, SamplingConfig
from workbench.generation.prompts import PromptRecord, PromptSourceConfig, load_prompts
from workbench.store import shards
from workbench.store.runs import RunConfig

ROLLOUT_COLUMNS = ["prompt_id", "prompt", "sample_idx", "completion", "prompt_token_ids", "completion_token_ids",
                   "reference", "finish_reason", "num_tokens", "logprob", "model", "backend"]


def rollout_schema():
    import pyarrow as pa

    s, i, ids = pa.string(), pa.int64(), pa.list_(pa.int64())
    return pa.schema([("prompt_id", s), ("prompt", s), ("sample_idx", i), ("completion", s), ("prompt_token_ids", ids),
                      ("completion_token_ids", ids), ("reference", s), ("finish_reason", s), ("num_tokens", i),
                      ("logprob", pa.float64()), ("model", s), ("backend", s)])


@dataclass
class ShardingConfig:
    """The unit of resume. Ranks are an execution detail, not part of the recipe: they come from the
    accelerate/torchrun or SLURM-array environment, or from `--rank/--world-size` on the command line."""

    shard_size: int = 32  # prompts per shard


@register_job("rollouts")
@dataclass
class RolloutsConfig(RunConfig):
    model: str = "smollm2-135m-instruct"
    prompts: PromptSourceConfig = field(default_factory=PromptSourceConfig)
    template: str = "{prompt}"  # the user message; {prompt} is the source's prompt text
    system_prompt: str | None = None
    chat: bool = True  # render through the tokenizer's chat template
    backend: BackendConfig = field(default_factory=BackendConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)

    def validate(self):
        if "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}")
        if not self.model.strip():
            raise ValueError("model is empty: name a default (workbench models), a local folder or a hub id")


def build_messages(user: str, chat: bool = True, system_prompt: str | None = None):
    """A plain string when ``chat`` is off; else [system?, user] messages for the tokenizer's chat template."""
    if not chat:
        return user
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": user}]


def _filter_prompts(cfg: RolloutsConfig, records: list[PromptRecord]) -> tuple[list[PromptRecord], dict]:
    """The stated rule: empty prompts and prompts with len(tokens) + max_tokens > max_model_len are skipped, counted."""
    from transformers import AutoConfig, AutoTokenizer

    from workbench.generation.backends import render_prompts
    from workbench.models import resolve_model

    path = resolve_model(cfg.model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.backend.trust_remote_code)
    max_len = cfg.backend.max_model_len or int(getattr(
        AutoConfig.from_pretrained(path, trust_remote_code=cfg.backend.trust_remote_code),
        "max_position_embeddings", 2048))
    kept, skipped = [], {"empty": 0, "too_long": 0}
    for r in records:
        if not r.prompt.strip():
            skipped["empty"] += 1
            continue
        text = render_prompts(tok, [build_messages(cfg.template.format(prompt=r.prompt), cfg.chat, cfg.system_prompt)])[0]
        if len(tok(text, add_special_tokens=False)["input_ids"]) + cfg.sampling.max_tokens > max_len:
            skipped["too_long"] += 1
            continue
        kept.append(r)
    return kept, {"max_model_len": max_len, **skipped}


def run(cfg: RolloutsConfig, overwrite: bool = False, part: shards.Partition | None = None) -> dict:
    from workbench.generation.backends import derive_seed, make_backend
    from workbench.store.stage import finish_units, start_stage

    # The prompts and the model are checked before the run folder exists: a mistyped path or model fails here, and
    # the corrected rerun is not refused as "a different config".
    records, skipped = _filter_prompts(cfg, load_prompts(cfg.prompts))
    if not records:
        from workbench.errors import DataError

        raise DataError(f"{cfg.prompts.path or cfg.prompts.task}: no usable prompts ({skipped})")
    stage = start_stage(cfg, "rollouts", overwrite=overwrite)
    if stage.finished:
        return stage.manifest
    part = part or shards.Partition.from_env()
    if skipped["empty"] or skipped["too_long"]:
        print(f"[rollouts] skipped {skipped['empty']} empty prompt(s) and {skipped['too_long']} prompt(s) longer "
              f"than max_model_len {skipped['max_model_len']} - max_tokens {cfg.sampling.max_tokens}", file=sys.stderr)

    backend = None
    if shards.pending_units(stage.out, len(records), cfg.sharding.shard_size, part):
        backend = make_backend(cfg.model, cfg.backend, seed=cfg.seed)
        stage.run.update_env("generation", backend.describe())

    def process(chunk: list[PromptRecord], unit: int):
        users = [cfg.template.format(prompt=r.prompt) for r in chunk]
        results = backend.generate([build_messages(u, cfg.chat, cfg.system_prompt) for u in users], cfg.sampling,
                                   seed=derive_seed(cfg.seed, cfg.sampling.seed, "rollouts", unit))
        rows, ntok = [], 0
        for r, user, samples in zip(chunk, users, results):
            for j, s in enumerate(samples):
                ntok += len(s.token_ids)
                rows.append({"prompt_id": r.prompt_id, "prompt": user, "sample_idx": j, "completion": s.text,
                             "prompt_token_ids": list(s.prompt_token_ids), "completion_token_ids": list(s.token_ids),
                             "reference": r.reference, "finish_reason": s.finish_reason,
                             "num_tokens": len(s.token_ids), "logprob": s.logprob, "model": cfg.model,
                             "backend": backend.name})
        return rows, ntok

    stats = shards.run_units(records, cfg.sharding.shard_size, stage.out, part, process, desc="rollouts",
                             samples_per_item=cfg.sampling.n, schema=rollout_schema())
    if stats["units_run"]:
        stage.run.log_metrics({f"throughput/{k}": v for k, v in stats.items()}, rank=part.rank)
        print(f"[rollouts] rank {part.rank}/{part.world_size}: {stats['samples']} samples, {stats['tokens']} tokens "
              f"in {stats['seconds']:.1f}s = {stats['samples_per_s']:.2f} samples/s, "
              f"{stats['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    manifest = finish_units(stage, len(records), cfg.sharding.shard_size, cfg.sampling.n, {
        "job": "rollouts", "model": cfg.model, "num_prompts": len(records), "n": cfg.sampling.n,
        "skipped": skipped, "columns": ROLLOUT_COLUMNS, "chat": cfg.chat, "system_prompt": cfg.system_prompt,
        "template": cfg.template}, "rollouts")
    if manifest is None:
        return {"complete": False}
    stage.run.mark_done({"rows": manifest["num_rows"], "prompts": len(records)})
    print(f"[rollouts] complete: {manifest['num_rows']} rows in {len(manifest['shards'])} shard(s) -> {stage.out}",
          file=sys.stderr)
    return manifest
