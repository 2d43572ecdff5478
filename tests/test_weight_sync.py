"""HyPO's online samplers draw from pi: vLLM after a weight sync (engine out of process, as on a GPU), HF whatever the
model's generation_config says, and neither ever writes into pi_ref.

Oracles, independent of the sync code: log-probs from one unbatched fp32 forward pass of the trained model in this
process; the merged LoRA weights from PEFT's ``merge_and_unload`` on a copy; the sampler's draws from ``generate`` on a
copy of the model whose generation_config was emptied by hand."""

from __future__ import annotations

import copy
import gc
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import needs_vllm


def _logp(model, prompt: list[int], y: list[int]) -> float:
    """log pi(y | prompt), one unbatched fp32 forward pass (the oracle)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + y])).logits[0, len(prompt) - 1: len(prompt) - 1 + len(y)].double()
    return float(logits.log_softmax(-1).gather(-1, torch.tensor(y)[:, None]).sum())


def _lora(path: str, dtype=torch.float32, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=dtype),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # B starts at 0 (no delta at all): make every adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def _engine_children() -> set[int]:
    """This process's children, but Python's own multiprocessing resource tracker (one per parent, for its life)."""
    import psutil

    def engine(p) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())
        except psutil.Error:  # exited meanwhile
            return False

    return {p.pid for p in psutil.Process().children(recursive=True) if engine(p)}


@needs_vllm
def test_out_of_process_vllm_samples_the_synced_policy(tiny_llama, monkeypatch):
    """vLLM with its engine in another process (VLLM_ENABLE_V1_MULTIPROCESSING=1, the GPU default): before a sync its
    samples' log-probs are the *disk* model's (negative control); after pushing a LoRA policy through collective_rpc,
    they are the policy's to fp32 precision. Then the engine shuts down with no process left behind."""
    from transformers import AutoModelForCausalLM

    from workbench.generation.backends import BackendConfig, SamplingConfig
    from workbench.training.online_samples import VLLMSampler

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    before_children = _engine_children()
    sampler = VLLMSampler(tiny_llama, k=1, temperature=1.0, max_new_tokens=6, sync_every=1, seed=0,
                          backend_cfg=BackendConfig(backend="vllm", dtype="float32", cpu_kv_cache_gib=1,
                                                    max_model_len=128))
    try:
        assert _engine_children() - before_children, "the engine runs in this process: the test would prove nothing"
        policy = _lora(tiny_llama)
        disk = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        merged = copy.deepcopy(policy).merge_and_unload()
        sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=6)

        def gaps(reference):
            outs = sampler.backend.generate(["Hello there", "The cat"], sampling)
            pairs = [(c.logprob, _logp(reference, c.prompt_token_ids, c.token_ids)) for row in outs for c in row]
            assert all(len(c.token_ids) > 0 for row in outs for c in row)
            return [abs(a - b) for a, b in pairs]

        assert max(gaps(disk)) < 1e-3, "the unsynced engine should serve the model on disk"
        unsynced = gaps(merged)
        assert max(unsynced) > 0.05, f"negative control: without a sync vLLM must differ from the policy {unsynced}"
        sampler.sync_weights(policy)
        synced = gaps(merged)
        assert max(synced) < 1e-3, f"after the sync vLLM's log-probs must be the policy's: gaps {synced}"
        assert sampler.syncs == 1
    finally:
        sampler.close()
        sampler = None  # drop the last reference to the engine
        gc.collect()

    deadline = time.monotonic() + 60  # the engine exits on its own once shut down: poll, no fixed sleep
    while (left := _engine_children() - before_children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"engine processes left behind: {left}"


class _Recorder:
    """Stands in for ``vllm.LLM``: records what ``collective_rpc`` would send to the workers."""

    def __init__(self):
        self.pushed: dict[str, torch.Tensor] = {}
        self.calls = 0

    def collective_rpc(self, method, args=()):
        assert method == "workbench_load_weights"
        from safetensors.torch import load

        (blob,) = args
        assert isinstance(blob, bytes), "only bytes cross vLLM's RPC intact"
        self.calls += 1
        bucket = load(blob)
        assert not set(bucket) & set(self.pushed), "a weight sent twice in one sync"
        self.pushed.update(bucket)
        return [len(bucket)]

    def reset_prefix_cache(self):
        pass


def _sampler_without_engine(llm):
    from workbench.training.online_samples import VLLMSampler

    sampler = object.__new__(VLLMSampler)
    sampler.backend, sampler.syncs = SimpleNamespace(llm=llm), 0
    return sampler


def test_fifty_bf16_syncs_leave_the_reference_bit_identical_and_push_the_merged_weights(tiny_llama):
    """pi_ref is the frozen base of the LoRA policy. 50 syncs in bf16 must leave every base weight bit-identical, and
    what reaches vLLM must be PEFT's merged weights (merge_and_unload on a copy). The negative control: PEFT's
    in-place merge_adapter/unmerge_adapter cycle, which the old sync used, does move bf16 base weights."""
    policy = _lora(tiny_llama, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    llm = _Recorder()
    sampler = _sampler_without_engine(llm)
    for _ in range(50):
        llm.pushed = {}
        sampler.sync_weights(policy)
    after = policy.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the sync wrote into the policy: {changed[:5]}"
    assert not any(getattr(m, "merged", False) for m in policy.modules())

    want = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert sorted(llm.pushed) == sorted(want), "pushed names must be the checkpoint's names"
    wrong = [k for k in want if not torch.equal(llm.pushed[k], want[k])]
    assert not wrong, f"pushed weights differ from PEFT's merged weights: {wrong[:5]}"
    assert any(not torch.equal(want[k], before[f"base_model.model.{k}".replace(".weight", ".base_layer.weight")])
               for k in want if "proj" in k), "the adapters changed nothing: the test would be vacuous"

    control = copy.deepcopy(policy)
    for _ in range(5):
        control.merge_adapter()
        control.unmerge_adapter()
    moved = [k for k, v in control.state_dict().items() if "base_layer" in k and not torch.equal(v, before[k])]
    assert moved, "negative control: in-place merge/unmerge in bf16 should round the base weights"


def test_sync_sends_buckets_of_bounded_size(tiny_llama):
    from transformers import AutoModelForCausalLM

    from workbench.training.weight_sync import buckets, policy_weights

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    sizes = {n: t.numel() * t.element_size() for n, t in policy_weights(model)}
    cap = max(sizes.values()) * 2
    got = list(buckets(policy_weights(model), max_bytes=cap))
    assert len(got) > 1
    assert all(sum(t.numel() * t.element_size() for _, t in b) <= cap for b in got)
    assert [n for b in got for n, _ in b] == list(sizes), "every weight once, in order"


def test_hf_sampler_ignores_the_models_generation_config(tiny_llama):
    """A model shipping repetition_penalty, no_repeat_ngram_size, min_new_tokens and bad_words_ids is still sampled
    from pi: with the same seed, the sampler draws exactly what ``generate`` draws on a copy of the model whose
    generation_config was emptied by hand. Negative control: ``generate`` with the shipped config draws otherwise.

    The control must not rest on luck: tiny-llama's next-token distributions are close to uniform, so a repetition
    penalty or a ban of two fixed tokens may leave every draw as it was (it did, on one build). The shipped config
    therefore also bans the first token of the plain model's first draw, which ``generate`` with it cannot repeat."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from workbench.training.online_samples import HFSampler

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    shipped = AutoModelForCausalLM.from_pretrained(tiny_llama)
    eos, pad = shipped.generation_config.eos_token_id, tok.pad_token_id or tok.eos_token_id
    plain = copy.deepcopy(shipped)
    plain.generation_config = GenerationConfig(eos_token_id=eos)
    prompts = [tok("Hello there", add_special_tokens=False)["input_ids"], tok("A", add_special_tokens=False)["input_ids"]]
    sampler = HFSampler(tok, k=3, temperature=1.0, max_new_tokens=8)

    def oracle(model, **extra):
        torch.manual_seed(11)
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                                 top_k=0, max_new_tokens=8, num_return_sequences=3, pad_token_id=pad, **extra)
        return out[:, width:].tolist()

    want = oracle(plain)
    banned = want[0][0]
    shipped.generation_config = GenerationConfig(eos_token_id=eos, repetition_penalty=8.0, no_repeat_ngram_size=1,
                                                 min_new_tokens=5, bad_words_ids=[[5], [7], [banned]], top_k=3)
    torch.manual_seed(11)
    got = sampler.sample(shipped, prompts, step=0)
    for i in range(len(prompts)):
        for j in range(3):
            y = got[i][j]
            assert want[i * 3 + j][:len(y)] == y, f"prompt {i} sample {j}: {y} vs {want[i * 3 + j]}"
    assert shipped.generation_config.repetition_penalty == 8.0, "the model's own config must be restored"
    assert oracle(shipped)[0][0] != banned, "negative control: the shipped processors change the draws"


@pytest.mark.parametrize("dtype", [torch.float32])
def test_checkpoint_names_and_gathered_is_a_no_op_unsharded(tiny_llama, dtype):
    from transformers import AutoModelForCausalLM

    from workbench.training.weight_sync import checkpoint_name, gathered, policy_weights

    assert checkpoint_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == \
        "model.layers.0.self_attn.q_proj.weight"
    assert checkpoint_name("module._fsdp_wrapped_module.model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert checkpoint_name("base_model.model.lm_head.modules_to_save.default.weight") == "lm_head.weight"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
    with gathered(model):
        names = [n for n, _ in policy_weights(model)]
    assert names == [n for n, _ in model.named_parameters()]
