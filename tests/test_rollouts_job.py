"""`workbench generate rollouts` through the real CLI: schema, resume after SIGKILL, 2 ranks = 1 rank, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path



from conftest import REPO, needs_vllm, run_cli

SCHEMA = ["prompt_id", "prompt", "sample_idx", "completion", "prompt_token_ids", "completion_token_ids", "reference",
          "finish_reason", "num_tokens", "logprob",
          "model", "backend"]


def load_rows(run_dir: Path):
    import datasets

    return datasets.load_dataset("parquet", data_files=str(run_dir / "rollouts" / "shard-*.parquet"), split="train")


def keys(ds):
    return sorted((r["prompt_id"], r["sample_idx"]) for r in ds)


def write_prompts(path: Path, n: int):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "text": f"What is {i} plus {i}?", "gold": str(2 * i)}) + "\n")


def jsonl_args(tmp_path, prompts: Path, **extra):
    over = {"output_dir": tmp_path / "run", "prompts.kind": "jsonl", "prompts.path": prompts,
            "prompts.column_map": "{prompt: text, id: id, reference: gold}", "backend.backend": "hf", **extra}
    return [f"{k}={v}" for k, v in over.items()]


@needs_vllm
def test_tiny_recipe_on_vllm_writes_schema_and_manifest(tmp_path):
    run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={tmp_path / 'run'}",
            "backend.backend=vllm")
    ds = load_rows(tmp_path / "run")
    assert ds.column_names == SCHEMA
    assert len(ds) == 16 and len(set(keys(ds))) == 16
    assert set(ds["backend"]) == {"vllm"} and set(ds["model"]) == {"tiny-llama"}
    assert ds[0]["reference"] == "72" and ds[0]["prompt"].endswith("Give the final answer after ####.")
    manifest = json.loads((tmp_path / "run" / "rollouts" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 16 and len(manifest["shards"]) == 3
    for f in ("config.yaml", "env.json", "metrics.jsonl", "run.json"):
        assert (tmp_path / "run" / f).exists()
    again = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={tmp_path / 'run'}",
                    "backend.backend=vllm")
    assert "nothing to redo" in again.stderr


def test_resume_after_sigkill_exactly_once(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 24)
    args = ["generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml",
            *jsonl_args(tmp_path, prompts, **{"sharding.shard_size": 1, "sampling.max_tokens": 48, "sampling.n": 2,
                                              "backend.batch_size": 1})]
    out = tmp_path / "run" / "rollouts"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("shard-*.parquet"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert 3 <= len(before) < 24, "the kill should land mid-job"
    assert not (out / "manifest.json").exists()
    run_cli(*args)
    ds = load_rows(tmp_path / "run")
    assert len(ds) == 48 and len(set(keys(ds))) == 48
    assert keys(ds) == sorted((f"p{i}", j) for i in range(24) for j in range(2))
    for name, mtime in before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"finished shard {name} was regenerated"
    assert not list(out.glob(".shard-*")), "no temp files left behind"


def test_two_ranks_equal_one_rank(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 7)
    base = ["generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml"]
    run_cli(*base, *jsonl_args(tmp_path / "one", prompts, **{"sharding.shard_size": 2}))
    two = jsonl_args(tmp_path / "two", prompts, **{"sharding.shard_size": 2})
    procs = [subprocess.Popen([sys.executable, "-m", "workbench", *base, *two],
                              cwd=REPO, env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    merged = run_cli("generate", "merge", "--config", "recipes/tiny/rollouts.yaml", *two)
    assert merged.returncode == 0
    one_ds, two_ds = load_rows(tmp_path / "one" / "run"), load_rows(tmp_path / "two" / "run")
    assert keys(one_ds) == keys(two_ds) and len(keys(two_ds)) == 14
    assert (tmp_path / "two" / "run" / "rollouts" / "manifest.json").exists()


def test_merge_refuses_incomplete(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 4)
    args = jsonl_args(tmp_path, prompts, **{"sharding.shard_size": 1})
    run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", "--rank", "0", "--world-size", "2", *args)
    proc = run_cli("generate", "merge", "--config", "recipes/tiny/rollouts.yaml", *args, check=False)
    assert proc.returncode == 2 and "shards are missing" in proc.stderr


def test_malformed_jsonl_names_file_and_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "ok", "id": 1}\n{"text": "broken", \n')
    proc = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml",
                   *jsonl_args(tmp_path, prompts), check=False)
    assert proc.returncode == 2 and f"{prompts}:2: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_column_lists_available_and_column_map(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"question": "hi", "id": 1}\n')
    proc = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={tmp_path / 'r'}",
                   "prompts.kind=jsonl", f"prompts.path={prompts}", "backend.backend=hf", check=False)
    assert proc.returncode == 2
    assert "column 'prompt' for role 'prompt' not found" in proc.stderr
    assert "['id', 'question']" in proc.stderr and "column_map.prompt" in proc.stderr


def test_empty_and_too_long_prompts_are_counted(tmp_path):
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": "a", "text": "What is 1 plus 1?", "gold": "2"}, {"id": "b", "text": "   ", "gold": "0"},
            {"id": "c", "text": "word " * 600, "gold": "0"}, {"id": "d", "text": "What is 2 plus 2?", "gold": "4"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", *jsonl_args(tmp_path, prompts))
    assert "skipped 1 empty prompt(s) and 1 prompt(s) longer than max_model_len" in proc.stderr
    manifest = json.loads((tmp_path / "run" / "rollouts" / "manifest.json").read_text())
    assert manifest["skipped"]["empty"] == 1 and manifest["skipped"]["too_long"] == 1
    assert sorted({r["prompt_id"] for r in load_rows(tmp_path / "run")}) == ["a", "d"]


def test_duplicate_ids_rejected(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "x", "id": 1, "gold": "1"}\n{"text": "y", "id": 1, "gold": "2"}\n')
    proc = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml",
                   *jsonl_args(tmp_path, prompts), check=False)
    assert proc.returncode == 2 and "duplicate prompt id '1'" in proc.stderr


def test_gsm8k_record_without_marker(tmp_path):
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    proc = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={tmp_path / 'r'}",
                   f"prompts.path={bad}", check=False)
    assert proc.returncode == 2 and f"{bad}:1: field 'answer' has no '#### final' marker" in proc.stderr
