"""`workbench train` for policies: DPO (TRL), HyPO (ours, on TRL's DPOTrainer) and GRPO (TRL).

Reads top to bottom: resolve the model -> load the preference (or prompt) data through ``column_map`` -> build the
TRL config from the recipe -> build the trainer -> train, resuming from the last checkpoint if the run was killed ->
save the final model/adapter in Hugging Face format with a model card -> mark the run done.

The same recipe runs on one CPU (``workbench train --config R``) and on many processes/GPUs
(``accelerate launch [--config_file recipes/accelerate/X.yaml] -m workbench train --config R``): accelerate's
environment decides the distribution; nothing in the recipe changes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.config import register_job
from workbench.errors import DataError
from workbench.generation.backends import BackendConfig
from workbench.generation.prompts import PromptSourceConfig
from workbench.store.runs import RunConfig
from workbench.training.settings import LoraConfig, OptimConfig
from workbench.verifiers.job import VerifierConfig

PREF_ROLES = ("prompt", "chosen", "rejected")
TRL_DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class DataConfig:
    """Training data: a `workbench pairs` run folder, a Parquet/JSONL file or folder, or a `datasets` name."""

    path: str = ""  # (GRPO may take its prompts from grpo.prompts instead)
    split: str = "train"
    column_map: dict[str, str] = field(default_factory=dict)  # role -> column
    eval_path: str | None = None  # held-out data in the same format (e.g. <pairs run>/pairs_test)
    limit: int | None = None  # keep the first `limit` rows



@dataclass
class DPOSection:
    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    ref_model: str | None = None  # default: the initial policy (or, with LoRA, the adapter-disabled base)
    precompute_ref_log_probs: bool = False
    max_length: int | None = 1024

    def validate(self):
        bad = [t for t in self.loss_type if t not in TRL_DPO_LOSSES]
        if bad:
            raise ValueError(f"unknown DPO loss_type {bad}; TRL's are: {', '.join(TRL_DPO_LOSSES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError("loss_weights needs one weight per loss_type")


@dataclass
class ServerSection:
    """Where ``hypo.sampler: server`` finds its vLLM server (``workbench serve``; see
    workbench/training/server_sampler.py and recipes/hypo/gpu_qwen7b_server.yaml)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # Where the trainer writes the weights it pushes. The server reads them at the same absolute path: the same node,
    # or a filesystem both nodes mount identically (checked before training starts).
    weights_dir: str = "runs/.weight-sync"
    timeout: float = 600.0  # seconds for one request (a sync of one weights file, or one prompt's k samples)

    def validate(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")


@dataclass
class HyPOSection:
    """Song et al. 2024: kl_coef * KL(pi_theta || pi_ref) on k online samples per prompt (see losses/hypo.py).

    ``kl_coef`` is the paper's lambda; it was ``lam`` before 0.2 (the old key still works, with a warning)."""

    RENAMED = {"lam": "kl_coef"}

    kl_coef: float = 0.05  # the paper's lambda: the weight of the online reverse-KL term
    k: int = 2  # samples per prompt (>= 2 for the leave-one-out baseline)
    sampler: Literal["auto", "hf", "vllm", "server"] = "auto"  # server: a vLLM server elsewhere (hypo.server)
    sync_every: int = 1  # vLLM and server: push weights every N optimizer steps
    temperature: float = 1.0  # 1.0 samples pi_theta itself; other values bias the KL estimate
    max_new_tokens: int = 64
    vllm: BackendConfig = field(default_factory=lambda: BackendConfig(backend="vllm", cpu_kv_cache_gib=1))
    server: ServerSection = field(default_factory=ServerSection)  # sampler: server (`workbench serve` reads it too)

    def validate(self):
        if self.kl_coef < 0:
            raise ValueError("kl_coef must be >= 0")
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.sync_every < 1:
            raise ValueError("sync_every must be >= 1")


@dataclass
class GRPOSection:
    reward: VerifierConfig = field(default_factory=VerifierConfig)  # any verifier, as the reward function
    # Prompts straight from a prompt source (reasoning-gym, GSM8K file, JSONL ...) instead of data.path:
    prompts: PromptSourceConfig | None = None
    template: str = "{prompt}"  # the user message, as in `generate rollouts`
    num_generations: int = 4
    max_completion_length: int = 128
    temperature: float = 1.0
    beta: float = 0.0  # TRL's k3 KL penalty (note: its gradient is the forward KL's; see losses/hypo.py)
    loss_type: str = "dapo"
    use_vllm: bool = False
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    max_prompt_length: int | None = 512


@dataclass
class PolicyTrainConfig(RunConfig):
    method: str = ""
    model: str = "smollm2-135m-instruct"
    trust_remote_code: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    chat: bool = True  # prompts from the `prompts` role are user messages for the chat template (GRPO)


@register_job("train", method="dpo")
@dataclass
class DPOTrainConfig(PolicyTrainConfig):
    dpo: DPOSection = field(default_factory=DPOSection)

    def validate(self):
        if not self.data.path:
            raise ValueError("data.path is required: the preference pairs")


@register_job("train", method="hypo")
@dataclass
class HyPOTrainConfig(DPOTrainConfig):
    """DPO's recipe plus the `hypo` section (the online KL term)."""

    hypo: HyPOSection = field(default_factory=HyPOSection)

    def validate(self):
        super().validate()
        if self.hypo.sampler == "server" and self.lora is not None and self.lora.quantization != "none":
            raise ValueError("hypo.sampler: server needs the policy's merged weights, which a quantised base "
                             "(lora.quantization) cannot give; use hypo.sampler: hf")


@register_job("train", method="grpo")
@dataclass
class GRPOTrainConfig(PolicyTrainConfig):
    grpo: GRPOSection = field(default_factory=GRPOSection)

    def validate(self):
        if not self.data.path and self.grpo.prompts is None:
            raise ValueError("GRPO needs prompts: data.path (with prompt and reference columns) or grpo.prompts")


# ----------------------------------------------------------------------------------------------- data


def _read_table(path: str, split: str, where: str):
    import datasets

    p = Path(path)
    if p.is_dir() and (p / "pairs" / "manifest.json").exists():  # a `workbench pairs` run folder
        p = p / "pairs"
    manifest = p / "manifest.json"
    if p.is_dir() and manifest.exists():  # a finished stage output: its shards as the manifest lists them
        from workbench.store.shards import require_complete

        require_complete(p, "pairs")
    if p.is_dir() and manifest.exists() and json.loads(manifest.read_text()).get("num_rows") == 0:
        counts = json.loads(manifest.read_text()).get("counts")
        from workbench.data.pairs import why_no_pairs

        reason = why_no_pairs(counts) if counts else "the stage that wrote it produced none"
        raise DataError(f"{where}: {p} holds zero rows ({reason}); nothing to train on. Sample more prompts or "
                        "samples per prompt, or relax the pairs pruning.")
    if p.is_dir() and list(p.glob("shard-*.parquet")):
        return datasets.load_dataset("parquet", data_files=str(p / "shard-*.parquet"), split="train")
    if p.is_file() and p.suffix in (".jsonl", ".json"):
        from workbench.generation.prompts import _read_jsonl

        _read_jsonl(p)  # a clear file:line error for malformed JSON before datasets' own
        return datasets.load_dataset("json", data_files=str(p), split="train")
    if p.is_file() and p.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(p), split="train")
    if p.exists():
        raise DataError(f"{where}: {p} is neither a pairs run folder, a folder of shard-*.parquet, nor a "
                        ".jsonl/.parquet file")
    try:
        return datasets.load_dataset(path, split=split)
    except Exception as e:
        raise DataError(f"{where}: {path!r} is not a local file/folder and could not be loaded as a `datasets` "
                        f"dataset (split {split!r}): {e}") from None


