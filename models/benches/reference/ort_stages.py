"""ONNX Runtime's time per GoogLeNet stage, beside AnimeLens's (`animelens bench --stages`).

ONNX Runtime's node profile (`enable_profiling`) gives each node's kernel time; the nodes of an
exported AnimeLens model (`animelens export --format onnx`) are named after torchvision's modules
(`conv1`, `inception4e/branch2/...`), so they group by stage as `bench --stages` reports them.
The profile adds its own overhead per node, so the script also times whole passes without it.

    animelens export --model models/demo/holoen --format onnx --out /tmp/g.onnx
    RAYON_NUM_THREADS=2 animelens bench --stages --batch 1 --sizes 64,96 --repeats 300 --json > ours.jsonl
    python ort_stages.py /tmp/g.onnx --batch 1 --sizes 64,96 --threads 2 --ours ours.jsonl

Needs numpy and onnxruntime.
"""
import argparse
import collections
import json
import os
import time

import numpy as np
import onnxruntime as ort


def session(model, threads, profile):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = profile
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def stage_of(node):
    """`inception4e/branch2/conv` -> `inception4e`; `conv1` -> `conv1`."""
    return node.split("/")[0].split(".")[0].removesuffix("_nchwc")


def profile(model, size, batch, threads, repeats):
    s = session(model, threads, True)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for _ in range(repeats + 1):
        s.run(None, {"images": x})
    path = s.end_profiling()
    events = json.load(open(path))
    os.remove(path)
    spent, runs = collections.OrderedDict(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            stage = stage_of(node)
            spent[stage] = spent.get(stage, 0.0) + e["dur"]
            runs[node] += 1
    passes = max(runs.values())
    plain = session(model, threads, False)
    plain.run(None, {"images": x})
    start = time.perf_counter()
    for _ in range(repeats):
        plain.run(None, {"images": x})
    whole_ms = (time.perf_counter() - start) / repeats * 1e3
    stages = [{"stage": k, "ms": v / passes / 1e3} for k, v in spent.items()]
    return {"engine": "onnxruntime", "size": size, "batch": batch, "stages": stages, "whole_pass_ms": whole_ms}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--sizes", default="64,96")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--ours", help="`animelens bench --stages --json` output to print beside")
    a = p.parse_args()
    ours = {}
    if a.ours:
        for line in open(a.ours):
            if line.strip():
                r = json.loads(line)
                ours[r["size"]] = {s["stage"]: s["ms"] for s in r["stages"]}
    for size in map(int, a.sizes.split(",")):
        r = profile(a.model, size, a.batch, a.threads, a.repeats)
        print(json.dumps(r), flush=True)
        mine = ours.get(size, {})
        print(f"\n{size} px, batch {a.batch}, {a.threads} threads (ms per pass)\n")
        print("| stage | AnimeLens | ONNX Runtime (profiled) | AnimeLens / ORT |\n|---|---|---|---|")
        for s in r["stages"]:
            m = mine.get(s["stage"])
            ratio = f"{m / s['ms']:.2f}" if m and s["ms"] else "–"
            print(f"| {s['stage']} | {'–' if m is None else f'{m:.3f}'} | {s['ms']:.3f} | {ratio} |")
        total = sum(s["ms"] for s in r["stages"])
        print(f"| all nodes | {sum(mine.values()):.3f} | {total:.3f} | |")
        print(f"\nONNX Runtime whole pass without profiling: {r['whole_pass_ms']:.3f} ms\n", flush=True)


if __name__ == "__main__":
    main()
