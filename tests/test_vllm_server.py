"""``hypo.sampler: server``: HyPO trains against a vLLM server in another process, as it would against one on another
node (workbench/generation/vllm_server.py starts it, workbench/training/server_sampler.py is the client).

One server (tiny-llama, fp32, CPU) for the whole module: it takes ~30-70 s to start. Oracles, independent of the code
under test: log-probs from one unbatched fp32 forward pass of PEFT's ``merge_and_unload`` of the policy in this
process; seeds recomputed with ``derive_seed`` from the documented formula; the number of tokens the server generated
read from vLLM's own Prometheus counter. Afterwards no process of the server's group may be left, whatever failed.
"""

from __future__ import annotations

import copy
import json
import socket
import urllib.request

import pytest
import torch

from conftest import needs_vllm, run_cli

# The tolerance on summed log-probs of <= 6 tokens, fp32 on both sides. vLLM and HF run the same fp32 maths with
# different kernels (GEMM blocking, attention, RMSNorm order), so they differ by rounding only: eps = 6e-8, tiny-llama
# sums 64- and 128-term dot products through 2 layers, so a logit differs by ~1e-6 relative and a log-prob by ~1e-5 at
# worst; 6 tokens ~1e-4 (measured: ~1e-6). 1e-3 leaves 10x margin over that bound and stays 50x below the negative
# control's gap (the LoRA deltas, B ~ N(0, 0.5), move these log-probs by > 0.05).
TOL = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port(handle) -> int:
    return int(handle.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    """The server, started once; stopped (SIGTERM, then SIGKILL) even when a test fails, and checked gone."""
    from workbench.generation.backends import BackendConfig
    from workbench.generation.vllm_server import _group_members, start_server

    log = tmp_path_factory.mktemp("server") / "server.log"
    cfg = BackendConfig(backend="vllm", dtype="float32", cpu_kv_cache_gib=1, max_model_len=256)
    handle = start_server(tiny_llama, _free_port(), cfg, log_path=log)  # stops itself if it never gets healthy
    try:
        assert handle.alive(), "the server should be running"
        yield handle
    finally:
        handle.stop()
        left = _group_members(handle.pgid)
        assert not left, f"server processes left behind: {left}"


def _generated_tokens(url: str) -> float:
    """vLLM's own count of generated tokens (Prometheus counter), summed over its label sets."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:generation_tokens_total"))


def _logp(model, prompt: list[int], y: list[int]) -> float:
    """log pi(y | prompt), one unbatched fp32 forward pass (the oracle)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + y])).logits[0, len(prompt) - 1: len(prompt) - 1 + len(y)].double()
    return float(logits.log_softmax(-1).gather(-1, torch.tensor(y)[:, None]).sum())