def load_role_dataset(data: DataConfig, roles: tuple[str, ...], path: str | None = None):
    """Load and rename columns to roles via column_map; fail naming the columns present and the fix."""
    path = path or data.path
    ds = _read_table(path, data.split, "data.path" if path == data.path else "data.eval_path")
    cols = ds.column_names
    rename = {}
    for role in roles:
        col = data.column_map.get(role, role)
        if col not in cols:
            raise DataError(f"{path}: column {col!r} for role '{role}' not found. Available columns: {cols}. "
                            f"Set data.column_map.{role}: <column> in the recipe.")
        if col != role:
            rename[col] = role
    if rename:
        ds = ds.rename_columns(rename)
    if len(ds) == 0:
        raise DataError(f"{path}: no rows")
    if data.limit:
        ds = ds.select(range(min(data.limit, len(ds))))
    return ds


# ----------------------------------------------------------------------------------------------- model


def load_policy(cfg: PolicyTrainConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.models import resolve_model

    path = resolve_model(cfg.model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code,
                              "dtype": torch.bfloat16 if cfg.optim.use_bf16() else torch.float32}
    if cfg.lora is not None and cfg.lora.quantization != "none":
        if not torch.cuda.is_available():
            from workbench.errors import WorkbenchError

            raise WorkbenchError("lora.quantization (QLoRA) needs a CUDA GPU for bitsandbytes; set "
                                 "lora.quantization: none on CPU")
        kwargs["quantization_config"] = cfg.lora.quantization_config()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.lora is not None and cfg.lora.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return path, model, tok


# ----------------------------------------------------------------------------------------------- trainers


def _trl_common(cfg: PolicyTrainConfig, run_dir: Path) -> dict:
    args = cfg.optim.training_args(str(run_dir / "checkpoints"), cfg.seed)
    if not cfg.optim.use_bf16():
        args["use_cpu"] = not __import__("torch").cuda.is_available()
    if fsdp_on_cpu():  # keep the FSDP state: TrainingArguments would otherwise reset it to plain MULTI_CPU (DDP)
        args["accelerator_config"] = {**args.get("accelerator_config", {}), "use_configured_state": True}
    return args


def _dpo_args(cfg, run_dir: Path):
    from trl import DPOConfig

    d = cfg.dpo
    return DPOConfig(**_trl_common(cfg, run_dir), beta=d.beta, loss_type=list(d.loss_type),
                     loss_weights=d.loss_weights, label_smoothing=d.label_smoothing,
                     precompute_ref_log_probs=d.precompute_ref_log_probs, max_length=d.max_length)


def _ref_model(cfg, model_kwargs_from):
    if not cfg.dpo.ref_model:
        return None
    from transformers import AutoModelForCausalLM

    from workbench.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(resolve_model(cfg.dpo.ref_model), dtype=model_kwargs_from.dtype,
                                                trust_remote_code=cfg.trust_remote_code)


def fsdp_on_cpu() -> bool:
    """Turn FSDP on for CPU processes launched with an FSDP accelerate config (recipes/accelerate/fsdp_cpu_2proc.yaml).

    accelerate 1.15 enables FSDP only for accelerator devices: on CPU processes its state says MULTI_CPU and the
    model is silently wrapped in DDP (every rank holds every weight). torch's FSDP2 itself runs on CPU over gloo, so
    the shared accelerate state is switched to FSDP before the trainer builds its Accelerator (which then reuses it).
    Called before the model loads, so ``fsdp_cpu_ram_efficient_loading`` works as on GPUs. Returns whether it did."""
    import os

    import torch

    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or torch.cuda.is_available()
            or int(os.environ.get("WORLD_SIZE", "1")) < 2):
        return False
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if AcceleratorState._shared_state.get("distributed_type") == DistributedType.FSDP:
        return True  # done already (run() and build_trainer both ask)
    AcceleratorState._reset_state(reset_partial_state=True)  # a state made without cpu=True: one process, no gloo
    state = Accelerator(cpu=True).state  # MULTI_CPU over gloo: the shared state every later Accelerator reuses
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    from accelerate import PartialState

    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does
    state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment
    return True


