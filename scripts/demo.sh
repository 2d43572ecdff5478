#!/usr/bin/env bash
# `make demo`: the main job on the embedded defaults. Until `workbench quickstart` exists (issue 9), this runs the most
# complete real pipeline that exists: list the defaults, then SmolLM2 rollouts on reasoning-gym `products` with vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
WB=.venv/bin/workbench
if $WB quickstart --help >/dev/null 2>&1; then exec $WB quickstart "$@"; fi
$WB models
$WB generate rollouts --config recipes/generate/smollm2_products.yaml "$@"
.venv/bin/python - <<'PY'
import datasets
ds = datasets.load_dataset("parquet", data_files="runs/smollm2-products/rollouts/shard-*.parquet", split="train")
print(ds)
for row in ds.select(range(2)):
    print(f"--- {row['prompt_id']} sample {row['sample_idx']} (reference {row['reference'][:40]}...)\n{row['completion']}")
PY