def _lora(path: str):
    """A fp32 LoRA policy on every Linear whose adapters all matter (B starts at 0, i.e. no delta: redrawn)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


@needs_vllm
def test_one_hypo_step_samples_from_the_server(server, tmp_path):
    """`workbench train` with hypo.sampler=server runs a HyPO step whose online samples are the server's: the tokens
    the trainer scored (hypo/online_tokens) are exactly the tokens vLLM counts as generated meanwhile, and no weights
    file is left in weights_dir."""
    before = _generated_tokens(server.url)
    weights, run = tmp_path / "weights", tmp_path / "run"
    run_cli("train", "--config", "recipes/tiny/hypo.yaml", "hypo.sampler=server", f"hypo.server.port={_port(server)}",
            f"hypo.server.weights_dir={weights}", "optim.max_steps=1", f"output_dir={run}",
            env={"OMP_NUM_THREADS": "1"})
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "kl/online" in r]
    assert len(steps) == 1, f"one logged step with the online term expected, got {steps}"
    tokens = steps[0]["hypo/online_tokens"]
    assert tokens > 0 and torch.isfinite(torch.tensor(steps[0]["kl/online"]))
    # A sampler that fell back to HF (or drew twice) would make these differ.
    assert _generated_tokens(server.url) - before == tokens
    assert weights.is_dir() and not list(weights.iterdir()), "sync files must be removed after loading"


@needs_vllm
def test_after_a_sync_the_server_samples_the_policy(server, tiny_llama, tmp_path):
    """Before a sync the server's log-probs are not the policy's (negative control); the first ``sample`` pushes the
    LoRA policy's merged weights through a file and /collective_rpc, after which they match an fp32 forward pass of
    PEFT's merged model; and ``sample`` used the documented per-request seeds."""
    from workbench.generation.backends import derive_seed
    from workbench.training.server_sampler import ServerSampler

    policy = _lora(tiny_llama)
    merged = copy.deepcopy(policy).merge_and_unload()
    # The long prompt fills a KV-cache block (128 tokens on CPU): without /reset_prefix_cache after the sync, vLLM
    # would reuse that block, computed under the old weights, and the gap below would show it.
    prompts = [[1, 15, 27], [1] + [4 + (7 * i) % 500 for i in range(139)]]
    sampler = ServerSampler("127.0.0.1", _port(server), str(tmp_path / "weights"), k=3, temperature=1.0,
                            max_new_tokens=6, sync_every=1, seed=7)

    def gaps(seeds):
        out = sampler.complete(prompts, seeds, logprobs=True)
        return [abs(c["logprob"] - _logp(merged, p, c["token_ids"])) for p, row in zip(prompts, out) for c in row]

    unsynced = gaps([11, 12])
    assert max(unsynced) > 0.05, f"negative control: before the sync the server must differ from the policy {unsynced}"
    drawn = sampler.sample(policy, prompts, step=0)
    assert sampler.syncs == 1
    synced = gaps([11, 12])
    assert max(synced) < TOL, f"after the sync the server's log-probs must be the policy's: gaps {synced}"
    seeds = [derive_seed(7, 0, 0, 0, i) for i in range(len(prompts))]  # (seed, step, micro-batch, rank, prompt)
    assert drawn == [[c["token_ids"] for c in row] for row in sampler.complete(prompts, seeds)]
    assert [len(row) for row in drawn] == [3, 3]
    sampler.sample(policy, prompts, step=0)  # the same step again (gradient accumulation): no second push
    assert sampler.syncs == 1


def test_a_server_that_does_not_answer_stops_training_before_the_run_folder(tmp_path):
    """hypo.sampler=server with nothing on the port: one line naming host:port and how to start the server, exit 2,
    and no run folder (a corrected rerun is a fresh run)."""
    port, run = _free_port(), tmp_path / "run"
    proc = run_cli("train", "--config", "recipes/tiny/hypo.yaml", "hypo.sampler=server", f"hypo.server.port={port}",
                   f"hypo.server.weights_dir={tmp_path / 'weights'}", f"output_dir={run}", check=False,
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "workbench serve" in errors[0], proc.stderr
    assert not run.exists()


def test_serve_command_carries_the_weight_sync_switches():
    """`workbench serve --print-command` on the tiny recipe: dev routes on, our worker extension, the recipe's port,
    and on CPU no chunked prefill with a token budget >= max_model_len (per-request seeds crash vLLM-CPU otherwise)."""
    out = run_cli("serve", "--config", "recipes/tiny/hypo.yaml", "--print-command", "hypo.server.port=8123",
                  env={"OMP_NUM_THREADS": "1"}).stdout.split()
    assert "VLLM_SERVER_DEV_MODE=1" in out
    assert out[out.index("--worker-extension-cls") + 1] == "workbench.generation.vllm_worker.WeightSyncExtension"
    assert out[out.index("--port") + 1] == "8123"
    assert out[out.index("--generation-config") + 1] == "vllm"
    if not torch.cuda.is_available():
        assert "--no-enable-chunked-prefill" in out
        assert int(out[out.index("--max-num-batched-tokens") + 1]) >= int(out[out.index("--max-model-len") + 1])
