"""Sharded training on CPU: the tiny DPO and HyPO recipes under FSDP2 on two gloo processes
(recipes/accelerate/fsdp_cpu_2proc.yaml), and the weight gather the vLLM sync relies on.

What "both ranks agree" means under FSDP: no rank holds a whole copy, so nothing can drift apart; what can go wrong is
the assembly. So each rank dumps (WORKBENCH_DEBUG_RANK_WEIGHTS, workbench/training/preference.py) its own shard of
every parameter and its view of the gathered whole, and the test checks: the shards are half the rows (FSDP really
ran, not a silent DDP fallback), concatenated they are the whole, both ranks gather the same whole bit for bit, and
the saved model folder holds exactly that whole.

The sharded run must also be the same computation as one process on the same global batch (2 ranks x 2 = 1 x 4 pairs;
the seeded sampler deals the same 4 rows to each step). It is, up to float32 rounding: the gradient of a mean over 4
pairs is summed in another order (two means of 2 averaged by the reduce-scatter) and the forward runs on batches padded
to other widths, so each step's gradient differs by a few ulps of its largest terms, ~1e-6 relative (u = 6e-8 times the
~10-100 terms a dot product or a sequence's log-prob sums). With plain SGD a weight moves by lr * g per step, so after
4 steps its difference is at most ~4 * 1e-6 of its total movement (the loss is smooth and lr small: earlier
differences are not amplified). We allow 1e-4 of the largest movement, 25x that estimate. Adam (the recipe default) is
not compared: it divides by sqrt(v), so a gradient entry near 0 whose sign rounds differently moves its weight by up to
lr either way, and no float32 tolerance would mean anything.

HyPO's online samples come from each rank's own generator, so its 2-process run draws other samples than one process
would and only the checks above apply to it.
"""

import json
import os
import subprocess
import sys

import torch

from conftest import REPO

CONFIG = "recipes/accelerate/fsdp_cpu_2proc.yaml"
# 2 cores, 2 ranks: one thread each, or the ranks fight over the cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _train(tmp_path, name: str, recipe: str, *overrides, procs: int = 2) -> tuple:
    """Run `workbench train` (under accelerate with the FSDP config when procs=2); return (run dir, per-rank dumps)."""
    run, dump = tmp_path / name, tmp_path / f"{name}-ranks"
    launcher = ["-m", "accelerate.commands.launch", "--config_file", CONFIG] if procs == 2 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "workbench", "train", "--config", recipe,
                           f"output_dir={run}", *overrides], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**ENV, "WORKBENCH_DEBUG_RANK_WEIGHTS": str(dump)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    return run, [torch.load(dump / f"rank{r}.pt") for r in range(procs)]


