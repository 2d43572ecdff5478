"""Both real backends on tiny-llama: shapes, finish reasons, stop strings, and log-probs checked by a forward pass."""

import pytest
import torch

from workbench.generation.backends import BackendConfig, FakeBackend, SamplingConfig, make_backend

from conftest import needs_vllm

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], "The answer is"]


def forward_logprob(model_path, prompt_text, completion_ids):
    """log pi(y|x) by teacher forcing: the reference the backends' summed log-probs must match."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    p = tok(prompt_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + list(completion_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    return float(logp[len(p) - 1:].gather(-1, tgt[len(p) - 1:, None]).sum())


def _check(backend, tiny_llama, tol):
    from workbench.generation.backends import render_prompts

    out = backend.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=1))
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    texts = render_prompts(backend.tokenizer, PROMPTS)
    for text, samples in zip(texts, out):
        for s in samples:
            assert s.finish_reason in ("stop", "length") and 1 <= len(s.token_ids) <= 8
            assert s.logprob < 0
            assert s.logprob == pytest.approx(forward_logprob(tiny_llama, text, s.token_ids), abs=tol)
    assert len({tuple(s.token_ids) for s in out[0]}) > 1, "n samples at T=1 should differ"


def test_hf_backend_samples_and_logprobs(tiny_llama):
    backend = make_backend("tiny-llama", BackendConfig(backend="hf", batch_size=1))
    _check(backend, tiny_llama, tol=1e-3)


def test_hf_backend_greedy_and_stop(tiny_llama):
    backend = make_backend("tiny-llama", BackendConfig(backend="hf"))
    a = backend.generate(["Hello"], SamplingConfig(n=2, temperature=0.0, max_tokens=6))
    assert a[0][0].token_ids == a[0][1].token_ids, "greedy decoding is deterministic"
    first_piece = a[0][0].text[:3]
    if first_piece.strip():
        cut = backend.generate(["Hello"], SamplingConfig(n=1, temperature=0.0, max_tokens=6, stop=[first_piece]))
        assert first_piece not in cut[0][0].text and cut[0][0].finish_reason == "stop"


@needs_vllm
def test_vllm_backend_samples_and_logprobs(tiny_llama):
    backend = make_backend("tiny-llama", BackendConfig(backend="vllm", cpu_kv_cache_gib=1, max_model_len=256))
    # vLLM may compute in bf16 on CPU: log-probs agree with the fp32 forward pass to a looser tolerance.
    _check(backend, tiny_llama, tol=0.5)


def test_fake_backend_is_only_for_unit_tests():
    out = FakeBackend(["a b", "c"]).generate(["x", "y"], SamplingConfig(n=2))
    assert [[s.text for s in o] for o in out] == [["a b", "c"], ["a b", "c"]]


def test_vllm_missing_gives_clear_error(monkeypatch):
    import workbench.generation.backends as b
    from workbench.errors import WorkbenchError

    monkeypatch.setattr(b, "vllm_available", lambda: False)
    with pytest.raises(WorkbenchError, match="vllm is not installed"):
        make_backend("tiny-llama", BackendConfig(backend="vllm"))
    assert isinstance(make_backend("tiny-llama", BackendConfig(backend="auto")), b.HFBackend)
