"""Inference speed of a run: PyTorch fp32, PyTorch bf16 and onnxruntime, against Keras predict() of tuned_cnn.

images/s at batch 256 over the 10,000 test images (median of 5 passes after a warm-up) and single-image
latency (median of 200 calls), all on the same machine with the same 2 threads. The fashionclf side times
what `predict_arrays` does: uint8 pixels in, normalisation included. The Keras side runs in .venv-keras on
pre-normalised float arrays (its best case), for the tuned_cnn architecture only.

    make bench-keras    # once, for .venv-keras
    .venv/bin/python benchmarks/inference_speed.py [RUN] [--out benchmarks/results/inference_speed.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from fashionclf.core.io import atomic_write_text
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine.device import keep_freed_memory
from fashionclf.engine.inference import infer
from fashionclf.engine.runs import load_run
from fashionclf.infer.export import OnnxModel, export_onnx

ROOT = Path(__file__).resolve().parent.parent


def throughput(fn, x, repeats: int = 5) -> float:
    fn(x[:512])
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        rates.append(len(x) / (time.perf_counter() - t0))
    return statistics.median(rates)


def latency_ms(fn, x, calls: int = 200) -> float:
    for i in range(20):
        fn(x[i : i + 1])
    ms = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(x[i : i + 1])
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "study/runs/tuned_cnn-s0"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras/bin/python"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/inference_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as the CLI and the service do (fashionclf.apps.cli)
    run = load_run(args.run)
    d = load_fashion_mnist(allow_download=False)
    x = d.test_x
    model = run.model.eval()
    tta, cl = run.config.tta, run.config.channels_last
    ort = OnnxModel(export_onnx(run), threads=args.threads)
    sides = {
        "pytorch fp32": lambda b: infer(model, b, batch_size=256, amp_dtype=None, channels_last=False, tta=tta),
        "pytorch bf16": lambda b: infer(model, b, batch_size=256, amp_dtype=torch.bfloat16, channels_last=cl, tta=tta),
        "onnxruntime fp32": lambda b: [ort.probs(b[i : i + 256].numpy()) for i in range(0, len(b), 256)],
    }
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "run": args.run,
        "model": run.meta["model"],
        "tta": tta,
        "keep_freed_memory": kept,
        "sides": {},
    }
    with torch.inference_mode():
        for name, fn in sides.items():
            result["sides"][name] = {"images_per_s_batch256": throughput(fn, x), "latency_1_image_ms": latency_ms(fn, x)}
            print(name, result["sides"][name], file=sys.stderr)
    keras_py = Path(args.keras_python)
    if run.meta["model"] == "tuned_cnn" and keras_py.exists():
        with tempfile.TemporaryDirectory() as tmp:
            arrays = Path(tmp) / "test.npz"
            np.savez(arrays, test_x=x.numpy())
            cmd = [str(keras_py), str(ROOT / "benchmarks/keras_infer.py"), str(arrays)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT / "benchmarks").stdout
            result["keras"] = json.loads(out.strip().splitlines()[-1])
            print("keras", result["keras"], file=sys.stderr)
    else:
        print(f"no Keras comparison (needs model tuned_cnn and {keras_py}: make bench-keras)", file=sys.stderr)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    k = result.get("keras")
    print("| side | images/s, batch 256 | 1 image, ms | vs Keras predict (throughput / latency) |\n|---|---|---|---|")
    for name, s in result["sides"].items():
        vs = (
            f"{s['images_per_s_batch256'] / k['images_per_s_batch256']:.1f}x / {k['predict_1_image_ms'] / s['latency_1_image_ms']:.1f}x"
            if k
            else "-"
        )
        print(f"| {name} | {s['images_per_s_batch256']:,.0f} | {s['latency_1_image_ms']:.2f} | {vs} |")
    if k:
        print(f"| {k['framework']} predict() | {k['images_per_s_batch256']:,.0f} | {k['predict_1_image_ms']:.2f} | 1.0x |")
        print(f"| {k['framework']} model(x) | - | {k['call_1_image_ms']:.2f} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
