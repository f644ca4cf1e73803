#!/usr/bin/env bash
# AnimeLens int8 beside its f32 and beside ONNX Runtime's fp32 and static INT8, interleaved rounds,
# each engine and figure in its own process, 2 threads; prints the CPU and one JSON line per figure.
#   models/benches/reference/int8_compare.sh ONNX_FILE CALIBRATION_DIR [ROUNDS] [SIZES]
# ONNX_FILE: `animelens export --model models/demo/holoen --format onnx --out FILE`.
# PY: a python with numpy, Pillow, onnx and onnxruntime (default: python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
onnx=$1 calibration=$2 rounds=${3:-3} sizes=${4:-64,96,128,224}
animelens=${ANIMELENS:-animelens}
py=${PY:-python3}
grep -m1 "model name" /proc/cpuinfo
echo "# flags: $(grep -o -E 'avx512_vnni|avx_vnni|avx512f|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
export RAYON_NUM_THREADS=2
for r in $(seq "$rounds"); do
  for precision in f32 int8; do
    "$animelens" bench --inference-only --sizes "$sizes" --repeats 5 --precision "$precision" --json 2>/dev/null \
      | sed "s/^{/{\"round\":$r,/"
  done
  "$py" "$here/ort_int8.py" "$onnx" "$calibration" --sizes "$sizes" --rounds 1 | grep -v embedding_cosine \
    | sed "s/\"round\": 0/\"round\": $r/"
done
