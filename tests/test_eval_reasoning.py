"""Reasoning eval: pass@k / maj@k against hand values; the tiny recipe through the real CLI; tasks; KL diagnostics."""

import json
from math import comb

import pytest

from conftest import needs_vllm, run_cli
from workbench_eval.reasoning import majority_correct, pass_at_k


def test_pass_at_k_by_hand():
    # n=4, c=1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - comb(3, 3) / comb(5, 3))


def test_majority_vote():
    assert majority_correct(["7", "8", "8", None], [True, False, False, False], 4) is False  # 8 wins
    assert majority_correct(["7", "8", "7", "8"], [True, False, True, False], 4) is True  # tie -> first (7)
    assert majority_correct(["7", "8", "8"], [True, False, False], 1) is True
    assert majority_correct([None, None], [False, False], 2) is False


def test_tasks_registry_builds_prompts_and_scores():
    from workbench_eval.tasks import Task, TaskConfig
    from workbench.config import build

    asdiv = Task(build(TaskConfig, {"name": "asdiv", "size": 3}))
    recs = asdiv.prompts()
    assert len(recs) == 3 and "apples" in recs[0].prompt.lower() and recs[0].reference == "9 apples"
    assert asdiv.evaluate(recs[0].prompt, "So the basket has 9 apples. #### 9", recs[0].reference).passed
    rg = Task(build(TaskConfig, {"name": "reasoning_gym:products", "task_config": {"min_digits": 1, "max_digits": 1},
                                 "size": 5}))
    recs = rg.prompts()
    gold = json.loads(recs[0].reference)["answer"]
    assert rg.reward([recs[0].prompt] * 2, [f"#### {gold}", "#### -1"], [recs[0].reference] * 2) == [1.0, 0.0]


def test_task_config_errors(tmp_path):
    proc = run_cli("check", "recipes/tiny/eval_reasoning.yaml", "task.name=gsm9k", check=False)
    assert proc.returncode == 2 and "unknown task 'gsm9k'" in proc.stderr
    proc = run_cli("check", "recipes/tiny/eval_reasoning.yaml", "k=[1, 3]", check=False)
    assert proc.returncode == 2 and "between 1 and sampling.n" in proc.stderr


@needs_vllm
def test_tiny_eval_reasoning_recipe(tmp_path):
    run_cli("eval", "reasoning", "--config", "recipes/tiny/eval_reasoning.yaml", f"output_dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["schema_version"] == 1 and res["task"] == "reasoning" and res["model"] == "tiny-llama"
    assert set(res["metrics"]) >= {"accuracy", "pass@1", "pass@2", "maj@2", "mean_length", "kl_to_ref",
                                   "kl_to_ref_se", "kl_per_token"}
    # The model against itself: 0 by definition, and no KL pass is spent on it.
    assert res["metrics"]["kl_to_ref"] == 0.0 and res["kl"]["sampling"].startswith("none: the policy is the reference")
    assert res["counts"]["samples"] == 16 and len(res["per_query"]) == 8
    assert (tmp_path / "samples.parquet").exists() and "## Metrics" in (tmp_path / "report.md").read_text()


def test_reverse_kl_scores_token_ids_against_a_different_model(tiny_llama, tmp_path):
    """reverse_kl scores the given ids under both models: checked against one unbatched forward pass per row."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench_eval.diagnostics import reverse_kl

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(other)
    prompts, comps = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]

    def by_hand(path):
        m = AutoModelForCausalLM.from_pretrained(path).eval()
        out = []
        with torch.no_grad():
            for p, c in zip(prompts, comps):
                logp = m(torch.tensor([p + c])).logits[0].log_softmax(-1)
                out.append(sum(logp[len(p) - 1 + t, tok].item() for t, tok in enumerate(c)))
        return out

    d = [a - b for a, b in zip(by_hand(tiny_llama), by_hand(str(other)))]
    kl = reverse_kl(tiny_llama, str(other), prompts, comps, ["x", "y"])
    # float32 forward passes, batched vs one row: ~1e-6 per token on log-probs of magnitude ~6.
    assert kl["kl"] == pytest.approx(sum(d) / 2, abs=1e-4) and kl["samples"] == 2
    assert kl["policy_logps"] == pytest.approx(by_hand(tiny_llama), abs=1e-4)
    assert kl["kl_per_token"] == pytest.approx(sum(d) / 5, abs=1e-4)


def test_dedupe_gives_disjoint_train_and_heldout_splits():
    from workbench.config import build
    from workbench.generation.prompts import PromptSourceConfig, load_prompts

    src = {"kind": "reasoning_gym", "task": "products", "task_config": {"min_digits": 1, "max_digits": 1},
           "seed": 0, "dedupe": True}
    train = load_prompts(build(PromptSourceConfig, {**src, "size": 30}))
    held = load_prompts(build(PromptSourceConfig, {**src, "size": 30, "offset": 30}))
    assert len({r.prompt for r in train}) == 30 and len({r.prompt for r in held}) == 30
    assert not {r.prompt for r in train} & {r.prompt for r in held}
