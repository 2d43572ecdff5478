"""A hard wall-clock limit per call, that works in threads and worker processes: the call runs in a child process.

Why a child process and not ``signal.alarm``: an alarm fires only in the main thread (and there is one per process,
which pytest-timeout already takes), and its handler runs only when the interpreter gets control back, which a long C
call such as a sympy big-integer power does not give. TRL's reward functions and a stage's worker threads live where
an alarm cannot fire. Killing a process always works.

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
import selectors
import signal
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
_MAX_DEATHS = 5  # children dying on this many calls in a row is a broken setup, not hostile samples: raise


class ChildStartError(WorkbenchError, RuntimeError):
    """The child process could not build its object (the message says why)."""


def _send(fh, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fh.write(_HEADER.pack(len(data)) + data)
    fh.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``; None when the deadline passes or the other side closes first.

    A selector (epoll), not ``select.select``, which refuses descriptors above 1023 (a training process with data
    loader workers and a vLLM engine has that many)."""
    chunks, left = [], n
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not sel.select(wait):
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
        # The child imports this package from where the parent did: the folder holding it goes first on its path,
        # unless it is already there (an installed package: site-packages keeps its place after the standard library).
        # "-P" keeps the working directory off the path, so a checkout there cannot run other code than the parent's;
        # the interpreter's own flags (-I, -s, -X ...) are passed on.
        root = str(Path(__file__).resolve().parents[1])
        boot = ("import sys; r = sys.argv[1]; r in sys.path or sys.path.insert(0, r); "
                "from workbench.time_limit import _serve; _serve()")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WORKBENCH_TIME_LIMIT_PARENT": str(os.getpid())}
        self.pid = os.getpid()
        self.proc = subprocess.Popen([sys.executable, *subprocess._args_from_interpreter_flags(), "-P", "-c", boot,
                                      root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            _send(self.proc.stdin, spec)
            answer, problem = _receive(self.proc.stdout.fileno(), time.monotonic() + _STARTUP_S)
        except BaseException:
            self.close()
            raise
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
        self.proc.wait()  # SIGKILL cannot be caught: this returns at once, and leaves no zombie
        for fh in (self.proc.stdin, self.proc.stdout):
            try:
                fh.close()
            except OSError:  # the pipe to a killed child may already be broken
                pass


_CHILDREN: set[_Child] = set()
_CHILDREN_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked worker owns none of its parent's children: it forgets them (closing its copies of their pipes, so a
    parent's child still sees its pipe close when the parent goes) and gets a fresh lock (the parent's may have been
    held by another thread at the fork)."""
    global _CHILDREN_LOCK
    _CHILDREN_LOCK = threading.Lock()
    for child in _CHILDREN:
        for fh in (child.proc.stdin, child.proc.stdout):
            try:
                fh.close()
            except OSError:
                pass
    _CHILDREN.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


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

    def _drop_child(self) -> None:
        child, self._local.child = self._local.child, None
        with _CHILDREN_LOCK:
            _CHILDREN.discard(child)
        child.close()

    def call(self, *args):
        child = self._child()
        try:
            answer, problem = child.call(args, self.seconds)
        except BaseException:
            # Interrupted between the request and its answer (KeyboardInterrupt, a test timeout, an answer that does
            # not unpickle): the child may still answer this request, so it must never serve the next one.
            self._drop_child()
            raise
        if problem is not None:
            self._drop_child()
            deaths = self._local.deaths = getattr(self._local, "deaths", 0) + (problem == "died")
            if deaths >= _MAX_DEATHS:
                self._local.deaths = 0
                raise WorkbenchError(f"{self.spec[0]}.{self.spec[1]}: its worker process died on {deaths} calls in a "
                                     "row; that is a broken setup, not hostile input (run the call in-process to see "
                                     "the crash)")
            return None, problem
        self._local.deaths = 0
        status, value = answer
        if status == "error":
            raise value
        return value, None

    def __getstate__(self):  # a pickled copy (a spawned worker) starts its own children
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def _die_with_parent() -> None:
    """SIGKILL this child when the thread that started it exits (Linux), so a child busy in a runaway call does not
    outlive an interrupted parent; and exit at once if the parent is already gone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the child between calls
        pass
    if str(os.getppid()) != os.environ.get("WORKBENCH_TIME_LIMIT_PARENT", str(os.getppid())):
        os._exit(0)


def _serve() -> None:
    """The child: build the object, then answer one call at a time until the parent closes stdin."""
    _die_with_parent()
    # The protocol gets its own copy of stdout; descriptor 1 becomes stderr, so whatever a library prints, from Python
    # or from C, cannot corrupt it.
    stdin, stdout = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
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
                pickle.loads(pickle.dumps(e))
            except Exception:  # noqa: BLE001 - an exception that does not round-trip arrives as its text
                e = WorkbenchError(f"{type(e).__name__}: {e}")
            answer = ("error", e)
        _send(stdout, answer)