def build_trainer(cfg: PolicyTrainConfig, run_dir: Path):
    """The TRL trainer for the recipe (no training yet). Shared by `run` and the benchmarks."""
    fsdp_on_cpu()
    path, model, tok = load_policy(cfg)
    peft_config = cfg.lora.peft_config() if cfg.lora is not None else None
    if cfg.method in ("dpo", "hypo"):
        train = load_role_dataset(cfg.data, PREF_ROLES)
        evald = load_role_dataset(cfg.data, PREF_ROLES, cfg.data.eval_path) if cfg.data.eval_path else None
        common = dict(model=model, ref_model=_ref_model(cfg, model), args=_dpo_args(cfg, run_dir),
                      train_dataset=train, eval_dataset=evald, processing_class=tok, peft_config=peft_config)
        if cfg.method == "dpo":
            from trl import DPOTrainer

            return DPOTrainer(**common)
        from workbench.training.hypo_trainer import HyPOTrainer

        return HyPOTrainer(**common, kl_coef=cfg.hypo.kl_coef, sampler=make_sampler(cfg, path, tok))
    if cfg.method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        from workbench.training.rewards import verifier_reward

        g = cfg.grpo
        if g.prompts is not None:
            import datasets

            from workbench.generation.prompts import load_prompts

            recs = load_prompts(g.prompts)
            train = datasets.Dataset.from_list([{"prompt": g.template.format(prompt=r.prompt),
                                                 "reference": r.reference} for r in recs])
        else:
            train = load_role_dataset(cfg.data, ("prompt", "reference"))
        if cfg.chat and isinstance(train[0]["prompt"], str):
            train = train.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]})
        extra = {}
        if g.use_vllm:
            from workbench.generation.backends import _on_cpu

            if _on_cpu():
                from workbench.generation.vllm_cpu import keep_cpu_linear_weights

                keep_cpu_linear_weights()
            extra = dict(use_vllm=True, vllm_mode=g.vllm_mode, vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization)
        args = GRPOConfig(**_trl_common(cfg, run_dir), num_generations=g.num_generations,
                          max_completion_length=g.max_completion_length, temperature=g.temperature, beta=g.beta,
                          loss_type=g.loss_type, **extra)
        return GRPOTrainer(model=model, reward_funcs=[verifier_reward(g.reward.build())], args=args,
                           train_dataset=train, processing_class=tok, peft_config=peft_config)
    raise ValueError(f"unknown method {cfg.method}")


