"""Shared fixtures. Tiny models are built once per machine (cached under $WORKBENCH_HOME) and once per session here.

vLLM runs in-process on CPU with a 1 GiB KV cache, as the tests need; nothing is downloaded (HF_HUB_OFFLINE).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def vllm_installed() -> bool:
    from workbench.generation.backends import vllm_available

    return vllm_available()


# A test that exercises vLLM carries the `vllm` marker. While it runs, `backend: auto` means vLLM and nothing else
# (WORKBENCH_AUTO_BACKEND=vllm, inherited by the CLI subprocesses it starts), so a broken or missing vLLM fails it
# instead of silently falling back to HF. Every other test runs `auto` on HF: fast, and independent of vLLM.
needs_vllm = pytest.mark.vllm


def pytest_collection_modifyitems(config, items):
    if vllm_installed():
        return
    skip = pytest.mark.skip(reason="vllm is not installed (make test installs it)")
    for item in items:
        if "vllm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _auto_backend(request, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AUTO_BACKEND", "vllm" if request.node.get_closest_marker("vllm") else "hf")


@pytest.fixture(scope="session")
def tiny_llama() -> str:
    from workbench.models import resolve_model

    return resolve_model("tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert() -> str:
    from workbench.models import resolve_model

    return resolve_model("tiny-bert")


def run_cli(*args, cwd=REPO, check=True, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "workbench", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"workbench {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(autouse=True)
def _one_thread(request, monkeypatch):
    """One torch/OpenMP thread for every test but the ``slow`` ones (which load the real default models), in this
    process and in the CLI processes it starts (OMP_NUM_THREADS is inherited). On the toy and tiny models every op is
    far too small to split, and on a shared 2-core machine two OpenMP threads spin against the other jobs: a tiny-llama
    DPO step took 5 s with two threads and 60 ms with one at load 5; the HyPO oracle test went from 114 s to 24 s.
    No test compares against floats saved from another thread count: they compare with oracles or with a second run
    under the same setting."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
