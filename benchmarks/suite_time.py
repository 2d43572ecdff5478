"""The test suite's wall time on this machine, as CI runs it, with the slowest tests: a budget kept in a record.

    python benchmarks/suite_time.py            # the whole suite, as CI runs it (after setup): empty model cache
    python benchmarks/suite_time.py -- -m "not slow"

Writes ``benchmarks/results/test_suite.json``: wall time, pass/fail/skip counts, the 25 slowest tests and the time by
file. The budget is 20 minutes on the 2-core reference machine; the record says whether the machine was loaded (other
jobs inflate the time, so the budget is judged on a quiet run).

Like CI (``.ci/run``), each run starts from an empty model cache (a fresh ``WORKBENCH_HOME``), so the tiny test models
are built from scratch and a build that differs from the cached one cannot hide. A run on the same code as the
record's keeps the earlier runs in it (``runs``): two runs from two empty caches are two invocations, each a unit of
about 20 minutes that commits its own record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import RESULTS_DIR, ROOT, begin, git_state, write_record  # noqa: E402

BUDGET_S = 20 * 60


def main() -> int:
    extra = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    started = begin()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", *extra]
    home = tempfile.mkdtemp(prefix="workbench-suite-home-")
    load_start = list(os.getloadavg())
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WORKBENCH_HOME": home})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    print(out[-3000:])
    durations = [(float(m.group(1)), m.group(2), m.group(3)) for m in
                 re.finditer(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", out, re.M)]
    per_test: dict[str, float] = defaultdict(float)
    for secs, _, node in durations:
        per_test[node] += secs
    per_file: dict[str, float] = defaultdict(float)
    for node, secs in per_test.items():
        per_file[node.split("::")[0]] += secs
    # the last line of `pytest -q`: "836 passed, 32 warnings in 1193.69s (0:19:53)" (no ==== banner with -q)
    summary = re.search(r"^=*\s*(\d+ (?:passed|failed|error).*) in [\d.]+s", out, re.M)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)",
                                                summary.group(1) if summary else "")}
    slowest = sorted(per_test.items(), key=lambda kv: -kv[1])[:25]
    this_run = {"commit": git_state().get("commit"), "code_sha256": git_state().get("code_sha256"),
                "started": started["started"], "wall_s": wall, "exit_code": proc.returncode, "counts": counts,
                "model_cache": "empty at start (fresh WORKBENCH_HOME)", "pytest_args": extra,
                "load_average": {"start": load_start, "end": list(os.getloadavg())}}
    runs = _earlier_runs() + [this_run]
    write_record("test_suite", {
        "title": "Test suite wall time (benchmarks/suite_time.py)",
        "tables": [
            {"title": "The suite: the recent runs, each from an empty model cache (the last is this record's)",
             "columns": ["commit", "run started", "wall time (min)", "budget (min)", "passed", "failed", "skipped",
                         "load at start (1 min)"],
             "rows": [[(r.get("commit") or "?")[:8], r["started"], r["wall_s"] / 60, BUDGET_S / 60, r["counts"].get("passed", 0),
                       r["counts"].get("failed", 0), r["counts"].get("skipped", 0), r["load_average"]["start"][0]]
                      for r in runs], "formats": ["", "", ".1f", ".0f", "d", "d", "d", ".2f"]},
            {"title": "Time by test file (s)", "columns": ["file", "seconds"],
             "rows": [[f, s] for f, s in sorted(per_file.items(), key=lambda kv: -kv[1])], "formats": ["", ".0f"]},
            {"title": "The 25 slowest tests (s, setup + call + teardown)", "columns": ["test", "seconds"],
             "rows": [[n, s] for n, s in slowest], "formats": ["", ".0f"]},
        ],
        "notes": [f"pytest exit code {proc.returncode}; {'within' if wall <= BUDGET_S else 'OVER'} the 20-minute "
                  "budget (judge it on a quiet machine: see the load average)."],
        "results": {"wall_s": wall, "exit_code": proc.returncode, "counts": counts, "per_file_s": dict(per_file),
                    "slowest": slowest, "pytest_args": extra, "runs": runs}}, started)
    return proc.returncode


def _earlier_runs(keep: int = 5) -> list[dict]:
    """The runs the existing record holds (the last ``keep``), each with the commit and code it measured, so the
    record shows every recent run side by side (two runs from two empty caches, and runs before and after a change)."""
    path = RESULTS_DIR / "test_suite.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    git = old.get("git", {})
    runs = old.get("results", {}).get("runs") or [{
        "started": old.get("started"), "wall_s": old["results"]["wall_s"], "exit_code": old["results"]["exit_code"],
        "counts": old["results"]["counts"], "model_cache": "not recorded", "pytest_args": old["results"]["pytest_args"],
        "load_average": old.get("load_average")}]
    return [{"commit": git.get("commit"), "code_sha256": git.get("code_sha256"), **r} for r in runs][-keep:]


if __name__ == "__main__":
    raise SystemExit(main())
