"""What torch.compile, fused optimizers and larger batches buy a default model's training here, and at what accuracy.

Each option trains the model with its recipe's settings changed only by that option, for --epochs epochs (default:
the recipe's) and each of --seeds, one run after another; reported per option: the median seconds per epoch after
the first, the first epoch (where torch.compile compiles), the whole training time (compile included) and test
accuracy, mean and spread over seeds. Options:

- baseline: the recipe as `fashionclf train --preset MODEL` runs it;
- compile: `--compile` (inductor on the CPU: the training step's graph, compiled in the first epoch);
- fused: Adam/AdamW with fused=True (one kernel for every parameter's update; torch >= 2.4 on the CPU);
- batch256: batch 256 with the learning rate doubled (linear scaling), half the optimizer steps per epoch.

    .venv/bin/python benchmarks/step_options.py [--models tuned_cnn] [--options baseline,compile,fused,batch256] \\
        [--epochs 2] [--seeds 0] [--out benchmarks/results/step_options.json]
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import statistics
from datetime import UTC, datetime
from unittest import mock

import torch

from fashionclf.core.io import atomic_write_text
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.engine import autotune
from fashionclf.engine.inference import evaluate
from fashionclf.training.loop import fit
from fashionclf.training.recipes import resolve_config


@contextlib.contextmanager
def fused_optimizers():
    """torch.optim.Adam and AdamW built with fused=True while inside (fashionclf's make_optimizer builds them)."""
    with (
        mock.patch.object(torch.optim, "Adam", functools.partial(torch.optim.Adam, fused=True)),
        mock.patch.object(torch.optim, "AdamW", functools.partial(torch.optim.AdamW, fused=True)),
    ):
        yield


def option(name: str, cfg):
    """(config, context) for one option."""
    if name == "baseline":
        return cfg, contextlib.nullcontext()
    if name == "compile":
        return dataclasses.replace(cfg, compile=True), contextlib.nullcontext()
    if name == "fused":
        return cfg, fused_optimizers()
    if name == "batch256":
        return dataclasses.replace(cfg, batch_size=256, lr=cfg.lr * 256 / cfg.batch_size), contextlib.nullcontext()
    raise SystemExit(f"unknown option {name!r}; valid: baseline, compile, fused, batch256")


def one_run(model: str, opt: str, epochs: int | None, seed: int, d) -> dict:
    cfg = resolve_config(model, None, seed=seed, early_stopping=0, **({"epochs": epochs} if epochs else {}))
    cfg, ctx = option(opt, cfg)
    torch._dynamo.reset()  # every compiled run pays its own compile
    with ctx:
        res = fit(cfg, d.train_x, d.train_y, d.val_x, d.val_y)
    secs = [h["seconds"] for h in res.history]
    return {
        "option": opt,
        "seed": seed,
        "epochs": len(secs),
        "epoch_seconds": secs,
        "train_seconds": res.train_seconds,
        "test_accuracy": evaluate(res.model, d.test_x, d.test_y)["accuracy"],
        "precision_choice": res.precision_choice,
    }


def summary(runs: list[dict]) -> dict:
    later = [statistics.median(r["epoch_seconds"][1:] or r["epoch_seconds"]) for r in runs]
    acc = [r["test_accuracy"] * 100 for r in runs]
    return {
        "s_per_epoch_after_first": statistics.median(later),
        "first_epoch_s": statistics.median(r["epoch_seconds"][0] for r in runs),
        "train_s": statistics.median(r["train_seconds"] for r in runs),
        "test_acc_mean": statistics.mean(acc),
        "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "seeds": [r["seed"] for r in runs],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tuned_cnn")
    ap.add_argument("--options", default="baseline,compile,fused,batch256")
    ap.add_argument("--epochs", type=int, default=None, help="default: each recipe's own")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default="benchmarks/results/step_options.json")
    args = ap.parse_args()
    d = load_fashion_mnist()
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": autotune.cpu_info(), "torch": torch.__version__, "rows": []}
    print("| model | option | s/epoch after the first | first epoch s | train s | test % (mean ± std) | seeds |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for opt in args.options.split(","):
            runs = [one_run(model, opt, args.epochs, int(s), d) for s in args.seeds.split(",")]
            row = {"model": model, "option": opt, **summary(runs), "runs": runs}
            result["rows"].append(row)
            atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
            print(
                f"| {model} | {opt} | {row['s_per_epoch_after_first']:.2f} | {row['first_epoch_s']:.2f} | {row['train_s']:.1f} | "
                f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f} | {len(runs)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
