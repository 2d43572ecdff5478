"""Generation throughput, measured side by side in one run on the same prompts.

1. The rollouts job against a bare ``vllm.LLM.generate`` call on the same engine (target >= 0.95: the job's
   prompt rendering, Parquet shards and bookkeeping add little).
2. The vLLM backend against the HF backend on SmolLM2 at batch >= 16.

    .venv/bin/python benchmarks/generation.py [--prompts 64] [--n 4] [--max-tokens 128]

Prints a table and the two ratios; record them with the machine and date in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-prompts", type=int, default=32, help="prompts for the vLLM-vs-HF comparison (batch)")
    args = ap.parse_args()

    from vllm import SamplingParams

    import workbench.generation.backends as backends
    from workbench.config import build
    from workbench.generation import rollouts
    from workbench.generation.prompts import PromptSourceConfig, load_prompts

    src = {"kind": "reasoning_gym", "task": "products", "task_config": {"min_digits": 1, "max_digits": 1},
           "size": args.prompts}
    records = load_prompts(build(PromptSourceConfig, src))
    template = "{prompt}\nGive the final answer after ####."
    messages = [rollouts.build_messages(template.format(prompt=r.prompt)) for r in records]
    cfg = backends.BackendConfig(backend="vllm", cpu_kv_cache_gib=2, max_model_len=1024)
    vllm_backend = backends.make_backend(args.model, cfg)
    texts = backends.render_prompts(vllm_backend.tokenizer, messages)
    params = SamplingParams(n=args.n, temperature=0.7, max_tokens=args.max_tokens, logprobs=0)
    vllm_backend.llm.generate(texts[:4], params, use_tqdm=False)  # warm-up

    # 1) bare vLLM vs the job, same engine, same prompts; alternate to spread drift, keep the best of two.
    def bare() -> float:
        t = time.perf_counter()
        outs = vllm_backend.llm.generate(texts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t)

    def job() -> float:
        with tempfile.TemporaryDirectory() as d:
            job_cfg = build(rollouts.RolloutsConfig, {
                "job": "rollouts", "run_name": "bench", "output_dir": d, "model": args.model, "prompts": src,
                "template": template, "backend": {"backend": "vllm", "cpu_kv_cache_gib": 2, "max_model_len": 1024},
                "sampling": {"n": args.n, "temperature": 0.7, "max_tokens": args.max_tokens},
                "sharding": {"shard_size": args.prompts}})
            original = backends.make_backend
            backends.make_backend = lambda *a, **k: vllm_backend  # the same engine: measure the job, not a reload
            try:
                t = time.perf_counter()
                rollouts.run(job_cfg)
                elapsed = time.perf_counter() - t
            finally:
                backends.make_backend = original
            from workbench.generation.shards import read_rows

            return sum(r["num_tokens"] for r in read_rows(f"{d}/rollouts")) / elapsed

    bare_tps, job_tps = [], []
    for _ in range(2):
        bare_tps.append(bare())
        job_tps.append(job())
    bare_best, job_best = max(bare_tps), max(job_tps)

    # 2) vLLM backend vs HF backend, batch = hf_prompts, n = 1.
    batch = messages[:args.hf_prompts]
    one = backends.SamplingConfig(n=1, temperature=0.7, max_tokens=args.max_tokens)

    def tps(backend) -> float:
        t = time.perf_counter()
        out = backend.generate(batch, one)
        return sum(len(s.token_ids) for o in out for s in o) / (time.perf_counter() - t)

    vllm_tps = max(tps(vllm_backend) for _ in range(2))
    hf_backend = backends.make_backend(args.model, backends.BackendConfig(backend="hf", batch_size=args.hf_prompts))
    hf_tps = tps(hf_backend)

    print(f"# generation benchmark, {date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, model {args.model}")
    print("| measurement | tokens/s |\n|---|---|")
    print(f"| bare vllm.LLM.generate ({args.prompts} prompts x n={args.n}) | {bare_best:.1f} |")
    print(f"| workbench generate rollouts (same engine and prompts) | {job_best:.1f} |")
    print(f"| vLLM backend, batch {args.hf_prompts}, n=1 | {vllm_tps:.1f} |")
    print(f"| HF backend, batch {args.hf_prompts}, n=1 | {hf_tps:.1f} |")
    print(f"ratio job/bare = {job_best / bare_best:.3f} (target >= 0.95)")
    print(f"ratio vllm/hf = {vllm_tps / hf_tps:.2f}")


if __name__ == "__main__":
    main()
