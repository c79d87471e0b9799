"""Self-training: a run's own confident labels on a shop's unlabelled photos teach the next run.

A shop has far more unlabelled photos (every new product) than labelled ones. `train --data LABELLED
--unlabelled FOLDER` uses them in the Noisy Student way (Xie et al. 2020), with fashionclf's own review
rule as the confidence filter:

1. **Teacher.** The config is trained on the labelled data alone, into `<out>-teacher` (a run folder of
   its own, kept: the student's meta.json names it; an existing finished teacher is reused).
2. **Pseudo-labels.** The teacher predicts every unlabelled photo, converted as `predict` converts it.
   A photo keeps the teacher's label when the teacher's review rule would label it with no person: its
   calibrated confidence at or above the threshold fitted on the *validation* split for 99% precision,
   and not "none of these". The threshold is chosen on validation, never on test; the rest is left out.
3. **Student.** The same config, with its augmentation raised to at least STUDENT_NOISE (the student
   must not merely copy the teacher: random affine on, random erasing and CutMix), trained on the
   labelled training split plus the kept photos; its validation and test splits are the teacher's, so
   the two runs' figures compare directly. The student is the run in `out`.

What was kept, per class, and how many were left for review, unknown or unreadable go into the student's
meta.json (`self_training`). One round (Noisy Student iterates, the student becoming the next teacher;
that is not built). A teacher killed while training is trained again with --overwrite.
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fashionclf.core.config import TrainConfig, replace
from fashionclf.data.fashion_mnist import DataError, FashionMNIST
from fashionclf.data.images import ImageError, find_images, load_rgb
from fashionclf.engine.runs import META, LoadedRun, load_run
from fashionclf.infer.predict import convert_rgb, predict_converted
from fashionclf.training.base import Job, Trainer
from fashionclf.training.supervised import Supervised

# The student's noise: each augmentation at least this (a config that asks for more keeps its own).
STUDENT_NOISE = {"erase": 0.25, "cutmix": 0.5}


def teacher_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}-teacher"


def converted_batches(paths: list[Path], convert: Callable, counts: Counter, batch_size: int = 64):
    """(start, [convert(rgb), ...]) per batch of paths; unreadable photos are counted in counts["unreadable"], skipped."""
    for start in range(0, len(paths), batch_size):
        out = []
        for p in paths[start : start + batch_size]:
            try:
                out.append(convert(load_rgb(p)))
            except ImageError:
                counts["unreadable"] += 1
        yield start, out


def pseudo_label(teacher: LoadedRun, paths: list[Path], method: str = "grabcut", batch_size: int = 64, on_batch: Callable | None = None):
    """(x_u8, y, counts): the photos the teacher would label with no person, as the teacher's model takes them
    ((N, 28, 28) or (N, 3, S, S) uint8) with its labels; counts: kept, per_class, review, unknown, unreadable."""
    xs, ys, counts, per_class = [], [], Counter(), Counter()
    for start, images in converted_batches(paths, lambda rgb: [convert_rgb(rgb, method, teacher)], counts, batch_size):
        rows = predict_converted([teacher], images, top_k=1) if images else []
        for img, row in zip(images, rows):
            if row["label"] is None or row.get("unknown"):
                counts["unknown"] += 1
            elif row["needs_review"]:
                counts["review"] += 1
            else:
                xs.append(img[0])
                ys.append(teacher.classes.index(row["label"]))
                per_class[row["label"]] += 1
        if on_batch:
            on_batch(min(start + batch_size, len(paths)), len(paths))
    counts = {"considered": len(paths), "kept": len(xs), **{k: counts[k] for k in ("review", "unknown", "unreadable")}}
    counts["per_class"] = dict(sorted(per_class.items()))
    x = torch.from_numpy(np.stack(xs)) if xs else None
    return x, torch.tensor(ys, dtype=torch.long), counts


def unlabelled_photos(unlabelled: str | Path, resume: bool, why_not_resume: str) -> tuple[Path, list[Path]]:
    """The folder and its photos; refuses --resume (why_not_resume says why) and a folder without photos."""
    if resume:
        raise ValueError(why_not_resume)
    folder = Path(unlabelled)
    paths = find_images([folder]) if folder.is_dir() else []
    if not paths:
        raise DataError(f"--unlabelled {folder}: no images found there (.jpg, .png, .webp, ...); give a folder of photos")
    return folder, paths


def with_photos(data: FashionMNIST, x: torch.Tensor | None, y: torch.Tensor, paths: list[Path], what: str) -> FashionMNIST:
    """A copy of data whose training split ends with the photos x (labels or (N, C) targets y, data's targets as y's
    kind), checksummed with the photos' paths so a run on it never passes for one on data alone."""
    student = copy.copy(data)
    if x is not None:
        if tuple(x.shape[1:]) != tuple(data.train_x.shape[1:]):
            raise DataError(f"{what} are {tuple(x.shape[1:])}, the training images {tuple(data.train_x.shape[1:])}")
        student.train_x, student.train_y = torch.cat([data.train_x, x]), torch.cat([data.train_y, y])
    h = hashlib.sha256("".join(f"{p}\n" for p in paths).encode()).hexdigest()
    student.checksums = {**data.checksums, "unlabelled": h}
    return student


def student_config(cfg: TrainConfig) -> TrainConfig:
    """cfg with augmentation on and each STUDENT_NOISE augmentation raised to at least its value."""
    raised = {f"aug_{k}": max(getattr(cfg.aug, k), v) for k, v in STUDENT_NOISE.items()}
    return replace(cfg, augment=True, **raised)


class SelfTraining(Trainer):
    """A teacher into <out>-teacher (reused when finished), its confident labels on `unlabelled`, and the student into
    job.out: both trained by Supervised. method: how a photo becomes a 28x28 scan for gray runs (predict's)."""

    kind = "self-training"

    def __init__(self, unlabelled: str | Path, method: str = "grabcut"):
        self.unlabelled, self.method = unlabelled, method

    def train(self, cfg: TrainConfig, data: FashionMNIST, job: Job) -> dict:
        """Returns the student's metrics."""
        why = "--unlabelled trains a teacher, then a student; --resume continues one training: leave out one of them"
        folder, paths = unlabelled_photos(self.unlabelled, job.resume, why)
        tdir = teacher_folder(job.out)
        if job.overwrite or not (tdir / META).exists():
            Supervised().train(cfg, data, job.but(out=tdir))
        teacher = load_run(tdir)
        x, y, counts = pseudo_label(teacher, paths, self.method)
        student = with_photos(data, x, y, paths, "pseudo-labelled images")
        info = {"teacher": str(tdir.absolute()), "unlabelled": str(folder.absolute()), "method": self.method, **counts}
        info["teacher_test_accuracy"] = teacher.metrics.get("test_accuracy")
        info["noise"] = dict(STUDENT_NOISE)
        return Supervised().train(student_config(cfg), student, job.but(meta={**job.meta, "self_training": info}))
