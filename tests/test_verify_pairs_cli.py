"""verify and pairs through the real CLI on rollouts written by the real rollouts job; DPOTrainer takes the pairs."""

import json



from conftest import run_cli
from workbench.store import shards


def make_rollouts(tmp_path, rows_by_shard):
    """A finished rollouts folder, in the rollouts job's exact schema (as the job writes it)."""
    out = tmp_path / "roll" / "rollouts"
    for k, rows in enumerate(rows_by_shard):
        shards.write_shard(out, k, rows)
    shards.finalize(out, [len(r) for r in rows_by_shard], {"job": "rollouts", "chat": True, "system_prompt": None})
    return tmp_path / "roll"


def rollout(pid, idx, completion, reference):
    return {"prompt_id": pid, "prompt": f"What is {pid}?", "sample_idx": idx, "completion": completion,
            "prompt_token_ids": [1, 2, 3], "completion_token_ids": [4, 5, 6, 7, 8], "reference": reference, "finish_reason": "stop", "num_tokens": 5, "logprob": -3.0, "model": "m",
            "backend": "hf"}


def test_verify_then_pairs_then_dpo_accepts(tmp_path, tiny_llama):
    roll = make_rollouts(tmp_path, [
        [rollout("a", 0, "6 * 7 = 42. #### 42", "42"), rollout("a", 1, "I think 41", "42"),
         rollout("b", 0, "The answer is 1,000", "1000"), rollout("b", 1, "", "1000")],
        [rollout("c", 0, "3/4", "0.75"), rollout("c", 1, "\\boxed{0.75}", "0.75"),
         rollout("d", 0, "12", "twelve"), rollout("d", 1, "13", "twelve")],
    ])
    run_cli("verify", "--config", "recipes/tiny/verify.yaml", f"input_dir={roll}", f"output_dir={tmp_path / 'v'}")
    vman = json.loads((tmp_path / "v" / "verdicts" / "manifest.json").read_text())
    st = vman["stats"]
    assert st["rows"] == 8 and st["passed"] == 4 and st["skipped_rows"] == 2 and st["empty_completions"] == 1
    rows = {(r["prompt_id"], r["sample_idx"]): r for r in shards.read_rows(tmp_path / "v" / "verdicts")}
    assert rows[("a", 0)]["passed"] and not rows[("a", 1)]["passed"]
    assert "skipped" in json.loads(rows[("d", 0)]["details"])
    assert list(rows[("a", 0)])[-4:] == ["score", "passed", "verifier", "details"]

    proc = run_cli("pairs", "--config", "recipes/tiny/pairs.yaml", f"input_dir={tmp_path / 'v'}",
                   f"output_dir={tmp_path / 'p'}", "prune.drop_all_passed=true", "prune.drop_none_passed=true",
                   "margin=0.5")
    assert "2 pairs from 2 of 4 prompts" in proc.stderr  # a, b mixed; c all passed; d skipped (no usable rows)

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "p" / "pairs" / "shard-*.parquet"),
                               split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected", "prompt_id", "chosen_score", "rejected_score",
                               "strategy"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1,
                                                     per_device_train_batch_size=2, report_to=[], use_cpu=True,
                                                     logging_steps=1),
                         train_dataset=ds, processing_class=tok)
    trainer.train()
    assert trainer.state.global_step == 1


def test_verify_rejects_shards_missing_columns(tmp_path):
    out = tmp_path / "roll" / "rollouts"
    shards.write_shard(out, 0, [{"prompt_id": "a", "completion": "x"}])
    shards.finalize(out, [1], {})
    proc = run_cli("verify", "--config", "recipes/tiny/verify.yaml", f"input_dir={tmp_path / 'roll'}",
                   f"output_dir={tmp_path / 'v'}", check=False)
    assert proc.returncode == 2 and "lacks column(s)" in proc.stderr and "shard-00000.parquet" in proc.stderr


def test_verify_refuses_unfinished_rollouts(tmp_path):
    out = tmp_path / "roll" / "rollouts"
    shards.write_shard(out, 0, [rollout("a", 0, "1", "1")])
    proc = run_cli("verify", "--config", "recipes/tiny/verify.yaml", f"input_dir={tmp_path / 'roll'}",
                   f"output_dir={tmp_path / 'v'}", check=False)
    assert proc.returncode == 2 and "has not finished" in proc.stderr
