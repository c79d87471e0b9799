"""tuned_cnn: fashionclf (PyTorch) against the same architecture in Keras, side by side on this machine.

Both train on the same 54k/6k split and score on the same 10k test set. Keras runs
at the seed study's batch size (32) and at fashionclf's (128), so the speed-up is
shown with and without the batch-size difference. Needs the Keras venv:

    make bench-keras     # creates .venv-keras (benchmarks/requirements-keras.txt), then runs this script
    .venv/bin/python benchmarks/vs_keras.py [--epochs 10] [--out benchmarks/results/vs_keras.json]
"""

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine.inference import evaluate
from fashionclf.engine.loop import fit
from fashionclf.io import atomic_write_text
from fashionclf.recipes import resolve_config

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras/bin/python"))
    ap.add_argument("--keras-batches", default="32,128")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/vs_keras.json"))
    args = ap.parse_args()

    d = load_fashion_mnist()
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine()}
    try:
        result["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    # fashionclf at its defaults for tuned_cnn, early stopping off so both sides run every epoch.
    cfg = resolve_config("tuned_cnn", None, epochs=args.epochs, early_stopping=0)
    res = fit(cfg, d.train_x, d.train_y, d.val_x, d.val_y)
    acc = evaluate(res.model, d.test_x, d.test_y)["accuracy"]
    secs = [h["seconds"] for h in res.history]
    result["fashionclf"] = {
        "batch_size": cfg.batch_size,
        "precision": res.precision,
        "epochs": args.epochs,
        "epoch_seconds": secs,
        "train_seconds": res.train_seconds,
        "test_accuracy": acc,
        "params": res.params,
    }
    print(f"fashionclf: {np.median(secs):.2f} s/epoch (median), test accuracy {acc:.4f}", file=sys.stderr)

    result["keras"] = []
    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "fmnist.npz"
        np.savez(arrays, **{k: getattr(d, k).numpy() for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")})
        for bs in [int(b) for b in args.keras_batches.split(",")]:
            t0 = time.perf_counter()
            cmd = [args.keras_python, str(ROOT / "benchmarks/keras_tuned_cnn.py"), str(arrays), str(args.epochs), str(bs)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            k = json.loads(out)
            k["wall_seconds"] = time.perf_counter() - t0
            result["keras"].append(k)
            print(
                f"keras batch {bs}: {np.median(k['epoch_seconds']):.2f} s/epoch (median), test accuracy {k['test_accuracy']:.4f}",
                file=sys.stderr,
            )

    ours = float(np.median(secs))
    if any(k["params"] != res.params for k in result["keras"]):
        sys.exit(f"parameter counts differ ({res.params} vs {[k['params'] for k in result['keras']]}): not the same model")
    for k in result["keras"]:
        k["speedup_per_epoch"] = float(np.median(k["epoch_seconds"])) / ours
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print("\n| side | batch | precision | s/epoch (median) | test acc | speed-up |\n|---|---|---|---|---|---|")
    print(f"| fashionclf | {cfg.batch_size} | {res.precision} | {ours:.2f} | {acc * 100:.2f}% | 1.0x |")
    for k in result["keras"]:
        print(
            f"| {k['framework']} | {k['batch_size']} | fp32 | {np.median(k['epoch_seconds']):.2f} | "
            f"{k['test_accuracy'] * 100:.2f}% | {k['speedup_per_epoch']:.1f}x slower |"
        )


if __name__ == "__main__":
    main()
