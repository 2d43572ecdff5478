"""Generation throughput, side by side on the same prompts.

1. The rollouts job (`workbench generate rollouts`) against a bare ``vllm.LLM.generate`` call on the same engine in
   the same process, with the same ``SamplingParams`` the job's backend builds (n, temperature, top_p, max_tokens,
   logprobs=0, one seed per prompt) (target: job/bare >= 0.95: prompt rendering, Parquet shards and bookkeeping
   add little);
2. The vLLM backend against the HF backend, n = 1 at batch ``--hf-prompts`` (>= 16), each in its own process.

    python benchmarks/generation.py [--prompts 16] [--n 4] [--max-tokens 32] [--hf-prompts 16] [--reps 5]

Fairness: every side gets the same warm-up before any timing (one call on the same prompts with ``--warmup-tokens``
new tokens: the job once and the bare call once in (1); one backend call in each process in (2)). Repetitions
alternate the sides (job, bare, bare, job, ... in (1); one process per side and repetition, vllm/hf order swapping
each repetition, in (2)), and the figures are the median, min and max over ``--reps`` repetitions of tokens per
second (generated tokens / wall seconds of the call), with the ratio of the medians. Memory in (2) is the peak RSS of
the process running each backend (``os.wait4``), model and engine included. Writes
``benchmarks/results/generation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import ROOT, begin, run_child, write_record  # noqa: E402

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
TEMPLATE = "{prompt}\nGive the final answer after ####."


def prompt_source(size: int) -> dict:
    return {"kind": "reasoning_gym", "task": "products", "task_config": {"min_digits": 1, "max_digits": 1},
            "size": size}


def messages(size: int) -> list:
    from workbench.config import build
    from workbench.generation import rollouts
    from workbench.generation.prompts import PromptSourceConfig, load_prompts

    records = load_prompts(build(PromptSourceConfig, prompt_source(size)))
    return [rollouts.build_messages(TEMPLATE.format(prompt=r.prompt)) for r in records]


def job_vs_bare(args) -> dict:
    """One process, one engine: the job and the bare call alternate on it."""
    from vllm import SamplingParams

    import workbench.generation.backends as backends
    from workbench.config import build
    from workbench.generation import rollouts
    from workbench.store.shards import read_rows

    backend_cfg = {"backend": "vllm", "cpu_kv_cache_gib": 2, "max_model_len": 1024}
    engine = backends.make_backend(args.model, build(backends.BackendConfig, backend_cfg))
    texts = backends.render_prompts(engine.tokenizer, messages(args.prompts))
    original = backends.make_backend
    backends.make_backend = lambda *a, **k: engine  # the job gets the same engine: measure the job, not a reload

    def bare(max_tokens: int, call: int) -> float:
        # The SamplingParams the backend builds for a job call: same fields, one seed per prompt.
        seed = backends.derive_seed("bench-bare", call)
        params = [SamplingParams(n=args.n, temperature=0.7, top_p=1.0, max_tokens=max_tokens, logprobs=0,
                                 seed=backends.derive_seed(seed, i)) for i in range(len(texts))]
        t = time.perf_counter()
        outs = engine.llm.generate(texts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t)

    def job(max_tokens: int, call: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            cfg = build(rollouts.RolloutsConfig, {
                "job": "rollouts", "run_name": "bench", "output_dir": d, "model": args.model, "seed": call,
                "prompts": prompt_source(args.prompts), "template": TEMPLATE, "backend": backend_cfg,
                "sampling": {"n": args.n, "temperature": 0.7, "max_tokens": max_tokens},
                "sharding": {"shard_size": args.prompts}})
            t = time.perf_counter()
            rollouts.run(cfg)
            elapsed = time.perf_counter() - t
            return sum(r["num_tokens"] for r in read_rows(f"{d}/rollouts")) / elapsed

    try:
        job(args.warmup_tokens, 0)  # the same warm-up for both sides, before any timing
        bare(args.warmup_tokens, 0)
        out = {"job": [], "bare": []}
        for rep in range(args.reps):
            for side in (("job", "bare") if rep % 2 == 0 else ("bare", "job")):
                out[side].append((job if side == "job" else bare)(args.max_tokens, rep + 1))
    finally:
        backends.make_backend = original
    return out


def one_backend(args, kind: str) -> dict:
    """One process per backend and repetition: build, warm up, time one call."""
    import workbench.generation.backends as backends

    cfg = backends.BackendConfig(backend=kind, cpu_kv_cache_gib=2, max_model_len=1024, batch_size=args.hf_prompts)
    backend = backends.make_backend(args.model, cfg)
    batch = messages(args.prompts)[:args.hf_prompts]

    def call(max_tokens: int) -> tuple[int, float]:
        t = time.perf_counter()
        out = backend.generate(batch, backends.SamplingConfig(n=1, temperature=0.7, max_tokens=max_tokens))
        return sum(len(s.token_ids) for o in out for s in o), time.perf_counter() - t

    call(args.warmup_tokens)
    tokens, seconds = call(args.max_tokens)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def worker_cmd(args, worker: str) -> list[str]:
    return [sys.executable, __file__, "--worker", worker, "--model", args.model, "--prompts", str(args.prompts),
            "--n", str(args.n), "--max-tokens", str(args.max_tokens), "--hf-prompts", str(args.hf_prompts),
            "--reps", str(args.reps), "--warmup-tokens", str(args.warmup_tokens)]


def run_worker(args, worker: str) -> tuple[dict, float]:
    child = run_child(worker_cmd(args, worker), env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
    if child.returncode or not line:
        raise SystemExit(f"worker {worker} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
    return json.loads(line[-1][7:]), child.max_rss_kib / 1024


def main() -> int:
    started = begin()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--hf-prompts", type=int, default=16, help="batch of the vLLM-vs-HF comparison (n = 1)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup-tokens", type=int, default=8)
    ap.add_argument("--results-dir", type=Path, default=None)
    ap.add_argument("--worker", choices=["job-vs-bare", "vllm", "hf"], default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_prompts > args.prompts:
        raise SystemExit(f"--hf-prompts {args.hf_prompts} > --prompts {args.prompts}: the batch is taken from them")
    if args.worker:
        result = job_vs_bare(args) if args.worker == "job-vs-bare" else one_backend(args, args.worker)
        print("RESULT " + json.dumps(result))
        return 0

    jb, jb_rss = run_worker(args, "job-vs-bare")
    print(f"[generation] job {jb['job']}, bare {jb['bare']}", file=sys.stderr)
    backends_runs: dict[str, list[dict]] = {"vllm": [], "hf": []}
    for rep in range(args.reps):
        for kind in (("vllm", "hf") if rep % 2 == 0 else ("hf", "vllm")):
            result, rss = run_worker(args, kind)
            backends_runs[kind].append({**result, "peak_rss_mib": rss})
            print(f"[generation] rep {rep + 1}/{args.reps} {kind}: {result['tokens_per_s']:.1f} tok/s, "
                  f"peak RSS {rss:.0f} MiB", file=sys.stderr)

    stats = {"job": summary(jb["job"]), "bare": summary(jb["bare"]),
             **{k: summary([r["tokens_per_s"] for r in rs]) for k, rs in backends_runs.items()}}
    rss = {k: summary([r["peak_rss_mib"] for r in rs]) for k, rs in backends_runs.items()}
    ratio_job = stats["job"]["median"] / stats["bare"]["median"]
    ratio_backend = stats["vllm"]["median"] / stats["hf"]["median"]
    row = lambda label, s, mem="-": [label, s["median"], s["min"], s["max"], mem]  # noqa: E731
    payload = {
        "title": "Generation throughput: rollouts job vs bare vLLM, vLLM vs HF backend (`benchmarks/generation.py`)",
        "tables": [
            {"title": f"{args.model}, reasoning-gym products prompts, T=0.7, max {args.max_tokens} new tokens, "
                      f"{args.reps} alternating repetitions after the same warm-up",
             "columns": ["measurement", "tokens/s median", "min", "max", "peak RSS of the process running it, MiB"],
             "rows": [row(f"bare `vllm.LLM.generate` ({args.prompts} prompts x n={args.n})", stats["bare"],
                          f"{jb_rss:.0f} (one process for both)"),
                      row("`workbench generate rollouts` (same engine, prompts, SamplingParams)", stats["job"],
                          f"{jb_rss:.0f} (one process for both)"),
                      row(f"vLLM backend, batch {args.hf_prompts}, n=1", stats["vllm"], f"{rss['vllm']['median']:.0f}"),
                      row(f"HF backend, batch {args.hf_prompts}, n=1", stats["hf"], f"{rss['hf']['median']:.0f}")],
             "formats": ["", ".1f", ".1f", ".1f", ""]},
            {"title": "Ratios of the medians", "columns": ["comparison", "ratio", "target"],
             "rows": [["job / bare", ratio_job, f">= 0.95: {'met' if ratio_job >= 0.95 else '**not met**'}"],
                      ["vLLM backend / HF backend", ratio_backend, "-"]],
             "formats": ["", ".3f", ""]},
        ],
        "notes": [f"Warm-up before timing: one call with {args.warmup_tokens} new tokens on the same prompts, for "
                  "each side (job and bare in the shared process; each backend in its own process).",
                  "Peak RSS for the backends: median over the repetitions of each process's own peak "
                  f"(vLLM {rss['vllm']['min']:.0f}-{rss['vllm']['max']:.0f} MiB, HF {rss['hf']['min']:.0f}-"
                  f"{rss['hf']['max']:.0f} MiB)."],
        "results": {"setup": {k: v for k, v in vars(args).items() if k not in ("worker", "results_dir")},
                    "tokens_per_s": stats, "peak_rss_mib": rss, "job_vs_bare_process_peak_rss_mib": jb_rss,
                    "ratio_job_over_bare": ratio_job, "ratio_vllm_over_hf": ratio_backend,
                    "runs": {"job_vs_bare": jb, **backends_runs}},
    }
    write_record("generation", payload, started, args.results_dir)
    print(f"job/bare = {ratio_job:.3f}, vllm/hf = {ratio_backend:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
