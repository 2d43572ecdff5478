"""Both real backends on tiny-llama: shapes, finish reasons, stop strings, and log-probs checked by a forward pass."""

import pytest
import torch

from workbench.generation.backends import BackendConfig, FakeBackend, SamplingConfig, make_backend

from conftest import needs_vllm

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], "The answer is"]


def forward_logprob(model_path, prompt_ids, completion_ids):
    """log pi(y|x) by one teacher-forced float32 pass: the reference the backends' summed log-probs must match."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    p = len(prompt_ids)
    return float(logp[p - 1:].gather(-1, ids[0, p:, None]).sum())


def _check(backend, tiny_llama, tol):
    from workbench.generation.backends import render_prompts

    out = backend.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=1))
    assert len(out) == 2 and all(len(o) == 3 for o in out)
    texts = render_prompts(backend.tokenizer, PROMPTS)
    for text, samples in zip(texts, out):
        ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in samples:
            assert s.prompt_token_ids == ids  # the rendered prompt, tokenised once without special tokens
            assert s.finish_reason in ("stop", "length") and 1 <= len(s.token_ids) <= 8
            assert s.logprob < 0
            assert s.logprob == pytest.approx(forward_logprob(tiny_llama, ids, s.token_ids), abs=tol)
    assert len({tuple(s.token_ids) for s in out[0]}) > 1, "n samples at T=1 should differ"


def test_hf_backend_samples_and_logprobs(tiny_llama):
    backend = make_backend("tiny-llama", BackendConfig(backend="hf", batch_size=1))
    # float32, the same model: generate's step logits vs one teacher-forced pass, ~1e-6 per token (see vLLM below).
    _check(backend, tiny_llama, tol=1e-4)


def _stop_case(backend):
    """A stop string that certainly occurs mid-completion: the text of a greedy completion's later token."""
    full = backend.generate(["Hello"], SamplingConfig(n=1, temperature=0.0, max_tokens=8))[0][0]
    tok = backend.tokenizer
    for t in range(2, len(full.token_ids)):
        piece = tok.decode(full.token_ids[t:t + 1], skip_special_tokens=True)
        before = tok.decode(full.token_ids[:t], skip_special_tokens=True)
        if piece.strip() and piece not in before:
            return full, piece, t
    raise AssertionError(f"no usable stop string in the greedy completion {full.token_ids}: pick another prompt")


@pytest.mark.parametrize("backend_name", ["hf", pytest.param("vllm", marks=[needs_vllm, pytest.mark.vllm])])
def test_greedy_is_deterministic_and_stop_strings_cut_text_and_ids(tiny_llama, backend_name):
    backend = make_backend("tiny-llama", BackendConfig(backend=backend_name, dtype="float32", cpu_kv_cache_gib=1,
                                                       max_model_len=256))
    a = backend.generate(["Hello"], SamplingConfig(n=2, temperature=0.0, max_tokens=6))
    assert a[0][0].token_ids == a[0][1].token_ids, "greedy decoding is deterministic"
    full, stop, t = _stop_case(backend)
    cut = backend.generate(["Hello"], SamplingConfig(n=1, temperature=0.0, max_tokens=8, stop=[stop]))[0][0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text) and cut.text == full.text[:full.text.find(stop)]
    # The ids are the generated ones up to the token that completed the stop string (kept: pi sampled it).
    assert cut.token_ids == full.token_ids[:t + 1]
    # float32 forward pass vs the backend's own summed log-probs of the same ids: ~1e-6 per token.
    assert cut.logprob == pytest.approx(forward_logprob(tiny_llama, cut.prompt_token_ids, cut.token_ids), abs=1e-4)


@needs_vllm
def test_vllm_backend_samples_and_logprobs(tiny_llama):
    backend = make_backend("tiny-llama", BackendConfig(backend="vllm", dtype="float32", cpu_kv_cache_gib=1,
                                                       max_model_len=256))
    # float32 in both: the engine's per-token log-probs vs one teacher-forced pass differ by kernel rounding only,
    # ~1e-6 per token over 8 tokens; a log-prob of the wrong ids (a shift, a dropped EOS) is off by > 1.
    _check(backend, tiny_llama, tol=1e-4)


def test_fake_backend_is_only_for_unit_tests():
    out = FakeBackend(["a b", "c"]).generate(["x", "y"], SamplingConfig(n=2))
    assert [[s.text for s in o] for o in out] == [["a b", "c"], ["a b", "c"]]


def test_vllm_missing_gives_clear_error(monkeypatch):
    import workbench.generation.backends as b
    from workbench.errors import WorkbenchError

    monkeypatch.setattr(b, "vllm_available", lambda: False)
    monkeypatch.setattr(b.base, "vllm_available", lambda: False)
    monkeypatch.delenv("WORKBENCH_AUTO_BACKEND")  # the default meaning of auto, not the tests' pin
    with pytest.raises(WorkbenchError, match="vllm is not installed"):
        make_backend("tiny-llama", BackendConfig(backend="vllm"))
    assert isinstance(make_backend("tiny-llama", BackendConfig(backend="auto")), b.HFBackend)
    # Pinned to vLLM (as inside every `vllm` test), auto never falls back to HF: a missing vLLM is an error.
    monkeypatch.setenv("WORKBENCH_AUTO_BACKEND", "vllm")
    with pytest.raises(WorkbenchError, match="vllm is not installed"):
        make_backend("tiny-llama", BackendConfig(backend="auto"))


# On a CPU without bf16 instructions vLLM's own "auto" (bf16 for a bf16 checkpoint) decodes 5x slower than float32
# (measured: 35 against 181 tok/s on a 2-core AVX2 EPYC), so the workbench resolves "auto" itself there.
AVX2_FLAGS = "flags\t\t: fpu sse sse2 avx avx2 fma f16c bmi2\n"
AVX512_NO_BF16 = "flags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512_vnni\n"
AVX512_BF16 = "flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
AMX = "processor\t: 0\nflags\t\t: avx2 amx_tile amx_bf16 amx_int8\n"


@pytest.mark.parametrize("cpuinfo, fast", [(AVX2_FLAGS, False), (AVX512_NO_BF16, False), (AVX512_BF16, True),
                                           (AMX, True), ("", False), ("model name\t: avx512_bf16 lookalike\n", False)])
def test_bf16_counts_as_fast_only_with_hardware_bf16_flags(cpuinfo, fast):
    from workbench.generation.backends.base import cpu_has_fast_bf16

    assert cpu_has_fast_bf16(cpuinfo) is fast


def test_vllm_auto_dtype_is_float32_without_bf16_and_explicit_dtypes_pass_through(monkeypatch):
    from workbench.generation.backends import base

    monkeypatch.setattr(base, "cpu_has_fast_bf16", lambda cpuinfo=None: False)
    assert base.vllm_cpu_dtype("auto") == "float32"
    assert base.vllm_cpu_dtype("bfloat16") == "bfloat16"  # asked for explicitly: the user's choice
    monkeypatch.setattr(base, "cpu_has_fast_bf16", lambda cpuinfo=None: True)
    assert base.vllm_cpu_dtype("auto") == "auto"  # vLLM's own choice where bf16 is fast
    assert base.vllm_cpu_dtype("float16") == "float16"
