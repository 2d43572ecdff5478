#!/usr/bin/env bash
# Launch: scripts/gpu_acceptance.sh [--dry-run] [--model NAME_OR_PATH] [--out DIR]
#
# The acceptance run for the first CUDA machine: reduced versions of every recipes/*/gpu_*.yaml (the model overridable,
# so nothing is downloaded: the embedded SmolLM2 by default), each through the launcher its recipe states, then the
# HyPO sampler's weight-sync checks (tests/test_weight_sync.py and tests/test_vllm_server.py, on the GPU) and a generation throughput figure. It
# writes benchmarks/results/gpu_acceptance.json (each step's command, exit code, wall time; tokens/s; the GPUs).
#
# --dry-run validates every step's recipe with `workbench check` and prints the commands, on any machine (CPU CI runs
# it: tests/test_gpu_acceptance.py). Steps run in order and the script goes on after a failed step, so one run
# reports them all; it exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
MODEL=smollm2-135m-instruct
OUT=runs/gpu-acceptance
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --model) MODEL="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--dry-run] [--model NAME_OR_PATH] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ "$DRY" = 0 ]; then
  if ! nvidia-smi -L >/dev/null 2>&1; then echo "no CUDA GPU (nvidia-smi -L failed); use --dry-run" >&2; exit 2; fi
  GPUS=$(nvidia-smi -L | wc -l)
else
  GPUS=1
fi
TP=$(( GPUS >= 2 ? 2 : 1 ))
LAUNCH="$PY -m accelerate.commands.launch --num_processes $GPUS"
WB="$PY -m workbench"
mkdir -p "$OUT"
LOG="$OUT/steps.tsv"
: > "$LOG"

# Small offline data: reasoning-gym prompts for generation and the loop, the GSM8K-format fixture for GRPO.
PROMPTS="prompts.kind=reasoning_gym prompts.task=products prompts.path=null prompts.size=64"
PROMPTS+=" prompts.task_config={min_digits:1,max_digits:2}"

# name | recipe | launcher prefix (empty: plain workbench) | command words | overrides
STEPS=(
  "generate|recipes/generate/gpu_qwen7b_tp2_gsm8k.yaml||generate rollouts|model=$MODEL backend.tensor_parallel_size=$TP backend.max_model_len=2048 sampling.n=4 sampling.max_tokens=256 $PROMPTS output_dir=$OUT/generate"
  "verify|recipes/generate/smollm2_products_verify.yaml||verify|input_dir=$OUT/generate output_dir=$OUT/verify"
  "pairs|recipes/generate/smollm2_products_pairs.yaml||pairs|input_dir=$OUT/verify output_dir=$OUT/pairs prune.drop_all_passed=false prune.drop_none_passed=false margin=0.0"
  "dpo_zero3|recipes/dpo/gpu_qwen7b_full.yaml|--config_file recipes/accelerate/zero3.yaml|train|model=$MODEL data.path=$OUT/pairs optim.max_steps=4 optim.save_steps=2 optim.report_to=[] dpo.max_length=512 output_dir=$OUT/dpo"
  "dpo_fsdp|recipes/dpo/gpu_qwen7b_full.yaml|--config_file recipes/accelerate/fsdp.yaml|train|model=$MODEL data.path=$OUT/pairs optim.max_steps=4 optim.save_steps=2 optim.report_to=[] dpo.max_length=512 output_dir=$OUT/dpo_fsdp"
  "hypo_zero2|recipes/hypo/gpu_qwen7b_lora.yaml|--config_file recipes/accelerate/zero2.yaml|train|model=$MODEL data.path=$OUT/pairs optim.max_steps=4 optim.save_steps=2 hypo.max_new_tokens=128 hypo.vllm.max_model_len=2048 dpo.max_length=512 output_dir=$OUT/hypo"
  "grpo_qlora|recipes/grpo/gpu_qwen7b_qlora.yaml|--config_file recipes/accelerate/ddp.yaml|train|model=$MODEL data.path=tests/fixtures/gsm8k_tiny.jsonl optim.max_steps=2 optim.save_steps=1 grpo.max_completion_length=128 output_dir=$OUT/grpo"
  "loop|recipes/loop/gpu_qwen7b_gsm8k.yaml|--config_file recipes/accelerate/ddp.yaml|loop|model=$MODEL iterations=1 $PROMPTS prompts.size=32 grpo.optim.max_steps=2 grpo.max_completion_length=128 rollouts.sampling.max_tokens=256 rollouts.backend.max_model_len=2048 verifier.options.judge.model=$MODEL verifier.options.judge.backend.max_model_len=2048 preference.optim.max_steps=2 preference.hypo.max_new_tokens=128 eval.task.name=reasoning_gym:products eval.task.size=16 eval.sampling.max_tokens=256 output_dir=$OUT/loop"
)

