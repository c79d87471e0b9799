"""Which `Trainer` (base.py) trains a run, from what the user gave: labelled data alone (supervised), unlabelled
photos too (self-training), or unlabelled photos and finished teacher runs (distillation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fashionclf.engine import distributed
from fashionclf.training.base import Trainer
from fashionclf.training.distill import Distillation
from fashionclf.training.selftrain import SelfTraining
from fashionclf.training.supervised import Supervised


def trainer_for(unlabelled: str | Path | None = None, teachers: Sequence[str | Path] = ()) -> Trainer:
    """Supervised, SelfTraining(unlabelled) or Distillation(unlabelled, teachers); a ValueError naming the fix for a
    combination that cannot train."""
    if unlabelled is not None and distributed.world_size() > 1:  # each rank would label the photos on its own
        raise ValueError("--unlabelled labels the photos, then trains, in one process: run it without torchrun")
    if teachers and unlabelled is None:
        raise ValueError("--teacher needs --unlabelled FOLDER: the photos whose soft labels the teachers give the student")
    if unlabelled is None:
        return Supervised()
    if teachers:
        return Distillation(unlabelled, list(teachers))
    return SelfTraining(unlabelled)
