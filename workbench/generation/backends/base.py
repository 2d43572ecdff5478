"""What every generation backend shares: the sampling and backend settings, the Completion it returns, the protocol,
and the helpers that make backends agree (prompt rendering and tokenisation, seeds). See the package docstring."""

from __future__ import annotations

import importlib.util
import os
import pkgutil
from pathlib import Path
from dataclasses import dataclass, field
from typing import Protocol, Sequence

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
    backend: str = "auto"  # auto | a registered backend (vllm, hf, fake): workbench.generation.backends.NAMES
    dtype: str = "auto"  # auto = bfloat16 on GPU; on CPU float32, or for vLLM bf16 where the CPU has bf16 (cpu_dtype)
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

    def validate(self):
        if self.backend != "auto" and self.backend not in NAMES:
            import difflib

            close = difflib.get_close_matches(self.backend, NAMES, n=1)
            raise ValueError(f"unknown backend {self.backend!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; known: auto, {', '.join(NAMES)}")


@dataclass
class Completion:
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
                 ) -> list[list[Completion]]: ...

    def describe(self) -> dict: ...


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_auto() -> str:
    """What ``backend: auto`` means here: $WORKBENCH_AUTO_BACKEND when set (vllm or hf; the tests pin it, so a vLLM
    test cannot silently run on HF), else vLLM when it is installed, else HF."""
    forced = os.environ.get("WORKBENCH_AUTO_BACKEND", "").strip()
    if forced:
        if forced not in NAMES:
            from workbench.errors import WorkbenchError

            raise WorkbenchError(f"WORKBENCH_AUTO_BACKEND={forced!r} is not a backend; use one of {', '.join(NAMES)}")
        return forced
    return "vllm" if vllm_available() else "hf"


def render_prompts(tokenizer, prompts: Sequence) -> list[str]:
    """Strings pass through; chat messages go through the tokenizer's own chat template."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(p)
        else:
            out.append(tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True))
    return out


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX)? Without it, bf16 matmuls are emulated: measured
    on a 2-core AVX2 EPYC, vLLM-CPU decodes SmolLM2 at 35 tok/s in bf16 and 181 tok/s in float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False  # not Linux: no way to tell here, and float32 is never the slow choice
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def vllm_cpu_dtype(dtype: str) -> str:
    """What ``dtype: auto`` means for vLLM on a CPU: vLLM itself would pick bf16 for a bf16 checkpoint, which is
    five times slower than float32 where the CPU has no bf16 instructions (most laptops: AVX2)."""
    if dtype != "auto":
        return dtype
    return "auto" if cpu_has_fast_bf16() else "float32"


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


# The backends are the modules of this package (the file name is the backend's name), so the recipe schema knows them
# without importing any: vllm.py -> "vllm".
NAMES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                                      if m.name != "base"))
BACKENDS: dict[str, type] = {}


def register_backend(name: str):
    """Class decorator: ``@register_backend("vllm")`` in ``vllm.py`` makes ``backend: vllm`` build the class."""

    def deco(cls):
        if name not in NAMES:
            raise ValueError(f"backend {name!r} must live in a module named {name}.py of workbench.generation.backends")
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco
