"""fp32 against int8 ONNX (fashionclf export --int8): single-image latency and batch throughput in onnxruntime.

Two runs: a 28x28 run (default: the golden tuned_cnn fixture; its int8 accuracy is checked on the full
test set by the export itself) and an EfficientNet-Lite0 photo model. With --photo-run RUN --photo-data
FOLDER [--photo-val FOLDER] that is a trained image-folder run: int8 is calibrated on its validation
images and its accuracy checked on its test split, as `fashionclf export --int8 --data` does. Without,
it is ImageNet weights with an untrained head at --photo-size px RGB: speed only, int8 calibrated on
letterboxed photos from --photos. fp32 and int8 are timed
interleaved (A, B, A, B ...) in one process with the same threads, so a busy machine disturbs both alike.

    .venv/bin/python benchmarks/int8_speed.py [--run RUN] [--photos ../shared/clothing-photos/validation] \
        [--out benchmarks/results/int8_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fashionclf.api import load_run
from fashionclf.core.io import atomic_write_text
from fashionclf.infer.export import OnnxModel, export_checked
from fashionclf.infer.quantize import MAX_DROP_POINTS, accuracy, int8_checked, quantize_int8

ROOT = Path(__file__).resolve().parent.parent


def timings(models: dict[str, OnnxModel], x: np.ndarray, batch: int, rounds: int, calls: int) -> dict[str, dict]:
    """Median per-image latency at batch 1 and images/s at `batch`, interleaved across models."""
    lat = {k: [] for k in models}
    rate = {k: [] for k in models}
    for m in models.values():  # warm-up
        m.probs(x[:1])
        m.probs(x[:batch])
    for _ in range(rounds):
        for k, m in models.items():
            for i in range(calls):
                t = time.perf_counter()
                m.probs(x[i % len(x) : i % len(x) + 1])
                lat[k].append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            for i in range(0, len(x), batch):
                m.probs(x[i : i + batch])
            rate[k].append(len(x) / (time.perf_counter() - t))
    return {k: {"latency_ms_p50": statistics.median(lat[k]), "images_per_s": statistics.median(rate[k])} for k in models}


def photo_run(size: int, out: Path) -> Path:
    """An EfficientNet-Lite0 RGB run folder (ImageNet body, zero head) for speed only."""
    from fashionclf.engine.runs import save_run
    from fashionclf.models import build_model
    from fashionclf.training.recipes import resolve_config

    cfg = resolve_config("efficientnet_lite0", None, model_kwargs={"in_chans": 3, "image_size": size}, tta=False)
    meta = {"input": {"channels": 3, "height": size, "width": size, "kind": "rgb-letterbox"}}
    cal = {"calibration": {"temperature": 1.0, "threshold": 0.9, "target_precision": 0.99}}
    return save_run(out, build_model(cfg, 10), cfg, cal, [], [f"c{i}" for i in range(10)], {}, extra_meta=meta)


def photos(folder: Path, size: int, n: int) -> np.ndarray:
    from fashionclf.data.folders import letterbox
    from fashionclf.data.images import SUFFIXES, load_rgb

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)[:n]
    return np.stack([letterbox(load_rgb(p), size).transpose(2, 0, 1) for p in files])


def cpu() -> str:
    """The CPU's model name, core count and whether bf16/AVX-512 are native (from /proc/cpuinfo where there is one)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()}, {os.cpu_count()} CPUs"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} CPUs, flags: {' '.join(isa) or 'none of avx2/avx512'}"


def untrained_photo_row(size: int, folder: Path) -> dict:
    """ImageNet body, zero head: int8's speed only."""
    with tempfile.TemporaryDirectory() as tmp:
        prun = load_run(photo_run(size, Path(tmp) / "lite0"))
        x = photos(folder, size, 192)
        fp32, _ = export_checked(prun)
        int8 = quantize_int8(fp32, x[:128])
        models = {"fp32": OnnxModel(fp32, threads=2), "int8": OnnxModel(int8, threads=2)}
        return {
            f"efficientnet_lite0 {size}px": {
                "model": "efficientnet_lite0 (ImageNet body, untrained head: speed only)",
                **timings(models, x, 32, 5, 20),
            }
        }


def trained_photo_row(run_dir: str, data: str | None, val: str | None) -> dict:
    """A trained photo run: int8 calibrated on its validation images, checked on its test split, and timed."""
    prun = load_run(run_dir)
    ds = prun.dataset(data, val)
    fp32, _ = export_checked(prun)
    int8 = quantize_int8(fp32, ds.val_x[:1024].numpy())  # not int8_checked: a drop past the limit is a result here too
    a32, a8 = (accuracy(m, ds.test_x.numpy(), ds.test_y.numpy()) for m in (fp32, int8))
    check = {"fp32_accuracy": a32, "int8_accuracy": a8, "drop_points": (a32 - a8) * 100, "test_images": len(ds.test_y)}
    check["export_would_refuse"] = check["drop_points"] > MAX_DROP_POINTS
    models = {"fp32": OnnxModel(fp32, threads=2), "int8": OnnxModel(int8, threads=2)}
    size = prun.meta["input"]["height"]
    name = f"{prun.meta['model']} {size}px, trained ({len(prun.meta['classes'])} classes)"
    return {name: {"run": run_dir, "model": prun.meta["model"], **timings(models, ds.test_x[:192].numpy(), 32, 5, 20), **check}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=str(ROOT / "tests/golden/study/runs/tuned_cnn-s0"))
    ap.add_argument("--photos", default=str(ROOT.parent / "shared/clothing-photos/validation"))
    ap.add_argument("--photo-size", type=int, default=224)
    ap.add_argument("--photo-run", help="a trained efficientnet_lite0 image-folder run (accuracy and speed)")
    ap.add_argument("--photo-data", help="with --photo-run: the folder it trained on (its test split)")
    ap.add_argument("--photo-val", help="with --photo-run: its validation folder, if it had one")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/int8_speed.json"))
    args = ap.parse_args()
    rows = {}

    run = load_run(args.run)
    ds = run.dataset()
    fp32, _ = export_checked(run)
    int8, check = int8_checked(fp32, ds.val_x[:1024].numpy(), ds.test_x.numpy(), ds.test_y.numpy())
    models = {"fp32": OnnxModel(fp32, threads=2), "int8": OnnxModel(int8, threads=2)}
    rows["28x28"] = {"run": args.run, "model": run.meta["model"], **timings(models, ds.test_x[:2048].numpy(), 256, 5, 40), **check}

    if args.photo_run:
        rows.update(trained_photo_row(args.photo_run, args.photo_data, args.photo_val))
    else:
        rows.update(untrained_photo_row(args.photo_size, Path(args.photos)))
    for r in rows.values():
        r["int8_speedup_throughput"] = r["int8"]["images_per_s"] / r["fp32"]["images_per_s"]
        r["int8_speedup_latency"] = r["fp32"]["latency_ms_p50"] / r["int8"]["latency_ms_p50"]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu(),
        "rows": rows,
    }
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
