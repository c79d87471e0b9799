"""A study's plan before it trains, and its clock while it trains.

The plan gives each run its epochs and an estimated time, from the step cost measured on this machine (the same
timing `--precision auto` makes, cached: the training that follows reuses it). The clock turns finished epochs into
elapsed and remaining time for the whole study, rescaling what is left by how the estimate has held so far.

QUICK is the seed study that `make run` trains: fewer epochs than the full recipes, chosen by measurement
(docs/results/quick-study.md) to keep every model clearly above the seed's own figure; `make study` trains the full
recipes over 3 seeds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fashionclf.core.config import TrainConfig
from fashionclf.engine import autotune
from fashionclf.engine.device import choose_precision, resolve_device
from fashionclf.engine.inference import to_input
from fashionclf.models import build_model

# What the quick study changes in each recipe (the full recipes: mlp 10 epochs, simple_cnn 10, tuned_cnn 10, advanced_cnn
# 20 with ReduceLROnPlateau at lr 0.001, which lowers the rate only after epochs without progress: in 4 epochs it never
# would, so the quick advanced_cnn anneals with one-cycle as the other three recipes do, from a peak of 0.004; measured
# in docs/results/quick-study.md: 4 epochs gave 89.95% as the recipe, 90.32% with one-cycle, 91.23% with its lr 0.004).
QUICK = {
    "mlp": {"epochs": 10},
    "simple_cnn": {"epochs": 3},
    "tuned_cnn": {"epochs": 5},
    "advanced_cnn": {"epochs": 4, "schedule": "onecycle", "lr": 0.004},
}
CORRUPTIONS = 70  # the robustness suite: 14 corruptions x 5 severities, each a forward pass over its images
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a training step (forward, backward, update)


def quick_record(full: list[TrainConfig], quick_configs: list[TrainConfig]) -> dict:
    """What results.json keeps of a quick study (the report says it): epochs per model, the recipes' own, other changes."""
    changed = {c.model: {k: v for k, v in QUICK.get(c.model, {}).items() if k != "epochs"} for c in quick_configs}
    return {
        "kind": "quick",
        "epochs": {c.model: c.epochs for c in quick_configs},
        "recipe_epochs": {c.model: c.epochs for c in full},
        "changed": {m: v for m, v in changed.items() if v},
    }


def quick(configs: list[TrainConfig]) -> list[TrainConfig]:
    """The configs with the quick study's changes (QUICK; never more epochs than asked for), others as they are."""
    out = []
    for c in configs:
        change = QUICK.get(c.model, {})
        out.append(dataclasses.replace(c, **{**change, "epochs": min(c.epochs, change.get("epochs", c.epochs))}))
    return out


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: its epochs, the estimated seconds of one epoch (training and validation), and of what
    follows the last epoch (test predictions, calibration, the corruption suite)."""

    model: str
    seed: int
    epochs: int
    epoch_seconds: float
    after_seconds: float
    reused: bool = False  # finished before: the study reuses it and it costs nothing

    @property
    def seconds(self) -> float:
        return 0.0 if self.reused else self.epochs * self.epoch_seconds + self.after_seconds


def image_seconds(cfg: TrainConfig, example_u8: torch.Tensor) -> float:
    """Seconds of training per image: one training step on autotune.measure_batch images, in the precision the training
    will choose, divided by those images."""
    device = resolve_device(cfg.device)
    model = build_model(cfg).to(device)
    example = to_input(example_u8[: autotune.MEASURE_BATCH], device, channels_last=False)
    images = autotune.measure_batch(example)
    prec = choose_precision(cfg.precision, device, model, example, train=True, channels_last=cfg.channels_last, name=cfg.model)
    variant = prec.name + ("+cl" if prec.channels_last else "")
    if variant in prec.timings:
        return prec.timings[variant] / images
    steps = autotune.model_steps(model, example[:images], True, [variant])  # a forced precision is not timed by choose_precision
    return autotune.measure(steps, time.perf_counter, autotune.BUDGET_S)[variant] / images


def estimate(configs: list[TrainConfig], data, robustness_images: int = 0, reused: Callable | None = None) -> list[PlannedRun]:
    """The plan: one PlannedRun per config, in training order. reused(cfg): whether the study will reuse a finished
    run for it. The step cost is measured once per model (seeds cost the same)."""
    per_image: dict[str, float] = {}
    n_train, n_val, n_test = len(data.train_y), len(data.val_y), len(data.test_y)
    plan = []
    for cfg in configs:
        if cfg.model not in per_image:
            per_image[cfg.model] = image_seconds(cfg, data.train_x)
        s = per_image[cfg.model]
        epoch = n_train * s + n_val * s * FORWARD_SHARE
        after = (n_test + 2 * n_val + CORRUPTIONS * min(robustness_images, n_val)) * s * FORWARD_SHARE
        plan.append(PlannedRun(cfg.model, cfg.seed, cfg.epochs, epoch, after, bool(reused and reused(cfg))))
    return plan


class StudyClock:
    """Elapsed and remaining seconds of a study as it trains: epochs done count at the plan's estimate, and what is
    left is rescaled by the ratio of real to estimated time so far (an early-stopped run ends its share)."""

    def __init__(self, plan: list[PlannedRun], clock: Callable[[], float] = time.monotonic):
        self.plan, self.clock, self.start = plan, clock, clock()
        self.left = [i for i, p in enumerate(plan) if not p.reused]  # runs still to train, in order
        self.current: int | None = None
        self.epochs_done = 0
        self.done_estimate = 0.0  # estimated seconds of the work finished

    @property
    def total(self) -> float:
        return sum(p.seconds for p in self.plan)

    def run_started(self, model: str, seed: int) -> None:
        if self.current is not None:  # the previous run is finished: all of its share counts as done
            self._finish()
        match = [i for i in self.left if (self.plan[i].model, self.plan[i].seed) == (model, seed)]
        self.current = match[0] if match else None
        if self.current is not None:
            self.left.remove(self.current)
        self.epochs_done = 0

    def epoch_done(self) -> None:
        if self.current is not None:
            self.epochs_done += 1
            self.done_estimate += self.plan[self.current].epoch_seconds

    def _finish(self) -> None:
        """The current run is over: what followed its last epoch is done; epochs it never ran (stopped early) are
        neither done nor left."""
        self.done_estimate += self.plan[self.current].after_seconds
        self.current = None

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self, part: float = 0.0) -> float:
        """Seconds left: the plan's estimate of the work not done, times real/estimated time so far (once a tenth of
        the estimate is done; before that the plan as it stands). part: the share of the current epoch done."""
        todo = sum(self.plan[i].seconds for i in self.left)
        done = self.done_estimate
        if self.current is not None:
            p = self.plan[self.current]
            running = p.epoch_seconds * min(max(part, 0.0), 1.0) if self.epochs_done < p.epochs else 0.0
            todo += max(0, p.epochs - self.epochs_done) * p.epoch_seconds + p.after_seconds - running
            done += running
        ratio = self.elapsed() / done if done > 0.1 * max(self.total, 1e-9) else 1.0
        return todo * ratio


def clock_text(seconds: float) -> str:
    """m:ss, or h:mm:ss past an hour."""
    s = max(0, math.ceil(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
