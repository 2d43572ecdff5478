"""A hard wall-clock limit per call, that works in threads and worker processes: the call runs in a child process.

Why a child process and not ``signal.alarm``: an alarm fires only in the main thread, and it cannot interrupt a long
C call (a regular expression, a sympy big-integer power). TRL's reward functions, a stage's worker threads and
pytest-timeout all live where an alarm either does not fire or is already taken. Killing a process always works.

So :class:`LimitedCalls` keeps one child per (process, thread) that builds an object once (``factory(**kwargs)``,
named by module and attribute so the child can import it) and then answers calls ``obj(*args)``. The parent waits
at most ``seconds`` for each answer; on a timeout it SIGKILLs the child, reports ``"timeout"``, and the next call
starts a fresh child. Used by :class:`workbench.verifiers.verdict.TimeLimitedVerifier`, where one hostile sample may
then cost a job ``seconds``, never a stall.

Protocol (parent -> child on stdin, child -> parent on stdout): length-prefixed pickles. First ``(module, factory,
kwargs)``, answered ``("ready", None)`` or ``("failed", why)``; then each request is an argument tuple, answered
``("ok", result)`` or ``("error", exception)``, the exception re-raised in the parent as the in-process call would
raise it. Only the parent's own objects are pickled (strings in, a result dataclass out) and the child runs our own
code: nothing a model wrote is ever unpickled or evaluated.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

__all__ = ["LimitedCalls", "ChildStartError"]

_STARTUP_S = 300.0  # importing sympy/math-verify/reasoning-gym in a fresh child, on a loaded 2-core machine
_HEADER = struct.Struct("<Q")


class ChildStartError(WorkbenchError, RuntimeError):
    """The child process could not build its object (the message says why)."""


def _send(fh, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)) + data)
    fh.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``; None when the deadline passes or the other side closes first."""
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return None
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None):
    """``(message, None)``, or ``(None, "timeout" | "died")``."""
    header = _read_exact(fd, _HEADER.size, deadline)
    body = None if header is None else _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    if body is None:
        return None, "timeout" if deadline is not None and time.monotonic() >= deadline else "died"
    return pickle.loads(body), None


class _Child:
    """One worker process, owned by one thread of one process."""

    def __init__(self, spec: tuple[str, str, dict]):
        # The child finds this package where the parent found it, installed or not.
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               "OMP_NUM_THREADS": "1"}
        self.pid = os.getpid()
        self.proc = subprocess.Popen([sys.executable, "-m", "workbench.time_limit"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        try:
            _send(self.proc.stdin, spec)
        except OSError:
            pass  # it died at once: reported below
        answer, problem = _receive(self.proc.stdout.fileno(), time.monotonic() + _STARTUP_S)
        if problem or answer[0] != "ready":
            self.close()
            why = answer[1] if answer else ("no answer in %.0f s" % _STARTUP_S if problem == "timeout" else "it exited")
            raise ChildStartError(f"{spec[0]}.{spec[1]}: its worker process failed to start: {why}")

    def call(self, args: tuple, seconds: float):
        try:
            _send(self.proc.stdin, args)
        except OSError:  # the child is gone (killed from outside, or crashed after its last answer)
            return None, "died"
        return _receive(self.proc.stdout.fileno(), time.monotonic() + seconds)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for fh in (self.proc.stdin, self.proc.stdout):
            try:
                fh.close()
            except OSError:  # the pipe to a killed child may already be broken
                pass


_CHILDREN: set[_Child] = set()
_CHILDREN_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _CHILDREN_LOCK:
        mine = [c for c in _CHILDREN if c.pid == os.getpid()]
        _CHILDREN.clear()
    for child in mine:
        child.close()


class LimitedCalls:
    """Calls of ``module.factory(**kwargs)`` (built once per child), each limited to ``seconds`` of wall time.

    :meth:`call` returns ``(result, None)``, or ``(None, "timeout")`` / ``(None, "died")`` when the child ran out of
    time or crashed (it is then replaced). An exception raised by the call is raised here.
    """

    def __init__(self, module: str, factory: str, kwargs: dict[str, Any], seconds: float):
        if not seconds > 0:
            raise WorkbenchError(f"{module}.{factory}: a time limit must be > 0 seconds, got {seconds}")
        self.spec = (module, factory, dict(kwargs))
        self.seconds = float(seconds)
        self._local = threading.local()

    def _child(self) -> _Child:
        child = getattr(self._local, "child", None)
        if child is None or child.pid != os.getpid():  # none yet, or inherited through fork: not ours to use
            child = self._local.child = _Child(self.spec)
            with _CHILDREN_LOCK:
                _CHILDREN.add(child)
        return child

    def call(self, *args):
        answer, problem = self._child().call(args, self.seconds)
        if problem is not None:
            child, self._local.child = self._local.child, None
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
            child.close()
            return None, problem
        status, value = answer
        if status == "error":
            raise value
        return value, None

    def __getstate__(self):  # a pickled copy (a spawned worker) starts its own children
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def _serve() -> None:
    """The child: build the object, then answer one call at a time until the parent closes stdin."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print from a library must not corrupt the protocol
    module, factory, kwargs = _receive(stdin.fileno(), None)[0]
    try:
        obj = getattr(importlib.import_module(module), factory)(**kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as one line
        _send(stdout, ("failed", f"{type(e).__name__}: {e}"))
        return
    _send(stdout, ("ready", None))
    while True:
        args, problem = _receive(stdin.fileno(), None)
        if problem:
            return  # the parent closed the pipe or died
        try:
            answer = ("ok", obj(*args))
        except Exception as e:  # noqa: BLE001 - re-raised in the parent, as the in-process call would raise it
            try:
                pickle.dumps(e)
            except Exception:  # noqa: BLE001 - an exception that does not pickle arrives as its text
                e = WorkbenchError(f"{type(e).__name__}: {e}")
            answer = ("error", e)
        _send(stdout, answer)


if __name__ == "__main__":
    _serve()