def _check_sharded_and_saved(run, dumps) -> dict[str, torch.Tensor]:
    """The FSDP invariants above; returns the trained whole (parameter name -> tensor)."""
    from safetensors.torch import load_file

    full = dumps[0]["full"]
    assert dumps[0]["full"].keys() == dumps[1]["full"].keys()
    for name, whole in full.items():
        s0, s1 = dumps[0]["shard"][name], dumps[1]["shard"][name]
        # Shard(0): rank 0 holds the first ceil(n/2) rows, rank 1 the rest. Half the rows: FSDP ran, not DDP.
        assert s0.shape[0] == (whole.shape[0] + 1) // 2 and s1.shape[0] == whole.shape[0] // 2, name
        assert torch.equal(torch.cat([s0, s1]), whole), f"{name}: the shards do not make the gathered whole"
        assert torch.equal(dumps[1]["full"][name], whole), f"{name}: the ranks gathered different weights"
    trainable = dumps[0]["trainable"]
    assert trainable and all("lora_" in n for n in trainable)  # the tiny recipes train LoRA adapters
    # PEFT saves the adapters without the adapter name: ...q_proj.lora_A.default.weight -> ...q_proj.lora_A.weight
    saved = load_file(run / "model" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(n.replace(".default.", ".") for n in trainable)
    wrong = [n for n in trainable if not torch.equal(saved[n.replace(".default.", ".")], full[n])]
    assert not wrong, f"saved adapters differ from the trained weights: {wrong[:3]}"
    return full


def _check_base_untouched_and_adapters_moved(full, tiny_llama) -> None:
    """The frozen base (pi_ref) is still the pretrained model bit for bit, and training moved every LoRA B (which
    starts at 0): equal weights after a run that did nothing would prove nothing."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).state_dict()
    frozen = {n: w for n, w in full.items() if "lora_" not in n}
    for name, w in frozen.items():
        key = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(w, base[key]), f"{name}: training wrote into the frozen base"
    lora_b = [w for n, w in full.items() if "lora_B" in n]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)


def test_dpo_under_fsdp2_on_two_cpu_processes_matches_one_process(tmp_path, tiny_llama):
    # SGD and no LoRA dropout: see the module docstring (dropout masks would differ between 2 ranks and 1 process).
    same = ["lora.dropout=0.0", "optim.extra={optim: sgd}", "optim.learning_rate=0.5", "optim.save_steps=4"]
    run, dumps = _train(tmp_path, "fsdp", "recipes/tiny/dpo.yaml", *same)
    two = _check_sharded_and_saved(run, dumps)
    _check_base_untouched_and_adapters_moved(two, tiny_llama)
    _, (one_dump,) = _train(tmp_path, "one", "recipes/tiny/dpo.yaml", *same, "optim.per_device_train_batch_size=4",
                            procs=1)
    one = one_dump["full"]
    assert one.keys() == two.keys()
    frozen = [n for n in one if "lora_" not in n]
    assert all(torch.equal(one[n], two[n]) for n in frozen)
    lora = [n for n in one if "lora_" in n]
    moved = max(one[n].abs().max().item() for n in lora if "lora_B" in n)  # LoRA B starts at exactly 0
    tol = 1e-4 * moved
    gaps = {n: (one[n] - two[n]).abs().max().item() for n in lora}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= tol, f"{worst}: 2 ranks vs 1 process differ by {gaps[worst]:.3g} > {tol:.3g}"


def test_hypo_under_fsdp2_on_two_cpu_processes(tmp_path, tiny_llama):
    """HyPO samples with HF generate on the sharded policy: FSDP2 gathers each layer in its forward hook, the ranks
    decode in step, and hypo_trainer.sharded_generation gathers what the root group holds."""
    run, dumps = _train(tmp_path, "hypo", "recipes/tiny/hypo.yaml", "hypo.sampler=hf", "optim.save_steps=4")
    full = _check_sharded_and_saved(run, dumps)
    _check_base_untouched_and_adapters_moved(full, tiny_llama)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("hypo/online_tokens", 0) > 0 for m in metrics) and any("kl/online" in m for m in metrics)
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(run / "model").state_dict()
    for name, w in full.items():
        assert torch.equal(loaded[name], w), f"{name}: the saved folder does not load as the trained model"


# ------------------------------------------------------------------------------ weight_sync.gathered under FSDP2


def _fsdp2_worker(rank: int, world: int, init_file: str, model_path: str, out: str) -> None:
    """One rank: shard tiny-llama (plain and LoRA) with fully_shard; policy_weights inside gathered must yield the
    unsharded model's tensors exactly; then the HF sampler must finish when one rank's samples all end at once."""
    import datetime

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.training.hypo_trainer import sharded_generation
    from workbench.training.online_samples import HFSampler
    from workbench.training.weight_sync import gathered, policy_weights

    torch.set_num_threads(1)
    # A short timeout: a rank left waiting in a collective fails the test instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for lora in (False, True):
            torch.manual_seed(0)  # the same weights (and LoRA draws) on both ranks
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
            if lora:
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
                with torch.no_grad():  # B starts at 0 (no delta): make every adapter matter
                    for name, p in model.named_parameters():
                        if "lora_B" in name:
                            p.normal_(0, 0.5)
            # The oracle: the unsharded model's own tensors, merged by PEFT itself for LoRA.
            import copy

            want = (copy.deepcopy(model).merge_and_unload() if lora else model).state_dict()
            want = {k: v.clone() for k, v in want.items()}
            layers = model.base_model.model.model.layers if lora else model.model.layers
            for layer in layers:
                fully_shard(layer)
            fully_shard(model)
            assert all(isinstance(p, DTensor) for p in model.parameters()), "not sharded: the test proves nothing"
            with gathered(model):
                assert not any(isinstance(p, DTensor) for p in model.parameters()), "gathered() left shards"
                got = {n: t.clone() for n, t in policy_weights(model)}
            assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))[:5]
            wrong = [n for n in want if not torch.equal(got[n], want[n])]
            assert not wrong, f"rank {rank} lora={lora}: gathered weights differ: {wrong[:5]}"
            assert all(isinstance(p, DTensor) for p in model.parameters()), "gathered() did not reshard"

        # Generation on the sharded LoRA policy, whose root group holds the embeddings and lm_head (PEFT's generate
        # skips the root's hook: without sharded_generation, "mixed torch.Tensor and DTensor"). And in step: rank 0
        # treats every token as EOS (its samples end after one token), rank 1 decodes on; rank 0 must keep stepping
        # (transformers' synced_gpus, on for modules fully_shard manages) or rank 1 waits in a gather until the timeout.
        tok = AutoTokenizer.from_pretrained(model_path)
        # A training forward/backward first, as in HyPO: it makes the PEFT model the FSDP root, so its layers reshard
        # after each forward (a layer first run outside any root becomes a root itself and stays gathered).
        model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.sum().backward()
        if rank == 0:
            model.generation_config.eos_token_id = list(range(model.config.vocab_size))
        with sharded_generation(model):
            samples = HFSampler(tok, k=2, temperature=1.0, max_new_tokens=6).sample(model, [[1, 5, 9], [1, 7]], 0)
        assert len(samples) == 2 and all(len(ys) == 2 for ys in samples)
        torch.save({"lengths": sorted({len(y) for ys in samples for y in ys})}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_policy_weights_under_fsdp2_are_the_unsharded_weights(tmp_path, tiny_llama):
    import torch.multiprocessing as mp

    mp.spawn(_fsdp2_worker, args=(2, str(tmp_path / "pg-init"), tiny_llama, str(tmp_path)), nprocs=2, join=True)
    lengths = [torch.load(tmp_path / f"rank{r}.pt")["lengths"] for r in range(2)]
    assert lengths[0] == [1] and max(lengths[1]) > 1, f"rank 1 must have decoded past rank 0's end: {lengths}"
