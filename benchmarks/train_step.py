"""Training step cost, side by side: our DPO trainer vs a bare `trl.DPOTrainer`, and HyPO vs DPO.

1. Our DPO (`workbench train`'s trainer, `build_trainer`) against a bare `trl.DPOTrainer` given the *same*
   `DPOConfig`, the same model, tokenizer, LoRA and rows (goal: <= 1.05x time and memory);
2. HyPO against our DPO (goal: HyPO <= 1.5x DPO time at k = 2 with vLLM sampling).

    python benchmarks/train_step.py [--steps 3] [--reps 5] [--pairs FILE] [--model smollm2-135m-instruct]

Works from a fresh clone: without ``--pairs`` it writes its own 32 conversational pairs (reasoning-gym `products`
prompts with the quickstart's template; chosen: ``a * b = <product>``, rejected: the same sentence with a wrong product)
to a temporary file. Both recipes are loaded with ``data.eval_path=null``: no side evaluates, so no side depends on
an earlier run's held-out pairs.

Each (trainer, repetition) runs in its own process: build the trainer, one warm-up optimizer step (and, for HyPO,
the first vLLM weight sync), then ``--steps`` timed steps. The processes alternate, the order rotating each
repetition (bare, dpo, hypo; dpo, hypo, bare; ...), so drifts in machine load hit every side alike. Reported per
trainer: median, min and max over the repetitions of seconds per step, and the peak RSS of the process running that
trainer (``os.wait4``; CPU), plus the ratios of the medians. Writes ``benchmarks/results/train_step.json``.
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

KINDS = ("bare", "dpo", "hypo")
LABELS = {"bare": "bare `trl.DPOTrainer`", "dpo": "ours, `method: dpo`", "hypo": "ours, `method: hypo`"}
TEMPLATE = "{prompt}\nGive the final answer after ####."  # the quickstart's rollouts template


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` conversational preference pairs in TRL's format, with no model and no earlier run needed."""
    import random

    from workbench.config import build
    from workbench.generation.prompts import PromptSourceConfig, load_prompts

    src = build(PromptSourceConfig, {"kind": "reasoning_gym", "task": "products", "size": n, "seed": seed,
                                     "task_config": {"min_digits": 1, "max_digits": 1}})
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for r in load_prompts(src):
            ref = json.loads(r.reference)  # reasoning-gym's entry: {"answer": ..., "metadata": {"expression": ...}}
            right, expression = int(ref["answer"]), ref["metadata"]["expression"]
            wrong = right + rng.choice([-10, -2, -1, 1, 2, 10])

            def answer(value: int) -> list[dict]:
                return [{"role": "assistant", "content": f"Multiplying step by step: {expression} = {value}.\n"
                                                         f"#### {value}"}]

            fh.write(json.dumps({"prompt": [{"role": "user", "content": TEMPLATE.format(prompt=r.prompt)}],
                                 "chosen": answer(right), "rejected": answer(wrong)}) + "\n")
    return path


