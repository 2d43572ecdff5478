"""Bad input fails before the run folder exists, in one line naming file and line; empty outputs say why.

- A stage validates its config, model and inputs before it creates the run folder, so the corrected rerun is a fresh
  run (not refused as "a different config").
- Non-UTF-8 input (JSONL, qrels, recipe) is one line naming the file and the line.
- A pairs run whose prompts are all pruned writes a typed, empty shard, says why, and the DPO stage on it stops with
  that reason (one line, exit 2).
"""

import json

import pyarrow.parquet as pq

from conftest import run_cli
from test_verify_pairs_cli import make_rollouts, rollout


def _prompts(path, n=3):
    path.write_text("".join(json.dumps({"id": f"p{i}", "text": f"What is {i}?", "gold": str(i)}) + "\n"
                            for i in range(n)))
    return path


def test_a_mistyped_input_leaves_no_run_folder_and_the_fix_just_runs(tmp_path):
    good = _prompts(tmp_path / "p.jsonl")
    out = tmp_path / "run"
    common = ["generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={out}",
              "prompts.kind=jsonl", "prompts.column_map={prompt: text, id: id, reference: gold}",
              "backend.backend=hf", "sampling.max_tokens=4"]
    proc = run_cli(*common, f"prompts.path={tmp_path / 'typo.jsonl'}", check=False)
    assert proc.returncode == 2 and "typo.jsonl: prompt file not found" in proc.stderr
    assert not out.exists(), "validation must come before the run folder"
    proc = run_cli(*common, f"prompts.path={good}", "model=no-such-model", check=False)
    assert proc.returncode == 2 and "no-such-model" in proc.stderr and not out.exists()
    run_cli(*common, f"prompts.path={good}")
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_an_unfinished_run_that_produced_nothing_is_replaced_not_refused(tmp_path):
    from workbench.store.runs import RunError, open_run

    open_run(tmp_path / "r", {"a": 1}, quiet=True)  # created, then (say) the stage failed: nothing produced
    run = open_run(tmp_path / "r", {"a": 2}, quiet=True)
    assert not run.resumed and "a: 2" in (tmp_path / "r" / "config.yaml").read_text()
    (tmp_path / "r" / "shard-00000.parquet").write_bytes(b"x")  # now it holds output: a different config is refused
    try:
        open_run(tmp_path / "r", {"a": 3}, quiet=True)
        raise AssertionError("a run with output and a different config must be refused")
    except RunError as e:
        assert "different config" in str(e)


def test_non_utf8_inputs_name_file_and_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "ok", "gold": "1"}\n{"id": "b", "text": "caf\xe9", "gold": "2"}\n')
    proc = run_cli("generate", "rollouts", "--config", "recipes/tiny/rollouts.yaml", f"output_dir={tmp_path / 'o'}",
                   "prompts.kind=jsonl", f"prompts.path={bad}", "backend.backend=hf",
                   "prompts.column_map={prompt: text, id: id, reference: gold}", check=False)
    assert proc.returncode == 2 and f"{bad}:2: not valid UTF-8" in proc.stderr and "Traceback" not in proc.stderr

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq\xff\td1\t1\n")
    proc = run_cli("eval", "retrieval", "--config", "recipes/tiny/eval_retrieval.yaml", f"output_dir={tmp_path / 'e'}",
                   f"dataset.path={folder}", "model.kind=bm25", check=False)
    assert proc.returncode == 2 and "test.tsv:3: not valid UTF-8" in proc.stderr and "Traceback" not in proc.stderr

    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"job: rollouts\nrun_name: x\n# caf\xe9\n")
    proc = run_cli("check", str(recipe), check=False)
    assert proc.returncode == 2 and f"{recipe}:3: not valid UTF-8" in proc.stderr and "Traceback" not in proc.stderr


def test_all_pruned_pairs_write_a_typed_empty_shard_and_dpo_says_why(tmp_path):
    roll = make_rollouts(tmp_path, [[rollout("a", 0, "#### 1", "1"), rollout("a", 1, "#### 1", "1"),
                                     rollout("b", 0, "#### 5", "2"), rollout("b", 1, "#### 6", "2")]])
    run_cli("verify", "--config", "recipes/tiny/verify.yaml", f"input_dir={roll}", f"output_dir={tmp_path / 'v'}")
    proc = run_cli("pairs", "--config", "recipes/tiny/pairs.yaml", f"input_dir={tmp_path / 'v'}",
                   f"output_dir={tmp_path / 'p'}", "prune.drop_all_passed=true", "prune.drop_none_passed=true")
    assert "no pairs: 2 prompts: 1 pruned because every sample passed, 1 because none passed" in proc.stderr
    table = pq.read_table(tmp_path / "p" / "pairs" / "shard-00000.parquet")
    assert table.num_rows == 0
    assert table.column_names == ["prompt", "chosen", "rejected", "prompt_id", "chosen_score", "rejected_score",
                                  "strategy"]
    assert str(table.schema.field("chosen").type) == "list<element: struct<role: string, content: string>>"
    proc = run_cli("train", "--config", "recipes/tiny/dpo.yaml", f"data.path={tmp_path / 'p'}",
                   f"output_dir={tmp_path / 'dpo'}", check=False)
    assert proc.returncode == 2 and "holds zero rows" in proc.stderr and "pruned because every sample passed" in \
        proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dpo").exists()
