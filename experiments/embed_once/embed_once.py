"""Heads on stored embeddings on a shop's photos: accuracy, the guaranteed automatic share, and the time to a model.

    .venv/bin/fashionclf embed ../shared/clothing-photos --store STORE        # once (the photos' features)
    .venv/bin/python experiments/embed_once/embed_once.py --store STORE --data ../shared/clothing-photos/train \
        --val-data ../shared/clothing-photos/validation --seeds 0 1 2 --out experiments/embed_once/results/clothing.json

For each split seed: the held-out test split is carved out of --data as `train --data` carves it (15%), the head is
chosen on --val-data, and the run folder is written as `train --store` writes it; the figures are read from it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

from fashionclf.core.io import atomic_write_text, to_json
from fashionclf.engine.autotune import cpu_info
from fashionclf.training.embedded import train_on_store


def one(args, seed: int, tmp: Path) -> dict:
    start = time.perf_counter()
    m = train_on_store(args.data, tmp / f"run-{seed}", args.store, val_data=args.val_data, split_seed=seed, calibration=args.calibration)
    wall = time.perf_counter() - start
    cov = (m.get("test_calibration") or {}).get("coverage_at_precision", {})
    auto = next(iter(cov.values()), {}) if cov else {}
    return {
        "seed": seed,
        "test_accuracy": m["test_accuracy"],
        "val_accuracy": m["val_accuracy"],
        "test_auto_share": auto.get("coverage"),
        "test_auto_precision": auto.get("precision"),
        "threshold": (m.get("calibration") or {}).get("threshold"),
        "calibration_items": (m.get("calibration") or {}).get("calibration_items"),
        "head_seconds": m["train_seconds"],
        "wall_seconds": wall,
        "test_photos": sum(map(sum, m["test_confusion_matrix"])),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calibration", default="val", choices=["val", "oof"])
    p.add_argument("--out")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        rows = [one(args, s, Path(d)) for s in args.seeds]
    keys = ("test_accuracy", "test_auto_share", "test_auto_precision", "head_seconds", "wall_seconds")
    summary = {
        k: (statistics.mean(r[k] for r in rows), statistics.pstdev(r[k] for r in rows)) for k in keys if None not in [r[k] for r in rows]
    }
    result = {
        "command": "experiments/embed_once/embed_once.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {k: cpu_info()[k] for k in ("model", "native_bf16")} | {"python": platform.python_version()},
        "runs": rows,
        "mean_std": summary,
    }
    print(to_json(result))
    if args.out:
        atomic_write_text(args.out, to_json(result))


if __name__ == "__main__":
    main()
