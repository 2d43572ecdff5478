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
