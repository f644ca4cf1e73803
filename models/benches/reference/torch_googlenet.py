"""Reference speed of torchvision's GoogLeNet (PyTorch CPU) and of the same network exported to ONNX and run by
ONNX Runtime, measured like `animelens bench`: batch 32, random input, training step = forward + backward +
AdamW, 2 threads. Prints one JSON object per line: {"engine", "size", "train_img_s", "infer_img_s", "latency_ms"}.
`--engines pytorch` or `--engines onnxruntime` measures one engine per process (compare.sh does so).

Run through compare.sh, which installs torch, torchvision, onnx and onnxruntime into a local virtual environment.
"""
import argparse, json, os, tempfile, time

import numpy as np
import torch
import torchvision


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="64,96,128,224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default="pytorch,onnxruntime")
    a = p.parse_args()
    engines = set(a.engines.split(","))
    torch.set_num_threads(a.threads)
    import onnxruntime as ort

    for size in [int(s) for s in a.sizes.split(",")]:
        net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, num_classes=1000)
        x = torch.randn(a.batch, 3, size, size)
        y = torch.randint(0, 1000, (a.batch,))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def train_step():
            net.train()
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()

        if "pytorch" in engines:
            train = timed(train_step, a.repeats)
            net.eval()
            with torch.no_grad():
                infer = timed(lambda: net(x), a.repeats)
                one = x[:1]
                latency = timed(lambda: net(one), a.repeats * 4)
            print(json.dumps({"engine": "pytorch", "size": size, "train_img_s": a.batch / train,
                              "infer_img_s": a.batch / infer, "latency_ms": latency * 1e3}), flush=True)

        if "onnxruntime" not in engines:
            continue
        net.eval()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "googlenet.onnx")
            torch.onnx.export(net, x, path, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            xb = x.numpy().astype(np.float32)
            x1 = xb[:1]
            infer = timed(lambda: sess.run(None, {"x": xb}), a.repeats)
            latency = timed(lambda: sess.run(None, {"x": x1}), a.repeats * 4)
        print(json.dumps({"engine": "onnxruntime", "size": size, "train_img_s": None,
                          "infer_img_s": a.batch / infer, "latency_ms": latency * 1e3}), flush=True)


if __name__ == "__main__":
    main()
