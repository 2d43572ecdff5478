"""The VerIPO loop: pruning counts by hand; the tiny 2-iteration loop through the real CLI, killed between stages and
resumed without recomputing finished stages; each stage receives the previous stage's output."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, run_cli
from workbench.loop import prune_easy


def test_prune_easy_counts_by_hand():
    pool = [{"id": f"p{i}"} for i in range(10)]
    rows = []
    for i in range(10):  # p0..p4 all passed (easy), p5..p7 mixed, p8..p9 none passed
        for j in range(3):
            rows.append({"prompt_id": f"p{i}", "passed": i < 5 or (i < 8 and j == 0)})
    kept, counts = prune_easy(pool, rows, 0.8, seed=0)
    assert counts == {"prompts_in": 10, "all_passed": 5, "pruned": 4, "kept": 6}
    kept_ids = {p["id"] for p in kept}
    assert {f"p{i}" for i in range(5, 10)} <= kept_ids and len(kept_ids & {f"p{i}" for i in range(5)}) == 1
    assert prune_easy(pool, rows, 0.8, seed=0) == (kept, counts)  # seeded
    assert prune_easy(pool, rows, 0.0, seed=0)[1]["pruned"] == 0
    assert prune_easy(pool, rows, 1.0, seed=0)[1]["pruned"] == 5


def test_tiny_loop_resumes_after_kill_and_threads_the_policy(tmp_path):
    out = tmp_path / "loop"
    args = [sys.executable, "-m", "workbench", "loop", "--config", "recipes/tiny/loop.yaml", f"output_dir={out}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = out / "iter_0" / "verify" / "run.json"
    deadline = time.time() + 400
    while time.time() < deadline and not marker.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the loop should have finished iter_0/verify before the kill"
    finished = {s: (out / "iter_0" / s / "run.json").stat().st_mtime_ns for s in ("grpo", "rollouts", "verify")}

    rerun = run_cli("loop", "--config", "recipes/tiny/loop.yaml", f"output_dir={out}")
    for s in finished:
        assert f"iter 0 {s}: finished earlier, kept" in rerun.stderr
        assert (out / "iter_0" / s / "run.json").stat().st_mtime_ns == finished[s], f"{s} was recomputed"

    summary = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "iteration" in line]
    assert [s["iteration"] for s in summary] == [0, 1]
    for s in summary:
        assert {"heldout_accuracy", "kl_to_initial", "mean_length", "consistency_rate", "repetition_rate",
                "prompts_kept", "prompts_pruned", "pairs", "time/rollouts", "time/preference"} <= set(s)
        assert s["pairs"] > 0 and s["kl_to_initial"] is not None
    for i in range(2):
        lin = json.loads((out / f"iter_{i}" / "lineage.json").read_text())
        assert lin["rollouts"]["policy"] == lin["grpo"]["output"] + "/model"
        assert lin["verify"]["rollouts"] == lin["rollouts"]["output"]
        assert lin["pairs"]["verdicts"] == lin["verify"]["output"]
        assert lin["preference"]["pairs"] == lin["pairs"]["output"]
        assert lin["preference"]["policy"] == lin["grpo"]["output"] + "/model"
        assert lin["eval"]["policy"] == lin["preference"]["output"] + "/model"
    lin1 = json.loads((out / "iter_1" / "lineage.json").read_text())
    assert lin1["grpo"]["policy"] == str(out / "iter_0" / "preference" / "model")
    assert (out / "report.md").exists() and (out / "iterations.png").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "done"
