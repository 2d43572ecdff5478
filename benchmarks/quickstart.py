"""The quickstart (`make demo`) from an empty folder: wall time, peak memory and every figure of its report.

Recorded in ``benchmarks/results/quickstart.json``.

    python benchmarks/quickstart.py [--out runs/bench-quickstart] [--fresh]

Runs ``python -m workbench quickstart --out OUT`` as a child process, under GNU ``/usr/bin/time -v`` when present.
The quickstart resumes finished stages, so a figure for the whole run needs an empty folder: ``OUT`` must not exist
(``--fresh`` deletes it first).

Memory, two figures, because each quickstart stage runs in its own process:

* ``max_rss_largest_process_kib``: GNU time's "Maximum resident set size" (``ru_maxrss`` from ``wait4``), which on
  Linux is the peak of the *largest single process* of the tree (the quickstart or one of its stages), not a sum;
  without GNU time, ``resource.getrusage(RUSAGE_CHILDREN)`` gives the same quantity;
* ``peak_tree_rss_kib``: the sum of RSS over the whole process tree, sampled every 0.5 s (psutil), so it catches
  a stage that runs helper processes at the same time; a sampler can miss a peak shorter than its period, so this
  is a lower bound on the true tree peak. Shared pages count once per process (RSS), so it can also overcount.

Then reads what the quickstart wrote: ``policy_eval_*/results.json``, ``retrieval_eval_*/results.json``,
``policy_verify/verdicts/manifest.json``, ``policy_pairs/pairs/counts.json``, ``retrieval_lists/calibration.json``,
``timings.json`` and ``report.md`` (kept verbatim in the record).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import ROOT, begin, write_record  # noqa: E402

POLICY = [("base", "policy_eval_base"), ("DPO", "policy_eval_dpo"), ("HyPO", "policy_eval_hypo")]
RETRIEVAL = [("MiniLM (base)", "retrieval_eval_minilm"), ("BM25", "retrieval_eval_bm25"),
             ("MiniLM + ws2", "retrieval_eval_ws2"), ("MiniLM + infonce", "retrieval_eval_infonce")]
# The budgets the README states for `make demo` on the 2-core reference machine.
BUDGET_WALL_S, BUDGET_RSS_GB = 15 * 60, 8.0


class TreeRSS(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, sampled every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.period, self.peak_kib, self.samples = pid, period, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass  # a stage that ended between listing and reading: it no longer holds memory
            self.peak_kib = max(self.peak_kib, total // 1024)
            self.samples += 1
            self.stop.wait(self.period)


def parse_gnu_time(text: str) -> dict:
    """Wall time and max RSS from ``/usr/bin/time -v`` output."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not (wall and rss):
        raise SystemExit(f"could not read wall time / max RSS from GNU time's output:\n{text[-2000:]}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return {"wall_s": seconds, "max_rss_kib": int(rss.group(1))}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    started = begin()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quickstart")
    ap.add_argument("--fresh", action="store_true", help="delete --out first (the quickstart resumes otherwise)")
    ap.add_argument("--results-dir", type=Path, default=None, help="where the record goes (default benchmarks/results)")
    ap.add_argument("--reduced", action="store_true",
                    help="the quickstart's --reduced sizes: a smoke test of this script, not a figure (needs "
                         "--results-dir outside benchmarks/results)")
    args = ap.parse_args()
    if args.reduced and (args.results_dir is None or args.results_dir.resolve() == (ROOT / "benchmarks/results")):
        raise SystemExit("--reduced measures nothing worth recording: pass --results-dir elsewhere")
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not args.fresh:
            raise SystemExit(f"{out} is not empty: the quickstart would resume and the wall time would be partial. "
                             "Pass --fresh to delete it, or another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    cmd = [sys.executable, "-m", "workbench", "quickstart", "--out", str(out), *(["--reduced"] if args.reduced else [])]
    gnu_time = Path("/usr/bin/time")
    time_file = out.parent / f"{out.name}.time.txt"  # beside OUT: the quickstart owns its folder
    if gnu_time.exists():
        cmd = [str(gnu_time), "-v", "-o", str(time_file), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    sampler = TreeRSS(proc.pid)
    sampler.start()
    code = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"quickstart failed (exit {code}); nothing recorded")
    if gnu_time.exists():
        measured = parse_gnu_time(time_file.read_text())
        memory_source = "GNU time -v, Maximum resident set size"
    else:
        measured = {"wall_s": wall, "max_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
        memory_source = "resource.getrusage(RUSAGE_CHILDREN).ru_maxrss"

    policy = {label: read_json(out / name / "results.json") for label, name in POLICY}
    retrieval = {label: read_json(out / name / "results.json") for label, name in RETRIEVAL}
    missing = [k for k, v in {**policy, **retrieval}.items() if v is None]
    if missing:
        raise SystemExit(f"quickstart finished but results are missing for {missing}")
    verify = read_json(out / "policy_verify" / "verdicts" / "manifest.json") or {}
    pairs = read_json(out / "policy_pairs" / "pairs" / "counts.json") or {}
    calibration = read_json(out / "retrieval_lists" / "calibration.json") or {}
    timings = read_json(out / "timings.json") or {}

    policy_rows = []
    for label, r in policy.items():
        m = r["metrics"]
        policy_rows.append([label, m["accuracy"], m.get("pass@2"), m.get("maj@2"), m.get("kl_to_ref"),
                            m.get("kl_to_ref_se"), m["mean_length"], r["counts"]["samples"]])
    retrieval_rows = [[label, r["metrics"]["nDCG@10"], r["metrics"]["Recall@100"], len(r.get("per_query") or {})]
                      for label, r in retrieval.items()]
    rss_gb = measured["max_rss_kib"] * 1024 / 1e9
    tree_gb = sampler.peak_kib * 1024 / 1e9
    st = verify.get("stats", {})
    notes = [
        f"Wall time {measured['wall_s']:.0f} s ({int(measured['wall_s'] // 60)} min {measured['wall_s'] % 60:.0f} s; "
        f"budget {BUDGET_WALL_S // 60} min: {'met' if measured['wall_s'] <= BUDGET_WALL_S else 'NOT met'}). "
        f"Peak RSS of the largest single process in the quickstart's tree ({memory_source}): {rss_gb:.2f} GB "
        f"({measured['max_rss_kib']:,} KiB; budget {BUDGET_RSS_GB:.0f} GB: "
        f"{'met' if rss_gb <= BUDGET_RSS_GB else 'NOT met'}). Peak summed RSS of the whole tree, sampled every 0.5 s: "
        f"{tree_gb:.2f} GB.",
    ]
    if st:
        notes.append(f"Base policy on the training prompts: {st['passed']}/{st['rows']} samples correct by the math "
                     "verifier.")
    if pairs:
        notes.append(f"Pairs: {pairs['pairs']} from {pairs['kept']} of {pairs['prompts']} prompts (pruned "
                     f"{pairs['pruned_all_passed']} all-passed, {pairs['pruned_none_passed']} none-passed).")
    if calibration:
        notes.append(f"Label calibration: quadratic-weighted kappa {calibration.get('kappa_quadratic')}, Spearman "
                     f"{calibration.get('spearman')}; {calibration.get('n_unparseable')} of {calibration.get('n')} "
                     "judge answers unparseable.")
    payload = {
        "title": "Quickstart (`workbench quickstart`, both halves, from an empty folder)"
                 + (" -- REDUCED sizes, a smoke test" if args.reduced else ""),
        "tables": [
            {"title": "Budget", "columns": ["measurement", "value", "budget"],
             "rows": [["wall time (s)", round(measured["wall_s"], 1), BUDGET_WALL_S],
                      ["peak RSS of the largest process (GB)", round(rss_gb, 2), BUDGET_RSS_GB],
                      ["peak summed RSS of the process tree, 0.5 s samples (GB)", round(tree_gb, 2), "-"]]},
            {"title": "Policy half, held-out prompts", "columns": ["policy", "accuracy", "pass@2", "maj@2",
                                                                   "KL to base (nats)", "KL s.e.", "mean length",
                                                                   "samples"],
             "rows": policy_rows, "formats": ["", ".3f", ".3f", ".3f", ".3f", ".3f", ".1f", "d"]},
            {"title": "Retrieval half, SciFact-nano held-out claims", "columns": ["retriever", "nDCG@10",
                                                                                 "Recall@100", "queries"],
             "rows": retrieval_rows, "formats": ["", ".3f", ".3f", "d"]},
            {"title": "Stage seconds (the quickstart's timings.json)", "columns": ["stage", "seconds"],
             "rows": [[k, v] for k, v in timings.items()], "formats": ["", ".1f"]},
        ],
        "notes": notes,
        "results": {
            "out": str(out), "reduced": args.reduced, "wall_s": measured["wall_s"],
            "max_rss_largest_process_kib": measured["max_rss_kib"],
            "memory_source": memory_source, "peak_tree_rss_kib": sampler.peak_kib, "tree_samples": sampler.samples,
            "wall_s_parent_clock": wall, "timings": timings, "verify_stats": st, "pairs": pairs,
            "calibration": {k: calibration.get(k) for k in ("kappa_quadratic", "spearman", "n", "n_unparseable")},
            "policy": {label: {"metrics": r["metrics"], "counts": r["counts"]} for label, r in policy.items()},
            "retrieval": {label: {"metrics": r["metrics"], "queries": len(r.get("per_query") or {})}
                          for label, r in retrieval.items()},
            "report_md": (out / "report.md").read_text(),
        },
    }
    write_record("quickstart", payload, started, args.results_dir)
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
