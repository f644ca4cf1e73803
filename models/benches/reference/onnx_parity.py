#!/usr/bin/env python3
"""Checks an ONNX file written by `animelens export --format onnx` against AnimeLens's own outputs.

Usage: onnx_parity.py MODEL.onnx SAMPLE_DIR [--tolerance 1e-4]

SAMPLE_DIR is the `--parity-sample` folder of the same export: one `size-<S>/` folder per image size
with `images.npy` (the input) and one `.npy` per graph output as AnimeLens's folded network computed it.
The file is first validated by `onnx.checker` (full check, with shape inference) and must use only
the default operator domain; then every sample runs in ONNX Runtime (CPU) and each output must agree
with AnimeLens's within the tolerance, relative to the output's scale (max |x|, at least 1).
Prints one JSON line per sample and a verdict; exits 1 on any failure.
Needs: onnx, onnxruntime, numpy (pip).
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("samples")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    domains = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    ops = sorted({n.op_type for n in model.graph.node})
    ok = not domains
    print(json.dumps({"file": args.model, "opset": model.opset_import[0].version,
                      "nodes": len(model.graph.node), "ops": ops, "custom_domains": domains}))

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    folders = sorted(p for p in pathlib.Path(args.samples).iterdir() if p.is_dir())
    if not folders:
        print(f"no size-<S> folders in {args.samples}", file=sys.stderr)
        return 1
    for folder in folders:
        images = np.load(folder / "images.npy")
        got = dict(zip(outputs, session.run(outputs, {"images": images})))
        for name in outputs:
            want = np.load(folder / f"{name}.npy")
            if got[name].shape != want.shape:
                ok = False
                print(json.dumps({"sample": folder.name, "output": name, "error": "shape",
                                  "onnxruntime": list(got[name].shape), "animelens": list(want.shape)}))
                continue
            scale = max(float(np.abs(want).max()), 1.0)
            diff = float(np.abs(got[name] - want).max())
            passed = diff <= args.tolerance * scale
            ok &= passed
            print(json.dumps({"sample": folder.name, "images": list(images.shape), "output": name,
                              "max_abs_diff": diff, "relative": diff / scale, "passed": passed}))
    print("parity: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
