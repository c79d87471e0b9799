"""Cost of one training step (forward, backward, SGD step) per model, fp32 + channels_last, on the CPU.

    .venv/bin/python benchmarks/step_cost.py resnet advanced_cnn tuned_cnn [--threads 1] [--batch 128]

A rough per-step comparison between models (the median of 5 steps after 2 warm-up steps), not an epoch
time: no data loading, no augmentation, no validation. Prints one line per model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fashionclf.models import create_model


def step_seconds(name: str, batch: int, steps: int = 5) -> float:
    model = create_model(name).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        s = step_seconds(name, args.batch)
        print(f"{name}: {s * 1000:.0f} ms per step of {args.batch} ({args.threads} thread{'s' if args.threads > 1 else ''})")


if __name__ == "__main__":
    main()
