#!/usr/bin/env bash
# The GPU check of issue 12 (under 8 minutes on one GPU): train the paper-size CelebA backbone
# (64x64 RGB, 5 bits, Glow 3x32, hidden 512) on generated data for a fixed number of steps in fp32
# and bf16, in one process and under `torchrun --nproc-per-node 1`, then encode + attach `ids`
# heads on the fp32 backbone; prints images/s and peak GPU memory of each (lines "RESULT ...").
#
#   benchmarks/gpu.sh                     # on cuda
#   benchmarks/gpu.sh --tiny --device cpu # the same script at 8x8 on the CPU (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=""
STEPS=40
ATTACH_STEPS=50
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=--tiny; STEPS=6; ATTACH_STEPS=10 ;;
    --device) DEVICE="$2"; shift ;;
    *) echo "usage: benchmarks/gpu.sh [--tiny] [--device cuda|cuda:N|cpu]" >&2; exit 2 ;;
  esac
  shift
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
PY=${PYTHON:-python}
run() { "$PY" benchmarks/gpu.py "$@" $TINY --device "$DEVICE"; }
trun() { "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 benchmarks/gpu.py "$@" $TINY --device "$DEVICE"; }
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
for p in fp32 bf16; do
  run train --precision "$p" --steps "$STEPS" --out "$OUT/$p.safetensors" --label "$p, 1 process"
  trun train --precision "$p" --steps "$STEPS" --out "$OUT/$p-torchrun.safetensors" --label "$p, torchrun 1 process"
done
run attach --backbone "$OUT/fp32.safetensors" --steps "$ATTACH_STEPS"
