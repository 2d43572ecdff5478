"""Same commit, recipe and seed on one machine: byte-identical rollouts and eval samples, with both backends.

vLLM is also run once with its engine in its own process (VLLM_ENABLE_V1_MULTIPROCESSING=1, as on a GPU): per-prompt
seeds make its samples independent of how requests are batched, so the two engine modes draw the same samples.
A different seed must change the samples (else "identical" would prove nothing).
"""

import hashlib

import pyarrow.parquet as pq
import pytest

from conftest import needs_vllm, run_cli


def _digest(run_dir):
    """sha256 of every generated shard and of samples.parquet, by relative path."""
    files = sorted(run_dir.glob("generations/rollouts/shard-*.parquet")) + sorted(
        run_dir.glob("kl_samples/rollouts/shard-*.parquet")) + [run_dir / "samples.parquet"]
    assert len(files) >= 2
    return {str(f.relative_to(run_dir)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _eval(out, backend, *extra, env=None):
    run_cli("eval", "reasoning", "--config", "recipes/tiny/eval_reasoning.yaml", f"output_dir={out}",
            f"backend.backend={backend}", "kl.n=2", *extra, env=env)
    return _digest(out)


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=[needs_vllm, pytest.mark.vllm])])
def test_same_seed_gives_byte_identical_samples(tmp_path, backend):
    first = _eval(tmp_path / "a", backend)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"} if backend == "vllm" else None
    assert _eval(tmp_path / "b", backend, env=env) == first
    rows = pq.read_table(tmp_path / "a" / "samples.parquet").to_pylist()
    assert all(r["completion_token_ids"] and r["prompt_token_ids"] for r in rows)
    other = pq.read_table(_eval_path(tmp_path / "c", backend, "seed=1")).to_pylist()
    assert [r["completion_token_ids"] for r in other] != [r["completion_token_ids"] for r in rows]


def _eval_path(out, backend, *extra):
    _eval(out, backend, *extra)
    return out / "samples.parquet"


@pytest.mark.vllm
def test_vllm_per_prompt_seeds_survive_batches_larger_than_a_prefill_chunk(tiny_llama):
    """192 requests of ~40 tokens (7,680 prompt tokens) exceed vLLM's default 4,096-token step budget. With chunked
    prefill, vLLM-CPU then crashed on per-request seeds ("CPU Generator does not use offset", the quickstart's first
    stage); the backend turns chunking off on CPU. A prompt's samples depend on its seed, not on its batch."""
    from workbench.generation.backends import BackendConfig, SamplingConfig, make_backend

    backend = make_backend("tiny-llama", BackendConfig(backend="vllm", cpu_kv_cache_gib=1, max_model_len=256))
    prompts = [" ".join(["What is the total number of apples and books"] * 4) + f" {i}?" for i in range(48)]
    assert sum(len(backend.tokenizer(p)["input_ids"]) for p in prompts) * 4 > 4096
    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=4)
    a = backend.generate(prompts, sampling, seed=3)
    assert len(a) == 48 and all(len(x) == 4 for x in a)
    alone = backend.generate(prompts[:5], sampling, seed=3)  # prompt i keeps seed derive_seed(3, i), in a smaller batch
    assert [[s.token_ids for s in x] for x in alone] == [[s.token_ids for s in x] for x in a[:5]]
    other = backend.generate(prompts[:5], sampling, seed=4)
    assert [[s.token_ids for s in x] for x in other] != [[s.token_ids for s in x] for x in a[:5]]
