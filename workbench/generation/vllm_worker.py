"""The vLLM worker extension that takes a trainer's weights: loaded *inside* vLLM's worker, wherever that runs.

vLLM runs its engine in the caller's process only on request (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the CPU test
default); on a GPU, and on CPU when asked, the engine and its workers live in other processes, so the trainer cannot
reach ``llm.llm_engine.model_executor...model`` (that attribute chain does not even exist there). The public route is
vLLM's own RLHF pattern: name this class as the engine's ``worker_extension_cls``, and vLLM mixes it into every worker;
then ``LLM.collective_rpc("workbench_load_weights", args=(weights,))`` runs the method in each worker, in-process or
not (tensors travel through vLLM's msgpack serialiser when the worker is elsewhere). A ``vllm serve`` started with
``--worker-extension-cls workbench.generation.vllm_worker.WeightSyncExtension`` gets the same methods, reachable
through the dev-mode ``/collective_rpc`` endpoint (see :mod:`workbench.generation.vllm_server`).

On CPU, importing this module applies :func:`workbench.generation.vllm_cpu.keep_cpu_linear_weights` in the worker's
own process: vLLM imports the extension before it loads the model, so Linear layers keep their live weights there
too (without it a pushed weight would land in a tensor the CPU GEMM no longer reads).
"""

from __future__ import annotations

import torch

from workbench.generation.backends.base import _on_cpu

if _on_cpu():
    from workbench.generation.vllm_cpu import keep_cpu_linear_weights

    keep_cpu_linear_weights()

EXTENSION = f"{__name__}.WeightSyncExtension"


class WeightSyncExtension:
    """Methods vLLM adds to its worker class (``self`` is the worker: ``self.model_runner.model`` is the model)."""

    def workbench_load_weights(self, blob: bytes) -> int:
        """Load one bucket of weights, a safetensors blob (``safetensors.torch.save``) in the checkpoint's names,
        through the model's own ``load_weights`` (which maps them onto vLLM's fused layers: q/k/v into qkv_proj,
        gate/up into gate_up_proj). Bytes, not tensors: they cross vLLM's msgpack RPC unchanged when the worker runs in
        another process (a tensor there arrives as a bare list without a type hint). Returns how many tensors."""
        from safetensors.torch import load

        return self._load(list(load(blob).items()))

    def workbench_load_weights_file(self, path: str) -> int:
        """Load every tensor of one safetensors file (the server path: the trainer writes it where the server can
        read it, then names it in a ``/collective_rpc`` call)."""
        from safetensors.torch import load_file

        return self._load(list(load_file(path).items()))

    def _load(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        model = self.model_runner.model
        device = next(model.parameters()).device
        model.load_weights(weights=[(name, t.to(device)) for name, t in weights])
        return len(weights)

    def workbench_weight_checksum(self, names: list[str]) -> list[float]:
        """The float64 sum of each named parameter as vLLM holds it (after fusing: use vLLM's names). For tests and
        the acceptance script: a cheap way to see that a sync reached every worker."""
        params = dict(self.model_runner.model.named_parameters())
        return [float(params[n].detach().double().sum()) for n in names]

    def workbench_read_probe(self, path: str) -> str:
        """The text of a small probe file the trainer wrote (at most 256 bytes of a ``*.workbench-probe`` file): proves,
        before training, that the server reads the trainer's ``weights_dir`` at the same path (a shared filesystem,
        not merely a folder of the same name on each node). Only probe files, so the route reads nothing else."""
        if not path.endswith(".workbench-probe"):
            raise ValueError(f"{path}: not a .workbench-probe file")
        with open(path, encoding="utf-8") as f:
            return f.read(256)
