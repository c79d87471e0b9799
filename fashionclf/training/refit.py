"""The next model after a review: a store run's head refitted on the stored vectors plus a person's decisions.

A person's decision on a photo is a label as good as any in the training data, and the photo's vectors are already
in the store, so the next model costs a linear fit, not a training. `ReviewHead` keeps what a refit needs between
decisions: the run's labelled photos, the decided ones, the current head and five fold heads, each refitted from its
own last state (with the L2 weight chosen when the run was fitted, a refit converges in a few dozen steps). The six
heads fit together (fit_heads): one pass over the vectors serves all six. The first fit runs to convergence; each
refit after it takes at most REFIT_EVALS evaluations of the objective, so that it stays within seconds at 10,000
photos. That bounds time, not validity: the rule's guarantee needs only that no fold head saw the labels of the
calibration items it scores, however far its fit went.

The guaranteed review rule needs calibration items exchangeable with the photos it will judge. The run's labelled
photos are (the usual assumption); the decided photos are not: the desk shows a person the photos the model was
least sure of, a sample chosen by the model. So decided photos only train, and the calibration items stay the run's
labelled photos, each scored by the fold head that left it out (cross-fitting) and learned every decision: the rule
follows the better head without counting the desk's chosen photos as a random sample. experiments/review_loop/
measures the gain per 100 decisions and the seconds at 10,000 photos (docs/results/review-loop.md).
"""

from __future__ import annotations

import time

import torch

from fashionclf.engine.inference import head_view_logits
from fashionclf.evaluation.calibrate import Promise, calibrate
from fashionclf.training.embedded import fit_heads, fit_rows, stacked, to_linear, to_raw, to_standardised

# Objective evaluations per refit after the first fit: 1.55 s at 10,000 photos on two cores (one row per photo). A refit goes on from where
# the last one stopped, so a few refits reach the optimum the first fit would; see the module's docstring.
REFIT_EVALS = 16


class ReviewHead:
    """The head and review rule over labelled stored vectors, refitted as decisions arrive.

    vectors (n, views, dim) and labels (n,): the run's labelled rows (also the calibration items); decay: the run's L2
    weight (meta.json's trainer.decay); init: its head, where the first fit starts. The features are standardised once,
    by the run's rows (decisions are a few dozen rows among thousands: they move the statistics by nothing that matters,
    and fixed statistics keep each refit's start where the last one ended). After each fit, `head_seconds` is the fit of
    the head and its fold heads together (what re-ranking a queue waits for) and `seconds` all of it, the rule included.
    views: how each photo's views become rows, as the run's head was fitted (embedded.fit_rows; meta.json's
    trainer.views, "rows" for runs saved before it was recorded)."""

    def __init__(
        self,
        vectors: torch.Tensor,
        labels: torch.Tensor,
        classes: int,
        decay: float,
        init: torch.nn.Linear | None = None,
        promise: Promise = Promise(),
        seed: int = 0,
        folds: int = 5,
        refit_evals: int = REFIT_EVALS,
        views: str = "mean",
    ):
        _check(vectors, labels)
        fitted = fit_rows(vectors, views)
        self.classes, self.decay, self.promise, self.fit_views, self.views = classes, decay, promise, views, fitted.shape[1]
        self.refit_evals = refit_evals
        rows = fitted.reshape(-1, vectors.shape[2])
        self.mean, self.std = rows.mean(0), rows.std(0).clamp_min(1e-6)
        self.base, self.labels_base = vectors, labels
        self.xs = (rows - self.mean) / self.std  # every row a head learns, standardised: the run's, then the decided
        self.ys = labels.repeat_interleave(self.views)
        self.part = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)) % folds
        # head 0 learns every row; head k (1..folds) every row but the run's photos of fold k-1 (decided rows: all)
        held = self.part.repeat_interleave(self.views)[None, :] == torch.arange(folds)[:, None]
        self.masks = torch.cat([torch.zeros(1, len(self.ys), dtype=torch.bool), held]).logical_not()
        start = torch.zeros(classes, rows.shape[1] + 1) if init is None else stacked(to_standardised(init, self.mean, self.std))
        self.params = start.expand(folds + 1, -1, -1).clone()  # (heads, classes, dim + 1): weights and bias
        self._fit_all()

    @property
    def labels(self) -> torch.Tensor:
        """Every row the head learned: the run's, then the decided ones."""
        return self.ys[:: self.views]

    def _fit_all(self, evals: int = 300) -> None:
        start = time.perf_counter()
        self.params = fit_heads(self.xs, self.ys, self.masks, self.decay, self.params, evals)
        self.head = to_raw(to_linear(self.params[0]), self.mean, self.std)
        self.head_seconds = time.perf_counter() - start
        logits = torch.empty(len(self.labels_base), self.classes)
        for k in range(len(self.params) - 1):
            out = self.part == k
            logits[out] = head_view_logits(to_raw(to_linear(self.params[k + 1]), self.mean, self.std), self.base[out])[0]
        self.cal_logits = logits
        self.rule = calibrate(logits, self.labels_base, self.promise.target, self.promise.delta)
        self.seconds = time.perf_counter() - start

    def add(self, vectors: torch.Tensor, labels: torch.Tensor) -> ReviewHead:
        """A person's decisions on these rows: they join every head's training rows; the heads refit from their last
        state and the rule refits on the calibration items' new cross-fitted logits."""
        _check(vectors, labels)
        if len(labels) == 0:
            return self
        if labels.min() < 0 or labels.max() >= self.classes:
            raise ValueError(f"decided labels must be class indices 0..{self.classes - 1}; got {labels.min()}..{labels.max()}")
        rows = (fit_rows(vectors, self.fit_views).reshape(-1, vectors.shape[2]) - self.mean) / self.std
        self.xs, self.ys = torch.cat([self.xs, rows]), torch.cat([self.ys, labels.repeat_interleave(self.views)])
        self.masks = torch.cat([self.masks, torch.ones(len(self.masks), len(rows), dtype=torch.bool)], 1)
        self._fit_all(self.refit_evals)
        return self

    def decide(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predicted class, calibrated confidence, labelled with no person) for (n, views, dim) stored vectors."""
        logits, _ = head_view_logits(self.head, vectors)
        conf, pred = (logits / self.rule["temperature"]).softmax(1).max(1)
        threshold = self.rule.get("threshold")
        auto = conf >= threshold if threshold is not None else torch.zeros(len(conf), dtype=torch.bool)
        return pred, conf, auto


def _check(vectors: torch.Tensor, labels: torch.Tensor) -> None:
    if vectors.dim() != 3 or len(labels) != len(vectors):
        raise ValueError(f"expected (n, views, dim) vectors and n labels; got {tuple(vectors.shape)} and {len(labels)}")
