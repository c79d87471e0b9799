"""Seconds per training epoch of each registered model, fp32 against bf16 autocast, with and without channels_last,
and what `--precision auto` chooses here and what choosing costs.

Times train_one_epoch itself (the loop `fit` runs) on the real 54k training split (or its first --limit images,
scaled to the full epoch), after one warm-up epoch on a slice. The variants are interleaved (A, B, C, D, A, B, ...)
--repeats times and each one's median is reported, so a load that comes and goes on a shared machine
disturbs them alike; the CPU seconds of the process (all threads) are recorded beside the wall time.
bf16 is timed wherever autocast runs it at all, also where oneDNN's capability flag says no (so
`--precision bf16` would refuse): that is how slow bf16 without hardware support is. Prints a Markdown
table and writes JSON (after every model).

    .venv/bin/python benchmarks/epoch_speed.py [--models tuned_cnn,advanced_cnn] [--limit 12800] [--repeats 3] \
        [--out benchmarks/results/epoch_speed.json]
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from fashionclf.core.io import atomic_write_text
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine import autotune
from fashionclf.engine.device import bf16_supported, choose_precision, setup_threads
from fashionclf.engine.inference import to_input
from fashionclf.models import create_model, list_models
from fashionclf.study.compare import DEFAULT_MODELS
from fashionclf.training.loop import make_optimizer, train_one_epoch
from fashionclf.training.recipes import resolve_config

VARIANTS = {"fp32": (None, False), "fp32_cl": (None, True), "bf16": (torch.bfloat16, False), "bf16_cl": (torch.bfloat16, True)}


def epoch_seconds(name: str, d, amp, channels_last: bool, limit: int) -> tuple[float, float]:
    """Wall and CPU (all threads) seconds of one epoch, scaled to the full training split."""
    cfg = resolve_config(name, None, channels_last=channels_last)
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = create_model(name)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    train_one_epoch(model, opt, d.train_x[:1024], d.train_y[:1024], cfg, g, device, amp)  # warm-up
    x, y = d.train_x[:limit], d.train_y[:limit]
    t0, c0 = time.perf_counter(), time.process_time()
    train_one_epoch(model, opt, x, y, cfg, g, device, amp)
    scale = len(d.train_x) / len(x)
    return (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale


def auto_choice(name: str, d) -> dict:
    """What --precision auto picks for training and inference, and the seconds the measuring took (fresh cache)."""
    cfg = resolve_config(name, None)
    model = create_model(name)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("train", "infer"):
            x = to_input(d.train_x[: autotune.MEASURE_BATCH], torch.device("cpu"), channels_last=False)
            t0 = time.perf_counter()
            p = choose_precision(
                "auto", torch.device("cpu"), model, x, train=mode == "train", channels_last=cfg.channels_last, name=name,
                cache=Path(tmp) / "autotune.json",
            )  # fmt: skip
            out[mode] = {**p.record(), "wall_seconds": round(time.perf_counter() - t0, 3)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from: {', '.join(list_models())}")
    ap.add_argument("--limit", type=int, default=0, help="time epochs over the first N training images (scaled to the full split)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds of all variants; the median is reported")
    ap.add_argument("--out", default="benchmarks/results/epoch_speed.json")
    args = ap.parse_args()
    setup_threads(0)
    d = load_fashion_mnist()
    limit = args.limit or len(d.train_x)
    variants = {k: v for k, v in VARIANTS.items() if v[0] is None or autotune.bf16_autocast_runs("cpu")}
    rows = []
    print("| model | fp32 | fp32 + channels_last | bf16 | bf16 + channels_last | auto: train | auto: infer | tuning cost |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        times, cpu = {k: [] for k in variants}, {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, (amp, cl) in variants.items():
                w, c = epoch_seconds(name, d, amp, cl, limit)
                times[k].append(w)
                cpu[k].append(c)
        r = {"model": name, **{k: statistics.median(v) for k, v in times.items()}, "all": times}
        r |= {"cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()}, "auto": auto_choice(name, d)}
        rows.append(r)
        cells = " | ".join(f"{r[k]:.1f} s ({r['cpu_seconds'][k]:.1f} cpu-s)" if k in r else "-" for k in VARIANTS)
        ch = {m: f"{r['auto'][m]['precision']}{' + cl' if r['auto'][m]['channels_last'] else ''}" for m in ("train", "infer")}
        cost = r["auto"]["train"]["wall_seconds"] + r["auto"]["infer"]["wall_seconds"]
        print(f"| {name} | {cells} | {ch['train']} | {ch['infer']} | {cost:.1f} s |", flush=True)
        write(args, limit, rows)  # after every model: a long run interrupted keeps what it measured


def write(args, limit: int, rows: list) -> None:
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": autotune.cpu_info(),
        "platform": platform.machine(),
        "onednn_bf16_flag": bf16_supported(torch.device("cpu")),
        "bf16_autocast_runs": autotune.bf16_autocast_runs("cpu"),
        "timed_images": limit,
        "repeats": args.repeats,
    }
    atomic_write_text(args.out, json.dumps({**meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
