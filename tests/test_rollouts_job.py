"""`workbench generate rollouts` through the real CLI: schema, resume after SIGKILL (hf and vLLM: the same samples as an
uninterrupted run), 2 ranks = 1 rank, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, needs_vllm, run_cli
from killing import assert_same, kill_at, rng, run_to_end, shards_at_least, snapshot, temp_files

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


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    """The tiny recipe on vLLM, uninterrupted: 8 prompts x 2 samples in 3 shards."""
    out = tmp_path_factory.mktemp("vllm") / "run"
    run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={out}",
            "backend.backend=vllm")
    return out


@needs_vllm
def test_tiny_recipe_on_vllm_writes_schema_and_manifest(vllm_run):
    ds = load_rows(vllm_run)
    assert ds.column_names == SCHEMA
    assert len(ds) == 16 and len(set(keys(ds))) == 16
    assert set(ds["backend"]) == {"vllm"} and set(ds["model"]) == {"tiny-llama"}
    assert ds[0]["reference"] == "72" and ds[0]["prompt"].endswith("Give the final answer after ####.")
    manifest = json.loads((vllm_run / "rollouts" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_rows"] == 16 and len(manifest["shards"]) == 3
    for f in ("config.yaml", "env.json", "metrics.jsonl", "run.json"):
        assert (vllm_run / f).exists()
    again = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={vllm_run}",
                    "backend.backend=vllm")
    assert "nothing to redo" in again.stderr


@needs_vllm
@pytest.mark.vllm
def test_resume_after_sigkill_on_vllm_reproduces_the_samples(tmp_path, vllm_run):
    """vLLM gets one seed per prompt, derived from the unit's seed: a killed and resumed job redraws exactly the
    samples of the uninterrupted one (texts, token ids, log-probs), not merely the same keys."""
    args = ["generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={tmp_path / 'run'}",
            "backend.backend=vllm"]
    out = tmp_path / "run" / "rollouts"
    r, seed = rng(5)
    k = r.randint(1, 2)  # of 3 shards
    kill_at(args, shards_at_least(out, k))
    assert not (out / "manifest.json").exists()
    run_to_end(args)
    assert_same(snapshot(out), snapshot(vllm_run / "rollouts"),
                f"vLLM rollouts killed after {k} shards (WORKBENCH_KILL_SEED={seed})")
    assert len({r["completion"] for r in load_rows(tmp_path / "run")}) > 8
    assert temp_files(tmp_path / "run", ".shard-*.tmp-*") == []


def test_resume_after_sigkill_exactly_once(tmp_path):
    """SIGKILL at a random shard, rerun: the rows of an uninterrupted run, each once, with the same completions,
    token ids and log-probs (unit k is sampled with a seed derived from k alone), and finished shards untouched."""
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 8)

    def args(where):
        return ["generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml",
                *jsonl_args(where, prompts, **{"sharding.shard_size": 1, "sampling.max_tokens": 16, "sampling.n": 2})]

    run_to_end(args(tmp_path / "ref"))
    want = snapshot(tmp_path / "ref" / "run" / "rollouts")
    r, seed = rng(3)
    k = r.randint(1, 6)  # kill once k of the 8 shards exist: at least one unit is still to do
    out = tmp_path / "killed" / "run" / "rollouts"
    kill_at(args(tmp_path / "killed"), shards_at_least(out, k))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert k <= len(before) < 8 and not (out / "manifest.json").exists(), f"seed {seed}: the kill landed mid-job"
    run_to_end(args(tmp_path / "killed"))

    assert_same(snapshot(out), want, f"rollouts killed after {k} shards (WORKBENCH_KILL_SEED={seed})")
    ds = load_rows(tmp_path / "killed" / "run")
    assert keys(ds) == sorted((f"p{i}", j) for i in range(8) for j in range(2))  # each row exactly once
    assert len(set(ds["completion"])) > 8, "distinct samples: equal outputs would not be a vacuous match"
    for name, mtime in before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"finished shard {name} was regenerated"
    assert temp_files(tmp_path / "killed" / "run", ".shard-*.tmp-*") == [], "no temp shard left behind"


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
    # Not only the same keys: the same samples. Each prompt draws from a seed derived from its own index, so which
    # rank generated it must not matter (a per-rank seed, or a seed from the shard's position, would fail here).
    def rows(ds):
        return sorted((r["prompt_id"], r["sample_idx"], r["completion"], tuple(r["completion_token_ids"]),
                       r["logprob"]) for r in ds)

    assert rows(one_ds) == rows(two_ds)
    assert len({r[2] for r in rows(one_ds)}) > 7, "distinct samples: equal outputs would make the match vacuous"
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
