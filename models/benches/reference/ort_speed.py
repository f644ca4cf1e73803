"""ONNX Runtime's speed on an exported AnimeLens network, without PyTorch: throughput at batch 32
(best of 5 passes) and single-image latency (min and median of 30), 2 intra-op threads, at
64 / 96 / 128 / 224 px. (`compare.sh` measures ORT on torchvision's export and needs torch.)

    animelens export --model models/demo/holoen --format onnx --out /tmp/onnx/demo.onnx
    python ort_speed.py /tmp/onnx/demo.onnx

Needs numpy and onnxruntime.
"""
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_stages import session

s = session(sys.argv[1], threads=2, profile=False)


def seconds(x):
    start = time.perf_counter()
    s.run(None, {"images": x})
    return time.perf_counter() - start


for size in [64, 96, 128, 224]:
    x32 = np.random.rand(32, 3, size, size).astype(np.float32) * 2 - 1
    x1 = x32[:1].copy()
    seconds(x32)
    best = min(seconds(x32) for _ in range(5))
    for _ in range(5):
        seconds(x1)
    latency = [seconds(x1) for _ in range(30)]
    print(f"{size} px: {32 / best:.1f} img/s batch 32, batch-1 latency min {min(latency) * 1e3:.2f} ms "
          f"median {np.median(latency) * 1e3:.2f} ms")
