"""Distillation: finished teacher runs (larger, or several) teach a student through its soft labels.

`train --data LABELLED --unlabelled FOLDER --teacher RUN [--teacher RUN ...]` trains the config (the student: a small,
fast model that serves) on

- the labelled training split with its own labels (one-hot: the truth there beats any teacher, and a teacher's
  answers on images it trained on are overconfident copies of those labels), and
- every unlabelled photo the teachers read, with the teachers' calibrated class probabilities averaged as its
  target (Hinton et al. 2015, "dark knowledge"; the soft label keeps what the teachers are unsure about, where
  self-training, selftrain.py, keeps only the photos its rule would label with no person, as hard labels).

Each teacher sees every photo converted as `predict` converts it for that teacher (its own input size and kind:
a Lite2 at 224 px and a 28x28 scan run may teach one Lite0 at 96 px); the student sees it as its training images
are. Photos the teachers together call "none of these" (predict's joint rule) are left out, as are unreadable files.
The student's augmentation is raised to the self-training noise (selftrain.STUDENT_NOISE); its validation and test
splits are its own data's, so its figures compare with a run trained without teachers. The teachers' calibrated
probabilities are the targets (their temperature was fitted on their validation split); no further temperature.

What each teacher was and what was kept go into the student's meta.json (`distillation`). A teacher trained on other
data than the student may have seen the student's test photos; `same_data` records whether its data's checksums
and split are the student's.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from fashionclf.core.config import TrainConfig
from fashionclf.core.io import to_json
from fashionclf.data.fashion_mnist import DataError, FashionMNIST
from fashionclf.engine.runs import LoadedRun, load_run
from fashionclf.infer.predict import class_order, convert_rgb, joint_results, predict_scored, results_from_probs
from fashionclf.training.base import Job, Trainer
from fashionclf.training.selftrain import STUDENT_NOISE, converted_batches, student_config, unlabelled_photos, with_photos
from fashionclf.training.supervised import Supervised, data_info


def student_converter(data: FashionMNIST, method: str = "grabcut") -> Callable[[np.ndarray], np.ndarray]:
    """A decoded photo as the student's training images are: letterboxed (3, S, S) RGB, or a 28x28 scan (predict's cut-out)."""
    from fashionclf.data.folders import letterbox
    from fashionclf.data.photos import to_fashion_mnist

    if data.train_x.ndim == 4:
        side = int(data.train_x.shape[-1])
        return lambda rgb: letterbox(rgb, side).transpose(2, 0, 1)
    return lambda rgb: to_fashion_mnist(rgb, method).image


def teacher_probs(teachers: list[LoadedRun], images: list[list[np.ndarray]]) -> tuple[torch.Tensor, list[bool]]:
    """The teachers' calibrated probabilities averaged, in teachers[0]'s class order, and whether each photo is
    "none of these" by predict's rule for runs asked together (joint_results)."""
    probs, unknowns = [], []
    for i, t in enumerate(teachers):
        p, u = predict_scored(t, np.stack([im[i] for im in images]))
        probs.append(p if i == 0 else torch.empty_like(p).index_copy_(1, class_order(teachers[0], t), p))
        unknowns.append(u)
    if len(teachers) == 1:
        rows = results_from_probs(teachers[0], probs[0], 1, unknowns[0])
    else:
        rows = joint_results(teachers, probs, 1, unknowns)
    return torch.stack(probs).mean(0), [bool(r.get("unknown")) or r["label"] is None for r in rows]


def soft_labels(teachers: list[LoadedRun], paths: list[Path], to_student: Callable, method: str = "grabcut", batch_size: int = 64):
    """(x_u8, probs, counts): the photos as the student takes them, the teachers' averaged probabilities (N, C) in
    teachers[0]'s class order, and counts (considered, kept, unknown, unreadable, per_class by the teachers' top class)."""
    xs, ps, counts, per_class = [], [], Counter(), Counter()

    def convert(rgb):
        return [convert_rgb(rgb, method, t) for t in teachers], to_student(rgb)

    for _, batch in converted_batches(paths, convert, counts, batch_size):
        if not batch:
            continue
        probs, unknown = teacher_probs(teachers, [images for images, _ in batch])
        for (_, img), prob, unk in zip(batch, probs, unknown):
            if unk:
                counts["unknown"] += 1
                continue
            xs.append(img)
            ps.append(prob)
            per_class[teachers[0].classes[int(prob.argmax())]] += 1
    counts = {"considered": len(paths), "kept": len(xs), "unknown": counts["unknown"], "unreadable": counts["unreadable"]}
    counts["per_class"] = dict(sorted(per_class.items()))
    x = torch.from_numpy(np.stack(xs)) if xs else None
    return x, (torch.stack(ps) if ps else None), counts


def _teacher_record(t: LoadedRun, data: FashionMNIST) -> dict:
    # as compare() decides a finished run saw the same data: files, sizes and split, wherever they now lie
    same = {**t.meta.get("data", {}), "source": None} == json.loads(to_json({**data_info(data), "source": None}))
    return {
        "path": str(t.path.absolute()),
        "model": t.meta["config"]["model"],
        "test_accuracy": t.metrics.get("test_accuracy"),
        "same_data": same,
    }


class Distillation(Trainer):
    """The student into job.out, trained by Supervised on the data's labelled split and the soft labels `teachers`
    (finished runs) give the photos in `unlabelled`."""

    kind = "distillation"

    def __init__(self, unlabelled: str | Path, teachers: list[str | Path], method: str = "grabcut"):
        self.unlabelled, self.teachers, self.method = unlabelled, list(teachers), method

    def train(self, cfg: TrainConfig, data: FashionMNIST, job: Job) -> dict:
        """Returns the student's metrics."""
        why = "--teacher first labels the unlabelled photos, then trains; --resume continues one training: leave out one of them"
        folder, paths = unlabelled_photos(self.unlabelled, job.resume, why)
        runs = [load_run(t) for t in self.teachers]
        order = teachers_order(runs, data)
        x, probs, counts = soft_labels(runs, paths, student_converter(data, self.method), self.method)
        student = copy.copy(data)
        student.train_y = F.one_hot(data.train_y, len(data.classes)).float()
        # teachers[0]'s class order into the data's: data class j is teacher column order[j]
        student = with_photos(student, x, probs[:, order] if x is not None else None, paths, "the student's copies of the photos")
        info = {"teachers": [_teacher_record(t, data) for t in runs], "unlabelled": str(folder.absolute()), "method": self.method, **counts}
        info["noise"] = dict(STUDENT_NOISE)
        return Supervised().train(student_config(cfg), student, job.but(meta={**job.meta, "distillation": info}))


def teachers_order(runs: list[LoadedRun], data: FashionMNIST) -> list[int]:
    """Where each of the data's classes is among the first teacher's; a DataError unless every teacher knows them."""
    try:
        order = class_order(runs[0], SimpleNamespace(classes=data.classes, path=Path(f"the data ({data.source})")))
        for t in runs[1:]:
            class_order(runs[0], t)
    except ValueError:
        names = "; ".join(f"{t.path}: {', '.join(t.classes)}" for t in runs)
        raise DataError(
            f"--teacher: every teacher must know the data's classes ({', '.join(data.classes)}), named alike in any order; {names}"
        ) from None
    return order
