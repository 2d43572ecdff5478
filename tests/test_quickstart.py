"""The reduced quickstart end to end on the real default models (SmolLM2, MiniLM): every stage's outputs and the
report exist and hold numbers."""

import json
import math
import re

import pytest

from conftest import needs_vllm, run_cli
from workbench.quickstart import STEPS


@pytest.mark.slow
@pytest.mark.timeout(2700)
@needs_vllm
def test_reduced_quickstart_end_to_end(tmp_path):
    proc = run_cli("quickstart", "--reduced", "--out", tmp_path, timeout=1500)
    assert "quickstart [16/16]" in proc.stderr
    for stage in STEPS:
        status = json.loads((tmp_path / stage.name / "run.json").read_text())
        assert status["status"] == "done", stage.name
    for name in ("policy_eval_base", "policy_eval_dpo", "policy_eval_hypo"):
        m = json.loads((tmp_path / name / "results.json").read_text())["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["mean_length"] > 0 and math.isfinite(m["kl_to_ref"])
    for name in ("retrieval_eval_minilm", "retrieval_eval_bm25", "retrieval_eval_ws2", "retrieval_eval_infonce"):
        m = json.loads((tmp_path / name / "results.json").read_text())["metrics"]
        assert 0 < m["nDCG@10"] <= 1 and 0 < m["Recall@100"] <= 1
    assert (tmp_path / "retrieval_lists" / "calibration.json").exists()
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Policy half", "## Retrieval half", "## Stage timings"):
        assert heading in report
    assert re.search(r"\| DPO \| \d\.\d{3} \|", report) and re.search(r"\| MiniLM \+ ws2 \| \d\.\d{3} \|", report)
    for png in ("policy.png", "retrieval.png"):
        assert (tmp_path / png).stat().st_size > 1000
    again = run_cli("quickstart", "--reduced", "--out", tmp_path)
    assert again.stderr.count("done earlier, kept") == len(STEPS)
