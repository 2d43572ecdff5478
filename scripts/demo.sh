#!/usr/bin/env bash
# `make demo`: the main job on the embedded defaults, measured: wall time and peak memory go to
# runs/quickstart/time.txt (GNU time -v when /usr/bin/time exists).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/quickstart
if [ -x /usr/bin/time ]; then
  /usr/bin/time -v -o runs/quickstart/time.txt .venv/bin/workbench quickstart "$@"
  grep -E "Elapsed|Maximum resident" runs/quickstart/time.txt
else
  .venv/bin/workbench quickstart "$@"
fi
