#!/usr/bin/env bash
# Measures `animelens serve` with wrk from a second process on loopback (see BENCHMARKS.md,
# "## Service"). Usage: web/bench/service.sh [ITEMS]   (needs wrk, python3 and a release build)
# BACKEND=milvus serves the same catalogue from Milvus: it is exported with `index export` into a
# `milvus-lite server` started here (needs a `--features milvus` build and milvus-lite; see
# .ci/run), and only the similar-items run is made.
set -euo pipefail
ITEMS=${1:-20000}
BACKEND=${BACKEND:-embedded}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/animelens}
WORK=$(mktemp -d)
HERE=$(cd "$(dirname "$0")" && pwd)
MILVUS=
trap 'kill $SERVER 2>/dev/null || true; [ -z "$MILVUS" ] || kill $MILVUS 2>/dev/null || true; rm -rf "$WORK"' EXIT

# A random-init GoogLeNet at 96 px (the demo model's input size) stands in for the demo model:
# same network, same cost per image.
"$BIN" train --data "$HERE/../../models/sample/holoen" --out "$WORK/model" --input-size 96 \
  --epochs 1 --max-batches 1 --batch-size 8 > "$WORK/train.log" 2>&1
MODEL=$(sed -n 's/.*checkpoint \(.*\)$/\1/p' "$WORK/train.log" | tail -1)
FP=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['fingerprint'])" "${MODEL%.safetensors}.json")

python3 "$HERE/make_catalog.py" "$ITEMS" > "$WORK/vectors.jsonl"
"$BIN" index --db "$WORK/data/catalog" import-vectors "$WORK/vectors.jsonl" --fingerprint "$FP" --batch 1000 > /dev/null

DATA="$WORK/data"
if [ "$BACKEND" = milvus ]; then
  LITE=${ANIMELENS_MILVUS_LITE:-$HOME/.cache/animelens-milvus-venv/bin/milvus-lite}
  "$LITE" server --data-dir "$WORK/milvus" --host 127.0.0.1 --port 19541 > "$WORK/milvus.log" 2>&1 &
  MILVUS=$!
  until (echo > /dev/tcp/127.0.0.1/19541) 2>/dev/null; do kill -0 $MILVUS; sleep 0.5; done
  START=$(date +%s.%N)
  "$BIN" index --db "$WORK/data/catalog" export --to milvus://127.0.0.1:19541/bench --records "$WORK/mdata/catalog"
  echo "export of $ITEMS items into Milvus: $(echo "$(date +%s.%N) - $START" | bc) s"
  DATA="$WORK/mdata"
  export ANIMELENS_BACKEND=milvus ANIMELENS_MILVUS_URI=http://127.0.0.1:19541 ANIMELENS_MILVUS_COLLECTION=bench
fi
"$BIN" serve --model "$MODEL" --data-dir "$DATA" --gallery "" --bind 127.0.0.1:18080 2> "$WORK/serve.log" &
SERVER=$!
until grep -qs "listening on" "$WORK/serve.log"; do kill -0 $SERVER; sleep 0.5; done
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$SERVER/status"; }
echo "RSS before: $(rss)"

python3 - "$WORK/q.png" <<'PY'
import struct, sys, zlib, random
random.seed(1)
w = h = 128
raw = b"".join(b"\x00" + bytes(random.randrange(256) for _ in range(w * 3)) for _ in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
  + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
PY

echo "== GET /api/v1/items/{id}/similar?k=10 over $ITEMS items"
BENCH_ITEMS=$ITEMS wrk -t2 -c16 -d20s --latency -s "$HERE/similar_ids.lua" http://127.0.0.1:18080
if [ "$BACKEND" = embedded ]; then
echo "== POST /api/v1/search?k=10 with a 128x128 PNG"
BENCH_IMAGE="$WORK/q.png" wrk -t2 -c8 -d20s --latency -s "$HERE/post_image.lua" "http://127.0.0.1:18080/api/v1/search?k=10"
fi
echo "RSS after: $(rss)"
curl -s http://127.0.0.1:18080/metrics | grep -E '^animelens_(inference|catalog)' || true
