"""The reduced quickstart end to end on the real default models (SmolLM2, MiniLM): every stage's outputs and the
report exist and hold numbers -- after the first run was SIGKILLed at a random moment and rerun, whose outputs must
be those of an uninterrupted run."""

import json
import math
import re
import subprocess
import time

import pytest
from killing import kill_at, rng
from test_kill_anywhere_training import assert_same_outputs, folder_outputs

from conftest import REPO, needs_vllm, run_cli
from workbench.quickstart import STEPS, stage_command


def _done(folder) -> bool:
    p = folder / "run.json"
    return p.exists() and json.loads(p.read_text()).get("status") == "done"


def stage_progressed(out, k: int, stage):
    """A predicate for kill_at: ``stage``'s folder holds ``k`` entries (config.yaml, env.json, metrics.jsonl, then
    its shards or checkpoint files), or a later stage has started (a stage with fewer files: kill at the next)."""
    later = [out / s.name for s in STEPS[STEPS.index(stage) + 1:]]

    def when() -> bool:
        folder = out / stage.name
        return (folder.is_dir() and sum(1 for _ in folder.rglob("*")) >= k) or any(p.is_dir() for p in later)

    when.__doc__ = f"{stage.name} holds {k} entries"
    return when


@pytest.mark.slow
@pytest.mark.timeout(3600)  # one quickstart (killed, then finished), the check that reruns nothing, one stage again
@needs_vllm
def test_reduced_quickstart_end_to_end(tmp_path):
    out, ref = tmp_path / "quickstart", tmp_path / "uninterrupted"
    # Killed at a random moment: in a random stage, once its folder holds k entries (the stage starting, its first
    # rows or shards, a checkpoint's files); then rerun to the end. The default seed kills MiniLM's infonce training
    # while it writes checkpoint-2 (its folder's 24th entry; checkpoint-1 is complete at 23): the rerun resumes.
    r, seed = rng(199)
    stage, k = r.choice(STEPS), r.randint(1, 24)
    killed = kill_at(["quickstart", "--reduced", "--out", out], stage_progressed(out, k, stage), timeout_s=1500)
    interrupted = next(s for s in STEPS if not _done(out / s.name))
    t0 = time.perf_counter()
    proc = run_cli("quickstart", "--reduced", "--out", out, timeout=1500)
    assert "quickstart [16/16]" in proc.stderr
    for s in STEPS:
        status = json.loads((out / s.name / "run.json").read_text())
        assert status["status"] == "done", s.name
    for name in ("policy_eval_base", "policy_eval_dpo", "policy_eval_hypo"):
        m = json.loads((out / name / "results.json").read_text())["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["mean_length"] > 0 and math.isfinite(m["kl_to_ref"])
    for name in ("retrieval_eval_minilm", "retrieval_eval_bm25", "retrieval_eval_ws2", "retrieval_eval_infonce"):
        m = json.loads((out / name / "results.json").read_text())["metrics"]
        assert 0 < m["nDCG@10"] <= 1 and 0 < m["Recall@100"] <= 1
    assert (out / "retrieval_lists" / "calibration.json").exists()
    report = (out / "report.md").read_text()
    for heading in ("## Policy half", "## Retrieval half", "## Stage timings"):
        assert heading in report
    assert re.search(r"\| DPO \| \d\.\d{3} \|", report) and re.search(r"\| MiniLM \+ ws2 \| \d\.\d{3} \|", report)
    for png in ("policy.png", "retrieval.png"):
        assert (out / png).stat().st_size > 1000
    again = run_cli("quickstart", "--reduced", "--out", out)
    assert again.stderr.count("done earlier, kept") == len(STEPS)

    # Identical to an uninterrupted run. Every stage is its own process with its inputs on disk, so the killed run
    # differs from an uninterrupted one only if the interrupted stage's resumed outputs do (the stages before it
    # finished untouched, those after it ran uninterrupted on its outputs). Its uninterrupted twin: the same stage
    # command, alone, in a folder whose other stages are links to this run's -- one stage's cost, not a second
    # quickstart's.
    ref.mkdir()
    for s in STEPS:
        if s != interrupted:
            (ref / s.name).symlink_to(out / s.name)
    twin = subprocess.run(stage_command(interrupted, ref, reduced=True), cwd=REPO, capture_output=True, text=True)
    assert twin.returncode == 0, twin.stderr[-4000:]
    roots = {str(out): "<out>", str(ref): "<out>"}
    where = f"seed {seed}: killed when {killed.moment}, interrupting {interrupted.name}"
    assert_same_outputs(folder_outputs(out / interrupted.name, roots),
                        folder_outputs(ref / interrupted.name, roots), where)
    print(f"[quickstart] {where}; rerun + comparison {time.perf_counter() - t0:.0f}s")
