"""Do more test-time views pay? Validation and test accuracy of trained runs with 1, 2, 10 and 18 views.

Views: the image alone; + its mirror (the runs' own TTA); + the image and its mirror shifted by one
pixel up, down, left and right (10); + all eight one-pixel shifts (18). The log of the mean softmax
over the views is the prediction, as in `fashionclf.engine.inference.infer`. Choose on the validation columns.

    .venv/bin/python experiments/tta_views/tta_views.py study/runs/resnet-s0 study/runs/resnet-s1 study/runs/resnet-s2

It prints a Markdown table; experiments/tta_views/results/tta_views.md keeps the study's.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine.device import autocast, resolve_precision
from fashionclf.engine.inference import to_input
from fashionclf.engine.runs import load_run

KINDS = {
    "one": [],
    "mirror": [],
    "mirror+4 shifts": [(0, 1), (0, -1), (1, 0), (-1, 0)],
    "mirror+8 shifts": [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)],
}


def views(x: torch.Tensor, kind: str) -> list[torch.Tensor]:
    base = [x] if kind == "one" else [x, x.flip(-1)]
    out = list(base)
    for dy, dx in KINDS[kind]:
        for v in base:
            # pad with the background (the normalised value of a black pixel), then crop one pixel over
            p = F.pad(v, (1, 1, 1, 1), value=float(v.amin()))
            out.append(p[..., 1 + dy : 1 + dy + v.shape[-2], 1 + dx : 1 + dx + v.shape[-1]])
    return out


@torch.no_grad()
def accuracy(run, x_u8: torch.Tensor, y: torch.Tensor, kind: str, batch_size: int = 1000) -> float:
    model, dev = run.model.eval(), torch.device("cpu")
    amp = resolve_precision("fp32" if run.config.precision == "fp32" else "auto", dev)  # the run's own, as evaluate_run
    preds = []
    for i in range(0, len(x_u8), batch_size):
        x = to_input(x_u8[i : i + batch_size], dev, run.config.channels_last)
        with autocast(dev, amp):
            logp = [model(v.contiguous(memory_format=torch.channels_last)).float().log_softmax(-1) for v in views(x, kind)]
        preds.append((torch.stack(logp).logsumexp(0) - math.log(len(logp))).argmax(1))
    return (torch.cat(preds) == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders trained on Fashion-MNIST")
    args = ap.parse_args()
    data = load_fashion_mnist(None, allow_download=False)
    print("| run | split | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    for r in args.runs:
        run = load_run(r)
        for split, (x, y) in {"val": (data.val_x, data.val_y), "test": (data.test_x, data.test_y)}.items():
            accs = [accuracy(run, x, y, k) * 100 for k in KINDS]
            print(f"| {r} | {split} | " + " | ".join(f"{a:.2f}" for a in accs) + " |", flush=True)


if __name__ == "__main__":
    main()
