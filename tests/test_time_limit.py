"""The hard per-call time limit of rule verifiers (workbench/time_limit.py, TimeLimitedVerifier in verdict.py).

The misbehaving verifier (tests/slow_verifier.py) hangs inside a C regex call, sleeps, or kills its process on
request. Each test checks that the sample fails with its reason within the limit plus start-up, that the next sample
is verified normally (a fresh child), and that the limit works where ``signal.alarm`` cannot: in worker threads and
in forked worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from workbench.errors import DataError
from workbench.verifiers import VERIFIERS, get_verifier, register_verifier
from workbench.verifiers.verdict import TIME_LIMIT_REASON, TimeLimitedVerifier

TESTS = Path(__file__).resolve().parent
LIMIT = 1.0
SLACK = 60.0  # start-up of the replacement child (imports) on a loaded 2-core machine; a stall would be 600 s


@pytest.fixture(scope="module")
def misbehaving():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(TESTS))  # the child imports slow_verifier to rebuild the verifier
        from slow_verifier import MisbehavingVerifier

        register_verifier("test_misbehaving")(MisbehavingVerifier)
        verifier = get_verifier("test_misbehaving")
        assert isinstance(verifier, TimeLimitedVerifier) and verifier.seconds == LIMIT
        yield verifier
        VERIFIERS.pop("test_misbehaving", None)  # other tests list the registry


def _timed(verifier, completion, reference="x"):
    t0 = time.monotonic()
    verdict = verifier.verify("", completion, reference)
    return verdict, time.monotonic() - t0


@pytest.mark.parametrize("completion", ["backtrack", "sleep"])
def test_a_hanging_call_fails_its_sample_and_the_next_one_runs(misbehaving, completion):
    first, _ = _timed(misbehaving, "fine")
    assert first.passed
    verdict, took = _timed(misbehaving, completion)
    assert (verdict.passed, verdict.score, verdict.reason) == (False, 0.0, TIME_LIMIT_REASON)
    assert verdict.details["time_limit_s"] == LIMIT
    assert LIMIT <= took < LIMIT + 5, took  # killed at the limit, not after the 600 s the call would take
    after, took = _timed(misbehaving, "fine")
    assert after.passed and took < SLACK
    assert after.details["pid"] != first.details["pid"]  # the hung child was replaced, not reused
    with pytest.raises(ProcessLookupError):  # and killed and reaped, not abandoned (running, or a zombie)
        os.kill(first.details["pid"], 0)


def test_a_crashing_call_fails_its_sample(misbehaving):
    verdict, _ = _timed(misbehaving, "die")
    assert (verdict.passed, verdict.reason) == (False, "verifier process died")
    assert misbehaving.verify("", "fine", "x").passed


def test_large_payloads_and_stray_output_keep_the_protocol(misbehaving):
    big = "x" * (3 << 20)  # 3 MiB each way: far past a pipe's buffer
    assert misbehaving.verify("", big, "x").extracted == big
    verdict = misbehaving.verify("", "print", "x")  # the child printed to stdout, from Python and on descriptor 1
    assert verdict.passed and verdict.extracted == "print"
    assert misbehaving.verify("", "fine", "x").extracted == "fine"


def test_an_interrupted_call_never_answers_the_next_one(misbehaving, monkeypatch):
    """Interrupted between request and answer (Ctrl-C, a test timeout), the child may still answer that request: it
    must be dropped, or the next sample would get the previous sample's verdict."""
    import workbench.time_limit as tl

    real, calls = tl._receive, []

    def interrupted_once(fd, deadline):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(fd, deadline)

    misbehaving.verify("", "fine", "x")  # a child exists
    monkeypatch.setattr(tl, "_receive", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        misbehaving.verify("", "slow-answer", "x")
    monkeypatch.setattr(tl, "_receive", real)
    assert misbehaving.verify("", "fine", "x").extracted == "fine"


def test_children_that_die_on_every_call_raise(misbehaving):
    # Deaths in a row are a broken setup (a crash on import, an ABI mismatch), not hostile samples: training on the
    # resulting zero rewards must stop with a message, not go on silently.
    reasons = [misbehaving.verify("", "die", "x").reason for _ in range(4)]
    assert reasons == ["verifier process died"] * 4
    with pytest.raises(Exception, match="died on 5 calls in a row"):
        misbehaving.verify("", "die", "x")
    assert misbehaving.verify("", "fine", "x").passed


def test_errors_pass_through_unchanged(misbehaving):
    # The verify stage counts bad references by catching DataError: it must arrive as a DataError, not a timeout.
    with pytest.raises(DataError, match="reference 'bad' is not allowed"):
        misbehaving.verify("", "fine", "bad")
    assert misbehaving.verify("", "fine", "x").passed  # the child survived the error


def test_the_limit_works_in_worker_threads(misbehaving):
    # signal.alarm cannot fire outside the main thread: these calls prove the limit does not rely on it.
    completions = ["fine", "backtrack", "fine", "sleep"]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda c: misbehaving.verify("", c, "x"), completions))
    assert [v.reason for v in verdicts] == ["correct", TIME_LIMIT_REASON, "correct", TIME_LIMIT_REASON]
    assert time.monotonic() - t0 < LIMIT + SLACK  # in parallel: one child per thread
    pids = {v.details["pid"] for v in verdicts if v.passed}
    assert len(pids) == 2 and os.getpid() not in pids


_INHERITED = {}


def _verify_in_forked_worker(queue):
    verifier = _INHERITED["verifier"]  # the parent's object itself, child process included: not a pickled copy
    for completion in ("sleep", "fine"):
        v = verifier.verify("", completion, "x")
        queue.put((v.reason, v.details.get("pid")))


def test_the_limit_works_in_forked_worker_processes(misbehaving):
    parent_child = misbehaving.verify("", "fine", "x").details["pid"]
    _INHERITED["verifier"] = misbehaving
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_verify_in_forked_worker, args=(queue,))
    worker.start()
    (hung, _), (fine, worker_child) = queue.get(timeout=120), queue.get(timeout=120)
    worker.join(60)
    assert (hung, fine) == (TIME_LIMIT_REASON, "correct")
    assert worker_child != parent_child  # the worker started its own child instead of writing to the parent's
    assert misbehaving.verify("", "fine", "x").details["pid"] == parent_child  # the parent's child is intact
    assert worker.exitcode == 0


def test_a_pickled_verifier_starts_its_own_child(misbehaving):
    import pickle

    misbehaving.verify("", "fine", "x")
    copy = pickle.loads(pickle.dumps(misbehaving))
    assert copy.verify("", "sleep", "x").reason == TIME_LIMIT_REASON
    assert copy.verify("", "fine", "x").passed


def test_the_verify_stage_records_the_reason_and_goes_on(misbehaving):
    from workbench.verifiers.job import score_rows

    rows = [{"prompt": "", "completion": c, "reference": "x"} for c in ("fine", "backtrack", "fine")]
    out, _ = score_rows(misbehaving, rows)
    assert [r["passed"] for r in out] == [True, False, True]
    assert TIME_LIMIT_REASON in out[1]["details"]


def test_time_limit_none_runs_in_process_and_options_fail_in_the_caller():
    from workbench.verifiers.math import MathVerifier

    assert type(get_verifier("math", time_limit=None)) is MathVerifier
    with pytest.raises(Exception, match="time limit must be > 0"):
        get_verifier("math", time_limit=0)
    with pytest.raises(Exception, match="pass_threshold"):  # bad options fail here, not in a child
        get_verifier("reasoning_gym", task="products", pass_threshold=2.0)
