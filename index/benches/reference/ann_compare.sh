#!/usr/bin/env bash
# The catalogue's HNSW search side by side with hnswlib and faiss on the same vectors.
#
#   index/benches/reference/ann_compare.sh [OUT_DIR]        (default runs/ann)
#
# Environment: ANIMELENS (the binary, default target/release/animelens), PY (a Python with numpy,
# hnswlib and faiss-cpu: `python3 -m venv V && V/bin/pip install numpy hnswlib faiss-cpu`),
# MODEL (checkpoint for the real-like vectors, default models/demo/holoen), N (items, default
# 100000), EFS (search ef values), M and EFC (graph parameters, default 16 and 200).
#
# Writes OUT_DIR/items.npy and queries.npy once (`bench index --real-like`: the model's
# embeddings of pokemon, holoen and malportraits, grown to N with jittered copies), then runs the
# peers and the catalogue (f32 and int8 graph vectors) one after the other, never at once, with
# 1 and 2 query threads, appending to OUT_DIR/ann.csv, and plots OUT_DIR/ann-recall-qps.png.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-runs/ann}
bin=${ANIMELENS:-target/release/animelens}
py=${PY:-python3}
efs=${EFS:-16,24,32,48,64,96,128}
m=${M:-16}
efc=${EFC:-200}
mkdir -p "$out"
if [ ! -f "$out/items.npy" ]; then
  "$bin" bench index --model "${MODEL:-models/demo/holoen}" --real-like "${N:-100000}" --queries 1000 \
    --vectors-out "$out"
fi
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
: > "$out/ann.csv"
"$py" "$here/ann_peers.py" "$out/items.npy" "$out/queries.npy" --m "$m" --ef-construction "$efc" \
  --efs "$efs" --threads 1,2 --csv "$out/ann.csv"
rm -rf "$out/scratch"
"$bin" bench index --vectors "$out/items.npy" --query-vectors "$out/queries.npy" --m "$m" \
  --ef-construction "$efc" --efs "$efs" --graph-precision f32,int8 --query-threads 1,2 \
  --csv "$out/ann.csv" --plot "$out/ann-recall-qps.png" --scratch "$out/scratch"
rm -rf "$out/scratch"