def _warn_sync_every(cfg: HyPOTrainConfig) -> None:
    h = cfg.hypo
    if h.sync_every > 1:
        print(f"[train] hypo.sync_every={h.sync_every}: online samples come from weights up to "
              f"{h.sync_every - 1} optimizer steps old, which biases the KL gradient (no importance "
              "correction; see workbench/training/online_samples.py). sync_every: 1 has no such bias.",
              file=sys.stderr)
    if cfg.optim.save_steps % h.sync_every:
        print(f"[train] hypo.sync_every={h.sync_every} does not divide optim.save_steps="
              f"{cfg.optim.save_steps}: a run resumed from a checkpoint redraws its online samples from "
              "fresher weights than the uninterrupted run (see workbench/training/online_samples.py)",
              file=sys.stderr)


def make_sampler(cfg: HyPOTrainConfig, model_path: str, tok):
    from workbench.generation.backends import resolve_auto
    from workbench.training.online_samples import HFSampler, VLLMSampler

    h = cfg.hypo
    if h.sampler == "server":  # quantised bases are refused by HyPOTrainConfig.validate
        from workbench.training.server_sampler import ServerSampler

        _warn_sync_every(cfg)
        s = h.server
        return ServerSampler(s.host, s.port, s.weights_dir, h.k, h.temperature, h.max_new_tokens, h.sync_every,
                             seed=cfg.seed, timeout=s.timeout)
    kind = h.sampler if h.sampler != "auto" else resolve_auto()
    if kind == "vllm":
        if cfg.lora is not None and cfg.lora.quantization != "none":
            kind = "hf"  # vLLM cannot take merged weights from a quantised base; sample with HF instead
        else:
            _warn_sync_every(cfg)
            return VLLMSampler(model_path, h.k, h.temperature, h.max_new_tokens, h.sync_every, h.vllm, seed=cfg.seed)
    return HFSampler(tok, h.k, h.temperature, h.max_new_tokens)


# ----------------------------------------------------------------------------------------------- run


def write_model_card(out: Path, cfg, metrics: dict) -> None:
    from workbench.config import dump_yaml

    card = [f"# {cfg.run_name}", "", f"Trained with contrast-workbench, `method: {cfg.method}`, from `{cfg.model}`.",
            ""]
    if cfg.method == "hypo":
        card += ["HyPO: Song et al. 2024, *The Importance of Online Data: Understanding Preference Fine-tuning via "
                 "Coverage* (arXiv 2406.01462): DPO on offline pairs + lambda * KL(pi || pi_ref) on online samples. "
                 "(Not the offline method of the same name by Yuan et al., ICLR 2026.)", ""]
    card += ["## Final metrics", "", "```json", json.dumps(metrics, indent=2, default=float), "```", "",
             "## Recipe", "", "```yaml", dump_yaml(cfg).rstrip(), "```", ""]
    (out / "README.md").write_text("\n".join(card))


