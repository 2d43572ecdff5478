"""Training step cost, measured side by side in one run on the same batches.

1. HyPO against DPO: step time and peak memory (goal: HyPO <= 1.5x DPO at k = 2 with vLLM sampling).
2. Our DPO (`workbench train`'s trainer) against a bare `trl.DPOTrainer` with the same settings (goal: <= 1.05x time
   and memory).

    .venv/bin/python benchmarks/train_step.py [--model smollm2-135m-instruct] [--steps 6] [--pairs PATH]

Peak memory is the process's peak RSS growth during the measured steps on CPU (torch.cuda.max_memory_allocated on
GPU). Each trainer runs in its own subprocess so peaks do not mix; the same pairs, seed, batch size, LoRA and
max_length are used throughout. Record the printed figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(kind: str, model: str, pairs: str, steps: int, k: int, batch: int) -> dict:
    """Runs in a subprocess: build the trainer, warm up one step, then time `steps` optimizer steps."""
    import torch

    from workbench.config import load_recipe

    out = Path(tempfile.mkdtemp())
    overrides = [f"model={model}", f"data.path={pairs}", f"output_dir={out}", f"optim.max_steps={steps + 1}",
                 f"optim.per_device_train_batch_size={batch}", "optim.save_steps=100000", "optim.logging_steps=1",
                 "dpo.max_length=256", "lora={r: 16, alpha: 32}"]
    if kind == "hypo":
        recipe = REPO / "recipes/hypo/smollm2_products_lora.yaml"
        overrides += [f"hypo.k={k}", "hypo.sampler=vllm", "hypo.max_new_tokens=64"]
    else:
        recipe = REPO / "recipes/dpo/smollm2_products_lora.yaml"
    cfg = load_recipe(recipe, overrides)
    if kind == "bare":
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        from workbench.models import resolve_model
        from workbench.training.preference import load_role_dataset

        path = resolve_model(model)
        tok = AutoTokenizer.from_pretrained(path)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                             args=DPOConfig(output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=batch,
                                            learning_rate=cfg.optim.learning_rate, beta=cfg.dpo.beta, max_length=256,
                                            save_strategy="no", logging_steps=1, report_to="none", seed=cfg.seed,
                                            data_seed=cfg.seed, use_cpu=not torch.cuda.is_available()),
                             train_dataset=load_role_dataset(cfg.data, ("prompt", "chosen", "rejected")),
                             processing_class=tok, peft_config=cfg.lora.peft_config())
    else:
        from workbench.training.preference import build_trainer

        trainer = build_trainer(cfg, out)
    from transformers import TrainerCallback

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:  # after the warm-up step (and, for HyPO, the first weight sync)
                marks["t0"] = time.perf_counter()
                marks["rss0"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()

    trainer.add_callback(Clock())
    trainer.train()
    seconds = (time.perf_counter() - marks["t0"]) / steps
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    share = [h.get("hypo/gen_time_share") for h in trainer.state.log_history if "hypo/gen_time_share" in h]
    return {"kind": kind, "step_seconds": seconds, "peak_mb": peak_mb,
            "gen_time_share": sum(share) / len(share) if share else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", default="runs/smollm2-products-pairs")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker, args.model, args.pairs, args.steps, args.k, args.batch)))
        return
    if not Path(args.pairs).exists():
        raise SystemExit(f"{args.pairs} not found: run recipes/generate/smollm2_products{{,_verify,_pairs}}.yaml "
                         "first, or pass --pairs")
    results = {}
    for kind in ("bare", "dpo", "hypo"):
        proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", args.model, "--pairs",
                               args.pairs, "--steps", str(args.steps), "--k", str(args.k), "--batch", str(args.batch)],
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
        results[kind] = json.loads(line[-1][7:])
    r = results
    print(f"# train-step benchmark, {date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"CPUs, model {args.model}, batch {args.batch}, LoRA r=16, {args.steps} timed steps")
    print("| trainer | s/step | peak MB | generation share |\n|---|---|---|---|")
    for kind in ("bare", "dpo", "hypo"):
        share = r[kind]["gen_time_share"]
        print(f"| {kind} | {r[kind]['step_seconds']:.2f} | {r[kind]['peak_mb']:.0f} | "
              f"{'-' if share is None else f'{share:.2f}'} |")
    print(f"HyPO/DPO time = {r['hypo']['step_seconds'] / r['dpo']['step_seconds']:.2f}x (goal <= 1.5x at k={args.k}), "
          f"memory = {r['hypo']['peak_mb'] / r['dpo']['peak_mb']:.2f}x")
    print(f"ours/bare DPO time = {r['dpo']['step_seconds'] / r['bare']['step_seconds']:.3f}x, "
          f"memory = {r['dpo']['peak_mb'] / r['bare']['peak_mb']:.3f}x (goal <= 1.05x)")


if __name__ == "__main__":
    main()
