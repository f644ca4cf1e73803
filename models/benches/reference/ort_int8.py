"""ONNX Runtime's static INT8 beside its fp32 on an exported AnimeLens network: the peer of
`animelens export --dtype int8` and `animelens bench --precision int8`.

The fp32 file is quantised the way ONNX Runtime documents for CPUs (`quantize_static`, QDQ,
per-channel int8 weights, u8 activations, MinMax calibration on real pictures; `reduce_range`
on CPUs without VNNI, as ONNX Runtime advises and as AnimeLens's 7-bit weights do), then both
files are timed in interleaved rounds: throughput at batch 32 (best of 5 passes) and batch-1
latency (median of 30), 2 intra-op threads. Each round prints one JSON line per precision and
size; the last line compares the int8 and fp32 outputs (embedding cosine) on calibration
pictures.

    animelens export --model models/demo/holoen --format onnx --out /tmp/onnx/demo.onnx
    python ort_int8.py /tmp/onnx/demo.onnx ../shared/data/holoen/train --sizes 64,96,224 --rounds 3

Needs numpy, Pillow, onnx and onnxruntime.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_stages import session


def pictures(folder, count, size, seed=7):
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                   if f.lower().endswith((".png", ".jpg", ".jpeg", ".webp")))
    random.Random(seed).shuffle(paths)
    out = []
    for p in paths[:count]:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)
        out.append((np.asarray(img, np.float32).transpose(2, 0, 1) / 127.5 - 1.0)[None])
    return out


class Reader(CalibrationDataReader):
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def has_vnni():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def timings(s, size):
    x32 = np.random.rand(32, 3, size, size).astype(np.float32) * 2 - 1
    x1 = x32[:1].copy()

    def seconds(x):
        start = time.perf_counter()
        s.run(None, {"images": x})
        return time.perf_counter() - start

    seconds(x32)
    best = min(seconds(x32) for _ in range(5))
    for _ in range(5):
        seconds(x1)
    latency = float(np.median([seconds(x1) for _ in range(30)]))
    return 32 / best, latency * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("calibration")
    ap.add_argument("--pictures", type=int, default=300)
    ap.add_argument("--input-size", type=int, default=96, help="the card's input size")
    ap.add_argument("--sizes", default="64,96,128,224")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    quantised = args.model.removesuffix(".onnx") + ".int8.onnx"
    calibration = pictures(args.calibration, args.pictures, args.input_size)
    started = time.perf_counter()
    fresh = os.path.exists(quantised) and os.path.getmtime(quantised) > os.path.getmtime(args.model)
    if not fresh:  # a quantised file newer than the model is reused (interleaved rounds)
        quantize_static(args.model, quantised, Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=not has_vnni())
    print(f"# quantised (or reused) in {time.perf_counter() - started:.1f} s: {os.path.getsize(args.model) / 1e6:.1f} MB"
          f" -> {os.path.getsize(quantised) / 1e6:.1f} MB, reduce_range={not has_vnni()}", flush=True)
    sessions = {"f32": session(args.model, args.threads, False),
                "int8": session(quantised, args.threads, False)}
    for r in range(args.rounds):
        for size in [int(s) for s in args.sizes.split(",")]:
            for precision, s in sessions.items():
                img_s, latency = timings(s, size)
                print(json.dumps({"engine": "onnxruntime", "precision": precision, "round": r, "size": size,
                                  "batch": 32, "infer_img_s": round(img_s, 1),
                                  "latency_ms": round(latency, 3)}), flush=True)
    x = np.concatenate(calibration[:32])
    outputs = {p: s.run(None, {"images": x}) for p, s in sessions.items()}
    names = [o.name for o in sessions["f32"].get_outputs()]
    e = names.index("embedding")
    a, b = outputs["f32"][e], outputs["int8"][e]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(json.dumps({"embedding_cosine_int8_vs_f32": {"min": float(cos.min()), "median": float(np.median(cos))}}))


if __name__ == "__main__":
    main()