failed=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name recipe launcher words overrides <<<"$step"
  # shellcheck disable=SC2086
  if ! $WB check "$recipe" $overrides >/dev/null 2>"$OUT/$name.check.err"; then
    echo "FAIL $name: recipe check: $(tail -1 "$OUT/$name.check.err")"; failed=1; continue
  fi
  if [ -n "$launcher" ]; then cmd="$LAUNCH $launcher -m workbench $words --config $recipe $overrides"
  else cmd="$WB $words --config $recipe $overrides"; fi
  if [ "$DRY" = 1 ]; then echo "$name: $cmd"; continue; fi
  echo "=== $name: $cmd"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  eval "$cmd" >"$OUT/$name.log" 2>&1; code=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$(( $(date +%s) - t0 ))" "$cmd" >>"$LOG"
  [ "$code" = 0 ] || { echo "FAIL $name (exit $code): see $OUT/$name.log"; failed=1; }
done

# HyPO against a vLLM server (hypo.sampler: server): the server in its own process group on this node, the trainer as
# its client; the same two commands run on two nodes (recipes/hypo/gpu_qwen7b_server.yaml).
SRV_RECIPE=recipes/hypo/gpu_qwen7b_server.yaml
SRV_OVER="model=$MODEL hypo.server.port=8765 hypo.vllm.max_model_len=2048 hypo.vllm.gpu_memory_utilization=0.3"
SRV_TRAIN="$SRV_OVER data.path=$OUT/pairs optim.max_steps=2 optim.save_steps=2 hypo.sync_every=1 hypo.max_new_tokens=128 dpo.max_length=512 output_dir=$OUT/hypo_server"
serve_cmd="$WB serve --config $SRV_RECIPE $SRV_OVER --host 127.0.0.1"
srv_train_cmd="$WB train --config $SRV_RECIPE $SRV_TRAIN"
# shellcheck disable=SC2086
if ! $WB check "$SRV_RECIPE" $SRV_TRAIN >/dev/null 2>"$OUT/hypo_server.check.err"; then
  echo "FAIL hypo_server: recipe check: $(tail -1 "$OUT/hypo_server.check.err")"; failed=1
elif [ "$DRY" = 1 ]; then
  echo "hypo_server: $serve_cmd & then $srv_train_cmd"
else
  echo "=== hypo_server: $serve_cmd & then $srv_train_cmd"
  t0=$(date +%s)
  setsid $serve_cmd >"$OUT/hypo_server.serve.log" 2>&1 &
  srv=$!
  for _ in $(seq 600); do curl -sf http://127.0.0.1:8765/health >/dev/null && break; sleep 1; done
  eval "$srv_train_cmd" >"$OUT/hypo_server.log" 2>&1; code=$?
  kill -TERM -- "-$srv" 2>/dev/null; sleep 10; kill -KILL -- "-$srv" 2>/dev/null
  printf '%s\t%s\t%s\t%s\n' "hypo_server" "$code" "$(( $(date +%s) - t0 ))" "$srv_train_cmd" >>"$LOG"
  [ "$code" = 0 ] || { echo "FAIL hypo_server (exit $code): see $OUT/hypo_server.log"; failed=1; }
fi

sync_cmd="$PY -m pytest -q -p no:cacheprovider tests/test_weight_sync.py tests/test_vllm_server.py"
if [ "$DRY" = 1 ]; then
  echo "weight_sync: $sync_cmd"
  exit $failed
fi
t0=$(date +%s)
WORKBENCH_TEST_DEVICE=cuda $sync_cmd >"$OUT/weight_sync.log" 2>&1; code=$?
printf '%s\t%s\t%s\t%s\n' "weight_sync" "$code" "$(( $(date +%s) - t0 ))" "$sync_cmd" >>"$LOG"
[ "$code" = 0 ] || { echo "FAIL weight_sync: see $OUT/weight_sync.log"; failed=1; }

$PY - "$OUT" "$MODEL" <<'PY'
import json, subprocess, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from record import begin, write_record

out, model = Path(sys.argv[1]), sys.argv[2]
started = begin()
steps = [dict(zip(("step", "exit_code", "seconds", "command"), line.split("\t")))
         for line in (out / "steps.tsv").read_text().splitlines()]
tokens_per_s = None
metrics = out / "generate" / "metrics.jsonl"
if metrics.exists():
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    tokens_per_s = next((r["throughput/tokens_per_s"] for r in rows if "throughput/tokens_per_s" in r), None)
gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
write_record("gpu_acceptance", {
    "title": "GPU acceptance (scripts/gpu_acceptance.sh)",
    "tables": [{"title": f"Reduced gpu_* recipes on {len(gpus)} GPU(s), model {model}",
                "columns": ["step", "exit code", "seconds"],
                "rows": [[s["step"], int(s["exit_code"]), int(s["seconds"])] for s in steps]}],
    "notes": [f"GPUs: {'; '.join(gpus)}", f"generation throughput (rollouts job): {tokens_per_s} tokens/s"],
    "results": {"steps": steps, "gpus": gpus, "model": model, "generation_tokens_per_s": tokens_per_s}}, started)
PY
exit $failed