def check_inputs(cfg: PolicyTrainConfig) -> None:
    """Everything a typo can break, checked before the run folder exists: the models, the data and its columns, the
    reward. A corrected rerun is then a fresh run, not one refused as "a different config"."""
    from workbench.models import resolve_model

    resolve_model(cfg.model)
    if cfg.method in ("dpo", "hypo"):
        if cfg.dpo.ref_model:
            resolve_model(cfg.dpo.ref_model)
        load_role_dataset(cfg.data, PREF_ROLES)
        if cfg.data.eval_path:
            load_role_dataset(cfg.data, PREF_ROLES, cfg.data.eval_path)
        if cfg.method == "hypo" and cfg.hypo.sampler == "server" and cfg.hypo.kl_coef > 0:
            from workbench.training.server_sampler import check_server

            # Every rank probes (each its own file): a rank that fails then stops itself, none waits at a barrier.
            check_server(cfg.hypo.server.host, cfg.hypo.server.port, cfg.hypo.server.weights_dir)
    elif cfg.method == "grpo":
        if cfg.grpo.prompts is not None:
            from workbench.generation.prompts import load_prompts

            load_prompts(cfg.grpo.prompts)
        else:
            load_role_dataset(cfg.data, ("prompt", "reference"))
        cfg.grpo.reward.build()


def dump_rank_weights(model, folder: Path, rank: int) -> None:
    """Debug hook: write ``rank{rank}.pt`` with this rank's own part of every parameter (``shard``: its DTensor rows
    under FSDP2, the whole tensor otherwise) and its view of the gathered whole (``full``). A collective under
    sharding: every rank must call it."""
    import torch
    from torch.distributed.tensor import DTensor

    from workbench.training.weight_sync import gathered

    shard = {n: (p.to_local() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.named_parameters()}
    with gathered(model):
        full = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"shard": shard, "full": full, "trainable": trainable}, folder / f"rank{rank}.pt")


def run(cfg: PolicyTrainConfig, overwrite: bool = False) -> dict:
    import os
    import shutil

    from accelerate import PartialState

    from workbench.config import to_dict
    from workbench.store.runs import open_run
    from workbench.training.callbacks import MetricsJsonlCallback, train_loss
    from workbench.training.checkpoints import CompleteCheckpointCallback, restore_counters, resume_point, train

    import torch

    fsdp_on_cpu()
    # cpu=True on a machine without CUDA: a bare PartialState() there is one process (every rank the main one, every
    # barrier a no-op) until the trainer rebuilds it, so both ranks would open the run folder as its owner.
    state = PartialState(cpu=not torch.cuda.is_available())
    check_inputs(cfg)
    run_ = open_run(cfg.run_dir(), to_dict(cfg), overwrite=overwrite, quiet=not state.is_main_process)
    if run_.done:
        return run_.status().get("summary", {})
    trainer = build_trainer(cfg, run_.path)
    trainer.add_callback(MetricsJsonlCallback(run_))
    trainer.add_callback(CompleteCheckpointCallback(run_, trainer))
    resume = resume_point(run_, clean=state.is_main_process)
    state.wait_for_everyone()  # no rank looks at the checkpoints while the main one removes incomplete ones
    if resume and state.is_main_process:
        print(f"[train] resuming from {resume}", file=sys.stderr)
    restore_counters(trainer, resume)
    try:
        result = train(trainer, resume)  # trainer.train, but never past max_steps on a resume
    finally:
        if hasattr(getattr(trainer, "sampler", None), "close"):
            trainer.sampler.close()  # HyPO's vLLM engine: its processes end with training, not at exit
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics["train_loss"] = train_loss(trainer.state)  # transformers' counts only this process's steps
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if logged:
        metrics.update({k: v for k, v in logged[-1].items() if isinstance(v, (int, float))})
    if os.environ.get("WORKBENCH_DEBUG_RANK_WEIGHTS"):  # tests/test_fsdp_cpu.py: what each rank holds at the end
        dump_rank_weights(trainer.model, Path(os.environ["WORKBENCH_DEBUG_RANK_WEIGHTS"]), state.process_index)
    # The model folder appears whole or not at all: written beside it, then renamed (a kill mid-save leaves only the
    # temp folder, which the rerun replaces). The name is fixed, not per-process, because every rank saves into it.
    out, tmp = run_.path / "model", run_.path / ".model.tmp-save"
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(tmp))
    if state.is_main_process:
        trainer.processing_class.save_pretrained(str(tmp))
        write_model_card(tmp, cfg, metrics)
        shutil.rmtree(out, ignore_errors=True)  # a model saved by a run killed before run.json
        os.replace(tmp, out)
        run_.mark_done({"global_step": trainer.state.global_step, **metrics})
        print(f"[train] {cfg.method}: {trainer.state.global_step} steps; model saved to {out}", file=sys.stderr)
    state.wait_for_everyone()
    return metrics
