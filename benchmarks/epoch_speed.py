"""Seconds per training epoch of each registered model, fp32 against bf16 autocast, with and without channels_last.

Times train_one_epoch itself (the loop `fit` runs) on the real 54k training split, after one
warm-up epoch on a slice; prints a Markdown table and writes JSON.

    .venv/bin/python benchmarks/epoch_speed.py [--models tuned_cnn,advanced_cnn] [--out benchmarks/results/epoch_speed.json]
"""

import argparse
import json
import platform
import time
from datetime import UTC, datetime

import torch

from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine.device import resolve_precision, setup_threads
from fashionclf.engine.loop import make_optimizer, train_one_epoch
from fashionclf.io import atomic_write_text
from fashionclf.models import create_model, list_models
from fashionclf.recipes import resolve_config
from fashionclf.study import DEFAULT_MODELS


def epoch_seconds(name: str, d, precision: str, channels_last: bool) -> float:
    cfg = resolve_config(name, None, precision=precision, channels_last=channels_last)
    setup_threads(cfg.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    amp = resolve_precision(precision, device)
    model = create_model(name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    train_one_epoch(model, opt, d.train_x[:2048], d.train_y[:2048], cfg, g, device, amp)  # warm-up
    t0 = time.perf_counter()
    train_one_epoch(model, opt, d.train_x, d.train_y, cfg, g, device, amp)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from: {', '.join(list_models())}")
    ap.add_argument("--out", default="benchmarks/results/epoch_speed.json")
    args = ap.parse_args()
    d = load_fashion_mnist()
    rows = []
    print("| model | fp32 | fp32 + channels_last | bf16 | bf16 + channels_last |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        r = {"model": name}
        for prec in ("fp32", "bf16"):
            for cl in (False, True):
                r[f"{prec}{'_cl' if cl else ''}"] = epoch_seconds(name, d, prec, cl)
        rows.append(r)
        print(f"| {name} | {r['fp32']:.1f} s | {r['fp32_cl']:.1f} s | {r['bf16']:.1f} s | {r['bf16_cl']:.1f} s |", flush=True)
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    meta["cpu"] = platform.processor() or platform.machine()
    atomic_write_text(args.out, json.dumps({**meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
