#!/usr/bin/env bash
# The GPU path measured in one go (≤ 8 minutes on one H200): small and base at bfloat16 with
# realistic batches. For each: tokens/s, MFU against the dense bf16 peak, compile time apart, and
# the peak device memory next to `lumi architecture`'s estimate. Results: benchmarks/results/gpu_*.json.
#
#   bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
#   CASES="tiny:8:128" bash benchmarks/gpu.sh   # a quick check of the script itself, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then PY=python3; fi
STEPS=${STEPS:-20}
CASES=${CASES:-"small:64:1024 base:32:1024"}
# GPU wheels: a fresh machine gets jax[cuda12]; a CPU machine keeps what it has.
if command -v nvidia-smi >/dev/null 2>&1 && ! "$PY" -c 'import jax; assert jax.default_backend() == "gpu"' 2>/dev/null; then
  "$PY" -m pip install --quiet "jax[cuda12]>=0.10,<0.11"
fi
"$PY" -c 'import jax; print("devices:", jax.devices())'
platform=$("$PY" -c 'import jax; print(jax.default_backend())')
for case in $CASES; do
  name=${case%%:*}
  timeout 240 "$PY" benchmarks/train_throughput.py --cases "$case" --dtype bfloat16 --steps "$STEPS" \
    --out "benchmarks/results/gpu_${name}_bf16_${platform}.json" || echo "case $case failed or ran out of time"
done
