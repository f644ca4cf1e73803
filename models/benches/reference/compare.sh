#!/usr/bin/env bash
# Side-by-side speed of AnimeLens, PyTorch and ONNX Runtime on GoogLeNet (batch 32, 2 threads).
# Usage: models/benches/reference/compare.sh [SIZES]   (default 64,96,128,224)
# ROUNDS (default 3) alternating rounds (each engine and figure in its own process); each figure is the best of its rounds (highest
# throughput, lowest latency), which filters out the slowdowns that other tenants of a shared machine cause.
# Installs torch, torchvision, onnx, onnxruntime into $ANIMELENS_REF_VENV (default ~/.cache/animelens-ref-venv)
# on first use; nothing here is needed by the tests or CI.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
sizes="${1:-64,96,128,224}"
venv="${ANIMELENS_REF_VENV:-$HOME/.cache/animelens-ref-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch torchvision onnx onnxruntime
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/animelens-target}"
(cd "$root" && cargo build --release -q)
bin="$CARGO_TARGET_DIR/release/animelens"
out="$(mktemp -d)"
rounds="${ROUNDS:-3}"
# Each engine and each kind of figure in its own process, the rounds interleaved: AnimeLens's
# training figure comes from a run that trains, its inference figures from a fresh process.
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  RAYON_NUM_THREADS=2 "$bin" bench --sizes "$sizes" --json >> "$out/animelens-training.jsonl"
  RAYON_NUM_THREADS=2 "$bin" bench --sizes "$sizes" --inference-only --json >> "$out/animelens.jsonl"
  for engine in pytorch onnxruntime; do
    OMP_NUM_THREADS=2 "$venv/bin/python" "$here/torch_googlenet.py" --sizes "$sizes" --threads 2 \
      --engines "$engine" >> "$out/reference.jsonl"
  done
done
echo "raw results (every round): $out" >&2
model="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
flags="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_vnni|avx_vnni|amx_tile)$' | tr '\n' ' ')"
echo "CPU: $model ($(nproc) cores here; flags: ${flags:-none of avx2/fma/avx512}), $rounds rounds"
"$venv/bin/python" - "$out/animelens-training.jsonl" "$out/animelens.jsonl" "$out/reference.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:  # the training process's inference figures are not used
    r["infer_img_s"] = r["latency_ms"] = None
rows += [json.loads(l) for f in sys.argv[2:] for l in open(f) if l.strip()]
# Best of the rounds per engine, size and figure.
by = {}
for r in rows:
    best = by.setdefault((r["engine"], r["size"]), {})
    for key, value in r.items():
        if not isinstance(value, (int, float)) or key == "size":
            continue
        old = best.get(key)
        better = min if key == "latency_ms" else max
        best[key] = value if old is None else better(old, value)
sizes = sorted({r["size"] for r in rows})
def f(v): return "–" if v is None else f"{v:.1f}"
print("| work | size | animelens | PyTorch | ONNX Runtime | animelens / best |")
print("|---|---|---|---|---|---|")
for key, name in (("infer_img_s", "inference img/s"), ("train_img_s", "training img/s"), ("latency_ms", "batch-1 latency ms")):
    for s in sizes:
        a, t, o = (by.get((e, s), {}).get(key) for e in ("animelens", "pytorch", "onnxruntime"))
        others = [v for v in (t, o) if v is not None]
        if key == "latency_ms":
            ratio = min(others) / a if a and others else None
        else:
            ratio = a / max(others) if a and others else None
        print(f"| {name} | {s} px | {f(a)} | {f(t)} | {f(o)} | {'–' if ratio is None else f'{ratio:.2f}'} |")
PY
