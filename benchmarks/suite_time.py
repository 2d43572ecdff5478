"""The test suite's wall time on this machine, as CI runs it, with the slowest tests: a budget kept in a record.

    python benchmarks/suite_time.py            # the whole suite, as `make test` runs it (after setup)
    python benchmarks/suite_time.py -- -m "not slow"

Writes ``benchmarks/results/test_suite.json``: wall time, pass/fail/skip counts, the 25 slowest tests and the time by
file. The budget is 20 minutes on the 2-core reference machine; the record says whether the machine was loaded (other
jobs inflate the time, so the budget is judged on a quiet run).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import ROOT, begin, write_record  # noqa: E402

BUDGET_S = 20 * 60


def main() -> int:
    extra = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    started = begin()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
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
    write_record("test_suite", {
        "title": "Test suite wall time (benchmarks/suite_time.py)",
        "tables": [
            {"title": "The suite", "columns": ["wall time (min)", "budget (min)", "passed", "failed", "skipped"],
             "rows": [[wall / 60, BUDGET_S / 60, counts.get("passed", 0), counts.get("failed", 0),
                       counts.get("skipped", 0)]], "formats": [".1f", ".0f", "d", "d", "d"]},
            {"title": "Time by test file (s)", "columns": ["file", "seconds"],
             "rows": [[f, s] for f, s in sorted(per_file.items(), key=lambda kv: -kv[1])], "formats": ["", ".0f"]},
            {"title": "The 25 slowest tests (s, setup + call + teardown)", "columns": ["test", "seconds"],
             "rows": [[n, s] for n, s in slowest], "formats": ["", ".0f"]},
        ],
        "notes": [f"pytest exit code {proc.returncode}; {'within' if wall <= BUDGET_S else 'OVER'} the 20-minute "
                  "budget (judge it on a quiet machine: see the load average)."],
        "results": {"wall_s": wall, "exit_code": proc.returncode, "counts": counts, "per_file_s": dict(per_file),
                    "slowest": slowest, "pytest_args": extra}}, started)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
