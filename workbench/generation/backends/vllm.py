"""The ``vllm`` backend: ``vllm.LLM``, imported lazily. On CPU it runs the in-process engine with ``enforce_eager``
and a KV cache sized from the config; on GPUs ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``
and ``dtype`` pass straight through."""

from __future__ import annotations

import os
from typing import Sequence

from workbench.generation.backends.base import (BackendConfig, Completion, SamplingConfig, _on_cpu, derive_seed,
                                                register_backend, render_prompts, tokenize_prompts, vllm_cpu_dtype)


@register_backend("vllm")
class VLLMBackend:

    def __init__(self, model_path: str, cfg: BackendConfig, seed: int = 0, model_name: str | None = None,
                 weight_sync: bool = False):
        """``weight_sync``: mix :class:`workbench.generation.vllm_worker.WeightSyncExtension` into vLLM's workers, so
        that a trainer can push weights with ``llm.collective_rpc`` whether the engine runs in this process or not."""
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
        dtype = vllm_cpu_dtype(cfg.dtype) if cpu else cfg.dtype  # float32 on CPUs without bf16 instructions
        kwargs = dict(model=model_path, seed=seed, enforce_eager=cfg.enforce_eager or cpu,
                      trust_remote_code=cfg.trust_remote_code, dtype=dtype, generation_config="vllm")
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if weight_sync:
            from workbench.generation.vllm_worker import EXTENSION

            kwargs["worker_extension_cls"] = EXTENSION
        if not cpu:
            kwargs.update(tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization)
        if cpu:
            # Per-request seeds (see generate) crash vLLM-CPU under chunked prefill: a prefill chunk's discarded sample
            # rewinds its request's generator offset, which a CPU torch.Generator does not have ("CPU Generator does
            # not use offset"). Without chunking no sample is discarded; the token budget must then hold a whole
            # prompt, so it is at least the longest sequence.
            from transformers import AutoConfig

            longest = cfg.max_model_len or int(getattr(AutoConfig.from_pretrained(
                model_path, trust_remote_code=cfg.trust_remote_code), "max_position_embeddings", 4096))
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(4096, longest))
            from workbench.generation.vllm_cpu import hide_unscannable_modules

            with hide_unscannable_modules():
                self.llm = LLM(**kwargs)
        else:
            self.llm = LLM(**kwargs)
        self.model_name = model_name or model_path
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.seed, self._calls = seed, 0

    def close(self) -> None:
        """Stop the engine now (with the engine out of process: its processes exit), not whenever GC runs."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

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

    def generate(self, prompts: Sequence, sampling: SamplingConfig, seed: int | None = None) -> list[list[Completion]]:
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
                    samples.append(Completion(c.text, list(c.token_ids), "length" if c.finish_reason == "length" else
                                          "stop", float(lp), list(ids)))
            result.append(samples)
        return result
