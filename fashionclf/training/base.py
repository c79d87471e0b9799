"""The one interface of what trains a run: `Trainer.train(cfg, data, job) -> metrics`.

A config says what to train (`TrainConfig`), the data what on (`FashionMNIST`), and a `Job` everything about the
run folder it lands in: where, whether it may replace or resume one, the callbacks that observe it, the share the
"none of these" rule counts known, the promise its review rule keeps, and what else meta.json should say.

The implementations reuse one another rather than copy a signature:

- `Supervised` (supervised.py) fits the loop (loop.py) on labelled data, scores it and writes the run folder;
- `SelfTraining` (selftrain.py) is a teacher trained by `Supervised`, its confident labels on unlabelled photos, and a
  student trained by `Supervised` on both;
- `Distillation` (distill.py) is teachers' soft labels on unlabelled photos and a student trained by `Supervised`.

`trainer.trainer_for` picks one from what a user gave (unlabelled photos, teachers). A head on stored embeddings
(embedded.py) trains from a store and image folders rather than a loaded dataset, so it is a function of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from fashionclf.core.config import TrainConfig
from fashionclf.data.fashion_mnist import FashionMNIST
from fashionclf.evaluation.calibrate import Promise
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE
from fashionclf.training.callbacks import NONE, Callbacks


@dataclass(frozen=True)
class Job:
    """Where a training lands and what observes it. out: the run folder (claimed and locked while it trains);
    overwrite: replace a finished run there; resume: continue the checkpoint a kill left there; meta: entries added to
    meta.json (self-training's and distillation's records)."""

    out: Path
    overwrite: bool = False
    resume: bool = False
    callbacks: Callbacks = NONE
    unknown_share: float = DEFAULT_KNOWN_SHARE
    promise: Promise = field(default_factory=Promise)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        if not 0 < self.unknown_share <= 1:
            raise ValueError(f"unknown_share {self.unknown_share}: expected a share in (0, 1], e.g. {DEFAULT_KNOWN_SHARE}")

    def but(self, **changes) -> Job:
        """The same job with some fields changed (another folder, more meta.json entries)."""
        return replace(self, **changes)


class Trainer(ABC):
    """Trains cfg on data into job.out and returns the run's metrics (also in job.out/metrics.json)."""

    kind: ClassVar[str]  # what meta.json and the docs call it

    @abstractmethod
    def train(self, cfg: TrainConfig, data: FashionMNIST, job: Job) -> dict: ...
