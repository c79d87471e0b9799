"""The seed study side by side: each of its four models trained by fashionclf (its defaults) and by Keras (the
seed's settings: batch 32, Adam 1e-3, Model 4 with its augmentation and ReduceLROnPlateau), on this machine, in one run.

Both sides train the same architecture (trainable parameter counts checked) on the same 54k/6k split and score the
same 10k test set, for the same number of epochs: each recipe's own (10, 10, 10, 20) unless --epochs caps it.
Early stopping is off on both sides so every epoch runs and per-epoch times compare like for like. Per model: the
median seconds per epoch (validation pass included) and the ratio; for the whole study: the sum of each side's
training seconds, measured where every recipe epoch ran and otherwise projected (median s/epoch x recipe epochs,
marked so). Keras can also run at fashionclf's batch size (--keras-batches 32,128) to separate the batch-size
difference from the framework. Needs the Keras venv:

    make bench-keras     # creates .venv-keras (benchmarks/requirements-keras.txt), then runs this script
    .venv/bin/python benchmarks/vs_keras.py [--models mlp,tuned_cnn] [--epochs 2] [--keras-batches 32,128] [--out FILE]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fashionclf.core.io import atomic_write_text
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine import autotune
from fashionclf.engine.inference import evaluate
from fashionclf.study.compare import DEFAULT_MODELS
from fashionclf.training.loop import fit
from fashionclf.training.recipes import resolve_config

ROOT = Path(__file__).resolve().parent.parent


def ours(name: str, epochs: int | None, d) -> dict:
    cfg = resolve_config(name, None, early_stopping=0, **({"epochs": epochs} if epochs else {}))
    res = fit(cfg, d.train_x, d.train_y, d.val_x, d.val_y)
    secs = [h["seconds"] for h in res.history]
    return {
        "batch_size": cfg.batch_size,
        "precision": res.precision,
        "precision_choice": res.precision_choice,
        "epochs": len(secs),
        "epoch_seconds": secs,
        "train_seconds": res.train_seconds,
        "test_accuracy": evaluate(res.model, d.test_x, d.test_y)["accuracy"],
        "params": res.params,
    }


def keras_side(python: str, arrays: Path, name: str, epochs: int, batch: int) -> dict:
    t0 = time.perf_counter()
    cmd = [python, str(ROOT / "benchmarks/keras_models.py"), str(arrays), str(epochs), str(batch), name]
    k = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    k["wall_seconds"] = time.perf_counter() - t0
    return k


def whole_study(rows: list[dict], side) -> tuple[float, bool]:
    """Seconds for the whole study on one side, and whether that is measured (every recipe epoch ran) or projected."""
    total, measured = 0.0, True
    for r in rows:
        s = side(r)
        if s["epochs"] >= r["recipe_epochs"]:
            total += s["train_seconds"]
        else:
            total += statistics.median(s["epoch_seconds"]) * r["recipe_epochs"]
            measured = False
    return total, measured


def table(result: dict) -> str:
    head = "| model | side | batch | precision | epochs run | s/epoch (median) | test acc | fashionclf faster by |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        f = r["fashionclf"]
        med = statistics.median(f["epoch_seconds"])
        acc = f"{f['test_accuracy'] * 100:.2f}%"
        lines.append(f"| {r['model']} | fashionclf | {f['batch_size']} | {f['precision']} | {f['epochs']} | {med:.2f} | {acc} | |")
        for k in r["keras"]:
            km = statistics.median(k["epoch_seconds"])
            lines.append(
                f"| {r['model']} | {k['framework']} | {k['batch_size']} | fp32 | {k['epochs']} | {km:.2f} | "
                f"{k['test_accuracy'] * 100:.2f}% | {k['speedup_per_epoch']:.2f}x |"
            )
    for s in result["whole_study"]:
        how = "measured" if s["measured"] else "projected: median s/epoch x recipe epochs"
        lines.append(
            f"\nWhole study, Keras batch {s['keras_batch']}: fashionclf {s['fashionclf_seconds']:.0f} s, "
            f"Keras {s['keras_seconds']:.0f} s: {s['speedup']:.2f}x ({how})"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--epochs", type=int, default=None, help="cap on epochs per model (default: each recipe's own)")
    ap.add_argument("--keras-python", default=str(ROOT / ".venv-keras/bin/python"))
    ap.add_argument("--keras-batches", default="32")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/vs_keras_study.json"))
    args = ap.parse_args()
    cpu = autotune.cpu_info()
    d = load_fashion_mnist()
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "epochs_cap": args.epochs, "models": []}
    batches = [int(b) for b in args.keras_batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "fmnist.npz"
        np.savez(arrays, **{k: getattr(d, k).numpy() for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")})
        for name in args.models.split(","):
            recipe_epochs = resolve_config(name, None).epochs
            epochs = min(args.epochs or recipe_epochs, recipe_epochs)
            row = {"model": name, "recipe_epochs": recipe_epochs, "fashionclf": ours(name, epochs, d), "keras": []}
            print(f"{name}: fashionclf {statistics.median(row['fashionclf']['epoch_seconds']):.2f} s/epoch", file=sys.stderr)
            for bs in batches:
                k = keras_side(args.keras_python, arrays, name, epochs, bs)
                if k["params"] != row["fashionclf"]["params"]:
                    sys.exit(f"{name}: parameter counts differ ({row['fashionclf']['params']} vs {k['params']}): not the same model")
                k["speedup_per_epoch"] = statistics.median(k["epoch_seconds"]) / statistics.median(row["fashionclf"]["epoch_seconds"])
                row["keras"].append(k)
                print(f"{name}: keras batch {bs} {statistics.median(k['epoch_seconds']):.2f} s/epoch", file=sys.stderr)
            result["models"].append(row)
            atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")  # after every model: a long run keeps what it measured
    result["whole_study"] = []
    for i, bs in enumerate(batches):
        ours_s, m1 = whole_study(result["models"], lambda r: r["fashionclf"])
        theirs, m2 = whole_study(result["models"], lambda r, i=i: r["keras"][i])
        result["whole_study"].append(
            {"keras_batch": bs, "fashionclf_seconds": ours_s, "keras_seconds": theirs, "speedup": theirs / ours_s, "measured": m1 and m2}
        )
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
