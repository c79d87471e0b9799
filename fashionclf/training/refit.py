"""The next model after a review: a store run's head refitted on the stored vectors plus a person's decisions.

A person's decision on a photo is a label as good as any in the training data, and the photo's vectors are already
in the store, so the next model costs a linear fit, not a training. `refit` takes every labelled row (the run's
training photos and the decided ones), starts from the current head with the L2 weight chosen when the run was
fitted, and refits the review rule on out-of-fold logits of all of them (each row scored by one of five heads that
did not see it), as `train --store --calibrate-on oof` does. experiments/review_loop/ measures what it gains per
100 decisions and how long it takes at 10,000 photos (docs/results/review-loop.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fashionclf.evaluation.calibrate import Promise, calibrate
from fashionclf.training.embedded import fit_head, out_of_fold, view_logits


@dataclass
class Refit:
    head: torch.nn.Linear  # on raw stored vectors, as FrozenLites.head
    rule: dict  # calibrate()'s: temperature, threshold and what it promises
    seconds: float

    def decide(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predicted class, calibrated confidence, labelled with no person) for (n, views, dim) stored vectors."""
        logits, _ = view_logits(self.head, vectors)
        conf, pred = (logits / self.rule["temperature"]).softmax(1).max(1)
        threshold = self.rule.get("threshold")
        auto = conf >= threshold if threshold is not None else torch.zeros(len(conf), dtype=torch.bool)
        return pred, conf, auto


def refit(
    vectors: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    decay: float,
    init: torch.nn.Linear | None = None,
    promise: Promise = Promise(),
    seed: int = 0,
) -> Refit:
    """The head and review rule for every labelled row: vectors (n, views, dim) from the store, labels (n,).
    decay: the run's L2 weight (its meta.json, trainer.decay); init: its head, where the refit starts."""
    if len(labels) != len(vectors) or vectors.dim() != 3:
        raise ValueError(f"refit takes (n, views, dim) vectors and n labels; got {tuple(vectors.shape)} and {len(labels)}")
    start = time.perf_counter()
    none = torch.empty(0, *vectors.shape[1:]), torch.empty(0, dtype=torch.long)
    head, _ = fit_head(vectors, labels, *none, classes, decays=(decay,), init=init)
    logits, _ = out_of_fold(vectors, labels, classes, decay, seed=seed, init=head)
    rule = calibrate(logits, labels, promise.target, promise.delta)
    return Refit(head, rule, time.perf_counter() - start)
