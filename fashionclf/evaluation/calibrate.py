"""Calibrated review: how far a model's confidence can be trusted, and when a person must look.

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted on the validation
split; it changes confidences, never the predicted class. The expected calibration error (ECE) says
how far confidence is from accuracy; the review threshold is the lowest confidence at which the items
labelled automatically still reach a target precision, chosen on validation and reported on test.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_TARGET_PRECISION = 0.99  # a shop accepts about 1 wrong category in 100 automatic labels
ECE_BINS = 15  # equal-width confidence bins, as in Guo et al.


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T) on a labelled set."""
    logits, labels = logits.float(), labels.long()
    log_t = torch.zeros((), requires_grad=True)  # optimise log T: T stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the item-weighted mean |accuracy - confidence| over confidence bins."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    idx = torch.bucketize(conf, edges[1:-1], right=True)  # bin b holds (edges[b], edges[b+1]]; 0 joins the first
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.float().mean().item() * abs(correct[m].mean().item() - conf[m].mean().item())
    return total


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin: its range, item count, mean confidence and accuracy (the reliability diagram)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    idx = torch.bucketize(conf, edges[1:-1], right=True)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "confidence": conf[m].mean().item() if n else None,
                "accuracy": correct[m].mean().item() if n else None,
            }
        )
    return out


def review_threshold(probs: torch.Tensor, labels: torch.Tensor, target: float = DEFAULT_TARGET_PRECISION) -> float | None:
    """The lowest confidence threshold whose automatically labelled items (confidence >= it) reach target precision.

    Items sorted by confidence; the longest prefix whose precision is at least the target sets the threshold.
    None if not even the most confident item qualifies: everything goes to review.
    """
    conf, pred = probs.max(1)
    order = torch.argsort(conf, descending=True)
    correct = (pred == labels)[order].double()
    precision = correct.cumsum(0) / torch.arange(1, len(correct) + 1, dtype=torch.float64)
    ok = torch.nonzero(precision >= target).flatten()
    if len(ok) == 0:
        return None
    k = int(ok[-1])
    return float(conf[order][k])


def coverage_at(probs: torch.Tensor, labels: torch.Tensor, threshold: float | None) -> dict:
    """What a threshold does on a labelled set: the share labelled automatically and their precision."""
    conf, pred = probs.max(1)
    auto = conf >= threshold if threshold is not None else torch.zeros_like(conf, dtype=torch.bool)
    n = int(auto.sum())
    return {
        "threshold": threshold,
        "coverage": n / len(conf) if len(conf) else 0.0,
        "precision": (pred[auto] == labels[auto]).float().mean().item() if n else None,
    }


def calibrate(val_logits: torch.Tensor, val_labels: torch.Tensor, target: float = DEFAULT_TARGET_PRECISION) -> dict:
    """Fit on the validation split: the temperature, and the review threshold on calibrated confidences."""
    t = fit_temperature(val_logits, val_labels)
    probs = (val_logits.float() / t).softmax(1)
    return {"temperature": t, "target_precision": target, "threshold": review_threshold(probs, val_labels, target)}


def crossfit_review(
    logits: torch.Tensor, labels: torch.Tensor, target: float = DEFAULT_TARGET_PRECISION, folds: int = 5, seed: int = 0
) -> dict:
    """What the review rule does on items it was not fitted on, estimated from the validation split alone.

    The split is cut into `folds` random parts; each part's items are decided by the temperature and threshold
    fitted (calibrate) on the other parts. Pooled over the parts: the share labelled automatically and their
    realised precision. The rule fitted on all of validation promises `target` on new items; this says how much it
    labels there and whether the promise holds, so recipes can be chosen by it on validation (issue 20) without
    touching the test split. None for both where there are fewer than 2 items per part or the logits are not finite.
    """
    n = len(labels)
    if n < 2 * folds or not torch.isfinite(logits).all():
        return {"val_auto_share": None, "val_auto_precision": None}
    part = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    auto, right = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    for k in range(folds):
        fit, held = part != k, part == k
        cal = calibrate(logits[fit], labels[fit], target)
        conf, pred = (logits[held].float() / cal["temperature"]).softmax(1).max(1)
        auto[held] = conf >= cal["threshold"] if cal["threshold"] is not None else False
        right[held] = pred == labels[held]
    n_auto = int(auto.sum())
    return {"val_auto_share": n_auto / n, "val_auto_precision": right[auto].float().mean().item() if n_auto else None}


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, calibration: dict) -> dict:
    """ECE before and after temperature scaling and the coverage at the target precision, on a labelled set."""
    raw = logits.float().softmax(1)
    cal = (logits.float() / calibration["temperature"]).softmax(1)
    return {
        "ece": ece(cal, labels),
        "ece_uncalibrated": ece(raw, labels),
        "temperature": calibration["temperature"],
        "coverage_at_precision": {str(calibration["target_precision"]): coverage_at(cal, labels, calibration["threshold"])},
        "reliability": reliability(cal, labels),
        "reliability_uncalibrated": reliability(raw, labels),
    }


def needs_review(probs: torch.Tensor, threshold: float | None) -> np.ndarray:
    """True where the calibrated confidence is below the run's threshold (everywhere if there is none)."""
    if threshold is None:
        return np.ones(len(probs), bool)
    return (probs.max(1).values < threshold).numpy()