def measure(kind: str, model: str, pairs: str, steps: int, k: int, batch: int, max_length: int) -> dict:
    """Runs in its own process: build the trainer, one warm-up step, then time `steps` optimizer steps."""
    import torch
    from transformers import TrainerCallback

    from workbench.jobs import load_recipe
    from workbench.training.preference import _dpo_args, build_trainer, load_policy, load_role_dataset

    out = Path(tempfile.mkdtemp(prefix=f"train-step-{kind}-"))
    overrides = [f"model={model}", f"data.path={pairs}", "data.eval_path=null", f"output_dir={out}",
                 f"optim.max_steps={steps + 1}", f"optim.per_device_train_batch_size={batch}",
                 "optim.save_steps=100000", "optim.logging_steps=1", f"dpo.max_length={max_length}",
                 "lora={r: 16, alpha: 32}"]
    if kind == "hypo":
        recipe = ROOT / "recipes/hypo/smollm2_products_lora.yaml"
        overrides += [f"hypo.k={k}", "hypo.sampler=vllm", "hypo.max_new_tokens=64"]
    else:
        recipe = ROOT / "recipes/dpo/smollm2_products_lora.yaml"
    cfg = load_recipe(recipe, overrides)
    if kind == "bare":
        from trl import DPOTrainer

        # The same model loading, rows, LoRA and TRL arguments as ours (`_dpo_args` is what build_trainer passes),
        # so the difference measured is our trainer construction, not a different configuration.
        _, policy, tok = load_policy(cfg)
        trainer = DPOTrainer(model=policy, args=_dpo_args(cfg, out),
                             train_dataset=load_role_dataset(cfg.data, ("prompt", "chosen", "rejected")),
                             processing_class=tok, peft_config=cfg.lora.peft_config())
    else:
        trainer = build_trainer(cfg, out)

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:  # after the warm-up step (and, for HyPO, the first weight sync)
                marks["t0"] = time.perf_counter()

    trainer.add_callback(Clock())
    trainer.train()
    seconds = (time.perf_counter() - marks["t0"]) / steps
    share = [h["hypo/gen_time_share"] for h in trainer.state.log_history[1:] if "hypo/gen_time_share" in h]
    return {"kind": kind, "step_seconds": seconds,
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "gen_time_share": statistics.mean(share) if share else None}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    started = begin()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", default=None, help="pairs (JSONL/Parquet/pairs run); default: 32 written here")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per process, after 1 warm-up step")
    ap.add_argument("--reps", type=int, default=5, help="processes per trainer, alternating")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--results-dir", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker, args.model, args.pairs, args.steps, args.k, args.batch,
                                             args.max_length)))
        return 0

    pairs = args.pairs or str(write_pairs(Path(tempfile.mkdtemp(prefix="train-step-")) / "pairs.jsonl", 32))
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for rep in range(args.reps):
        order = KINDS[rep % len(KINDS):] + KINDS[:rep % len(KINDS)]
        for kind in order:
            child = run_child([sys.executable, __file__, "--worker", kind, "--model", args.model, "--pairs", pairs,
                               "--steps", str(args.steps), "--k", str(args.k), "--batch", str(args.batch),
                               "--max-length", str(args.max_length)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = [x for x in child.stdout.splitlines() if x.startswith("RESULT ")]
            if child.returncode or not line:
                raise SystemExit(f"{kind} (repetition {rep + 1}) failed:\n{child.stderr[-3000:]}")
            result = {**json.loads(line[-1][7:]), "peak_rss_mib": child.max_rss_kib / 1024, "rep": rep,
                      "process_wall_s": child.wall_s}
            runs[kind].append(result)
            print(f"[train_step] rep {rep + 1}/{args.reps} {kind}: {result['step_seconds']:.2f} s/step, "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB", file=sys.stderr)

    stats = {kind: {"step_seconds": summary([r["step_seconds"] for r in rs]),
                    "peak_rss_mib": summary([r["peak_rss_mib"] for r in rs]),
                    "gen_time_share": summary([r["gen_time_share"] for r in rs]) if rs[0]["gen_time_share"] else None}
             for kind, rs in runs.items()}
    med = {kind: {m: stats[kind][m]["median"] for m in ("step_seconds", "peak_rss_mib")} for kind in KINDS}

    def paired(a: str, b: str) -> list[float]:  # per repetition a/b, to show the spread of the ratio itself
        return [x["step_seconds"] / y["step_seconds"] for x, y in zip(runs[a], runs[b])]

    ratios = {
        "dpo_over_bare_time": med["dpo"]["step_seconds"] / med["bare"]["step_seconds"],
        "dpo_over_bare_memory": med["dpo"]["peak_rss_mib"] / med["bare"]["peak_rss_mib"],
        "hypo_over_dpo_time": med["hypo"]["step_seconds"] / med["dpo"]["step_seconds"],
        "hypo_over_dpo_memory": med["hypo"]["peak_rss_mib"] / med["dpo"]["peak_rss_mib"],
        "dpo_over_bare_time_per_rep": summary(paired("dpo", "bare")),
        "hypo_over_dpo_time_per_rep": summary(paired("hypo", "dpo")),
    }
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    rows = []
    for kind in KINDS:
        s, m, g = stats[kind]["step_seconds"], stats[kind]["peak_rss_mib"], stats[kind]["gen_time_share"]
        rows.append([LABELS[kind], s["median"], s["min"], s["max"], m["median"], m["min"], m["max"],
                     g["median"] if g else None])
    setup = (f"{args.model}, LoRA r=16, batch {args.batch} pairs, max_length {args.max_length}, "
             f"{args.steps} timed step(s) after 1 warm-up step per process, {args.reps} processes per trainer "
             f"(alternating), HyPO k={args.k} with a vLLM sampler synced every step; pairs: "
             f"{args.pairs or '32 written by the script (reasoning-gym products)'}; no eval set on any side.")
    payload = {
        "title": "Training step: ours vs bare TRL, HyPO vs DPO (`benchmarks/train_step.py`)",
        "tables": [
            {"title": "Per trainer (each repetition its own process)",
             "columns": ["trainer", "s/step median", "min", "max", "peak RSS of the process running it, MiB median",
                         "min", "max", "generation share of the step"],
             "rows": rows, "formats": ["", ".2f", ".2f", ".2f", ".0f", ".0f", ".0f", ".2f"]},
            {"title": "Ratios (of the medians; per-repetition time ratios as min-max)",
             "columns": ["comparison", "time", "time, per repetition (min-max)", "peak RSS", "goal"],
             "rows": [["ours DPO / bare TRL DPO", ratios["dpo_over_bare_time"],
                       f"{ratios['dpo_over_bare_time_per_rep']['min']:.2f}-"
                       f"{ratios['dpo_over_bare_time_per_rep']['max']:.2f}", ratios["dpo_over_bare_memory"],
                       "<= 1.05 time and memory: time "
                       f"{met(ratios['dpo_over_bare_time'] <= 1.05)}, memory "
                       f"{met(ratios['dpo_over_bare_memory'] <= 1.05)}"],
                      ["HyPO / DPO (ours)", ratios["hypo_over_dpo_time"],
                       f"{ratios['hypo_over_dpo_time_per_rep']['min']:.2f}-"
                       f"{ratios['hypo_over_dpo_time_per_rep']['max']:.2f}", ratios["hypo_over_dpo_memory"],
                       f"<= 1.5 time at k=2: {met(ratios['hypo_over_dpo_time'] <= 1.5)}"]],
             "formats": ["", ".3f", "", ".3f", ""]},
        ],
        "notes": [setup, "Peak RSS is each trainer process's own peak (model load included); the HyPO process also "
                         "holds its colocated vLLM engine (CPU KV cache 1 GiB)."],
        "results": {"setup": {k: v for k, v in vars(args).items() if k not in ("worker", "results_dir")}
                              | {"pairs": pairs}, "stats": stats, "ratios": ratios, "runs": runs},
    }
    write_record("train_step", payload, started, args.results_dir)
    for row in rows:
        print(row)
    print(json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
