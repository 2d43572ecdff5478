"""Preference training through TRL: the tiny recipes via the real CLI and accelerate, HyPO identities on TRL's
DPOTrainer, resume after SIGKILL, the vLLM-CPU weight-sync fix, and the verifier-as-reward adapter."""

import json
import os
import subprocess
import sys


import pytest
import torch

from conftest import REPO, run_cli
from workbench.jobs import load_recipe


def _trainer(recipe, tmp_path, *overrides):
    from workbench.training.preference import build_trainer

    cfg = load_recipe(REPO / recipe, [f"output_dir={tmp_path}", *overrides])
    return build_trainer(cfg, tmp_path)


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def test_hypo_with_lambda_zero_is_trl_dpo_exactly(tmp_path):
    torch.manual_seed(0)
    dpo = _trainer("recipes/tiny/dpo.yaml", tmp_path / "d", "lora=null")
    torch.manual_seed(0)
    hypo = _trainer("recipes/tiny/hypo.yaml", tmp_path / "h", "lora=null", "hypo.kl_coef=0.0", "hypo.sampler=hf")
    assert type(dpo).__name__ == "DPOTrainer" and type(hypo).__name__ == "HyPOTrainer"
    batch = _batch(dpo)
    losses, grads = [], []
    for t in (dpo, hypo):
        t.model.train()
        t.model.zero_grad()
        loss = t.compute_loss(t.model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in t.model.parameters() if p.grad is not None])
    assert torch.equal(losses[0], losses[1])
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_hypo_adds_lambda_times_kl_surrogate(tmp_path):
    """With lambda > 0 the loss is DPO + lambda * surrogate, and kl/online is logged."""
    from workbench.losses.hypo import reverse_kl_term
    from workbench.training.hypo_trainer import completion_logps

    torch.manual_seed(0)
    t = _trainer("recipes/tiny/hypo.yaml", tmp_path, "lora=null", "hypo.kl_coef=0.5", "hypo.sampler=hf",
                 "dpo.ref_model=tiny-llama")
    batch = _batch(t)
    t.model.train()
    fixed = [[[1, 2, 3], [4, 5]]] * (batch["input_ids"].shape[0] // 2)
    t.sampler.sample = lambda model, prompts, step: fixed[:len(prompts)]
    total = t.compute_loss(t.model, batch)
    t.kl_coef = 0.0
    dpo_only = t.compute_loss(t.model, batch)
    prompts = t.batch_prompts(batch)
    lp = completion_logps(t.model, prompts, fixed[:len(prompts)], 0)
    with torch.no_grad():
        ref = completion_logps(t.ref_model, prompts, fixed[:len(prompts)], 0)
    surrogate, kl = reverse_kl_term(lp, ref)
    assert total.item() == pytest.approx(dpo_only.item() + 0.5 * surrogate.item(), abs=1e-6)
    assert t._metrics["train"]["kl/online"][-1] == pytest.approx(kl.item(), abs=1e-6)


def test_batch_prompts_are_the_prompt_tokens(tmp_path):
    t = _trainer("recipes/tiny/hypo.yaml", tmp_path, "hypo.sampler=hf")
    ds = t.train_dataset
    batch = t.data_collator([ds[0], ds[1]])
    assert t.batch_prompts(batch) == [ds[0]["prompt_ids"], ds[1]["prompt_ids"]]


@pytest.mark.parametrize("method", ["dpo", "hypo", "grpo"])
def test_tiny_recipes_through_the_cli(tmp_path, method):
    run_cli("train", "--config", f"recipes/tiny/{method}.yaml", f"output_dir={tmp_path}")
    status = json.loads((tmp_path / "run.json").read_text())
    assert status["status"] == "done" and status["summary"]["global_step"] > 0
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)
    if method == "hypo":
        assert any("kl/online" in m for m in metrics) and any("hypo/gen_time_share" in m for m in metrics)
    if method == "grpo":
        assert any("rewards/math_reward/mean" in m for m in metrics)
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"method: {method}" in card and "Final metrics" in card
    if method in ("dpo", "hypo"):  # LoRA adapters load with peft
        from peft import AutoPeftModelForCausalLM

        assert AutoPeftModelForCausalLM.from_pretrained(tmp_path / "model") is not None
    else:
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(tmp_path / "model") is not None


def test_dpo_on_two_cpu_processes_through_accelerate(tmp_path):
    """Both ranks see different rows (within the epoch) and end with identical weights."""
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           "recipes/accelerate/cpu_2proc.yaml", "tests/dist_probe.py", "recipes/tiny/dpo.yaml",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WORKBENCH_TEST_MAX_STEPS": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0/2" in proc.stdout and "rank 1/2" in proc.stdout
    seen = [json.loads((tmp_path / f"seen-rank{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 4  # 2 steps x batch 2 per rank
    assert not set(seen[0]) & set(seen[1]), "ranks trained on overlapping rows"
    w = [torch.load(tmp_path / f"weights-rank{r}.pt") for r in range(2)]
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])


@pytest.mark.parametrize("method", ["dpo", "hypo", "grpo"])
def test_accelerate_launch_runs_the_recipe_cli(tmp_path, method):
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           "recipes/accelerate/cpu_2proc.yaml", "-m", "workbench", "train", "--config",
                           f"recipes/tiny/{method}.yaml", f"output_dir={tmp_path}"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "done"
    assert (tmp_path / "model" / "config.json").exists() or (tmp_path / "model" / "adapter_config.json").exists()


def test_every_accelerate_config_validates():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"cpu_2proc", "ddp", "fsdp", "zero2", "zero3"}
    for c in configs:
        cfg = load_config_from_file(str(c))
        assert cfg.num_processes >= 2
        header = c.read_text().splitlines()[0]
        assert header.startswith("# Launch: accelerate launch --config_file " + str(c.relative_to(REPO)))


def test_verifier_reward_adapter():
    from workbench.errors import DataError
    from workbench.training.rewards import verifier_reward
    from workbench.verifiers import get_verifier

    reward = verifier_reward(get_verifier("math"))
    assert reward.__name__ == "math_reward"
    got = reward(prompts=[[{"role": "user", "content": "2+2?"}]] * 2,
                 completions=[[{"role": "assistant", "content": "#### 4"}], [{"role": "assistant", "content": "5"}]],
                 reference=["4", "4"])
    assert got == [1.0, 0.0]
    with pytest.raises(DataError, match="no 'reference' column"):
        reward(prompts=["q"], completions=["4"])


def test_bad_training_data_names_columns(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"question": "q", "good": "a", "bad": "b"}\n')
    proc = run_cli("train", "--config", "recipes/tiny/dpo.yaml", f"data.path={bad}", f"output_dir={tmp_path / 'r'}",
                   check=False)
    assert proc.returncode == 2 and "role 'prompt' not found" in proc.stderr and "data.column_map.prompt" in proc.stderr
    run_cli("train", "--config", "recipes/tiny/dpo.yaml", f"data.path={bad}", f"output_dir={tmp_path / 'r2'}",
                 "data.column_map={prompt: question, chosen: good, rejected: bad}", "optim.max_steps=1")
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["status"] == "done"
