"""Calibrated review: how far a model's confidence can be trusted, and when a person must look.

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted on the validation
split; it changes confidences, never the predicted class. The expected calibration error (ECE) says
how far confidence is from accuracy.

The review threshold is a guarantee, not a point estimate (selective classification with guaranteed risk,
Geifman and El-Yaniv 2017; Learn-then-Test, Angelopoulos et al. 2021): thresholds are tested from the most
confident down, each by an exact binomial (Clopper-Pearson) upper bound on the error among the items it
accepts, and the sequence stops at the first that fails (fixed-sequence testing, so no multiplicity
correction is needed). With probability at least 1 - delta over the draw of calibration items, the
automatic labels of new items drawn like them are at least `target` precise. Too few items for any
threshold: nothing is labelled automatically, and the rule says how many items a promise needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta

DEFAULT_TARGET_PRECISION = 0.99  # a shop accepts about 1 wrong category in 100 automatic labels
DEFAULT_DELTA = 0.05  # the promise holds for at least 95% of draws of calibration items
RULE = "fixed-sequence-clopper-pearson"  # metrics.json calibration.rule; runs without it used the point estimate
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


def error_upper_bound(errors, n, delta: float = DEFAULT_DELTA) -> np.ndarray:
    """The exact one-sided (Clopper-Pearson) upper 1 - delta bound on a binomial error rate, elementwise.
    1 where there are no items or all are errors."""
    errors, n = np.asarray(errors, dtype=np.float64), np.asarray(n, dtype=np.float64)
    ok = (n > 0) & (errors < n)
    safe_n = np.where(ok, n, 2.0)
    safe_e = np.where(ok, errors, 0.0)
    return np.where(ok, beta.ppf(1 - delta, safe_e + 1, safe_n - safe_e), 1.0)


def min_items(target: float = DEFAULT_TARGET_PRECISION, delta: float = DEFAULT_DELTA) -> int:
    """The fewest calibration items, all right, that can promise `target` with confidence 1 - delta: the least n
    with target**n <= delta (the Clopper-Pearson bound for 0 errors is 1 - delta**(1/n)). 299 at 0.99 and 0.05."""
    return math.ceil(math.log(delta) / math.log(target) - 1e-9)


def check_review_target(target: float, delta: float) -> None:
    """A ValueError naming the setting unless 0 < target < 1 and 0 < delta < 1."""
    if not 0 < target < 1:
        raise ValueError(f"target precision {target}: expected a share in (0, 1), e.g. {DEFAULT_TARGET_PRECISION}")
    if not 0 < delta < 1:
        raise ValueError(f"delta {delta}: expected a probability in (0, 1), e.g. {DEFAULT_DELTA} for 95% confidence")


@dataclass(frozen=True)
class Promise:
    """What a shop asks of automatic labels: at least `target` precise, with confidence 1 - delta."""

    target: float = DEFAULT_TARGET_PRECISION
    delta: float = DEFAULT_DELTA

    def __post_init__(self):
        check_review_target(self.target, self.delta)


def sequence_starts(n_items: int, target: float, delta: float) -> tuple[list[int], float]:
    """Where the fixed sequences start (counts of accepted items) and the level each is tested at.

    One sequence from the first count that could pass (min_items) stops for good at the first early error among the
    most confident items. So several sequences start at counts doubling from there, each tested at delta / J
    (Bonferroni: the union of their rejections keeps the family-wise error at delta; Learn-then-Test's
    fixed-sequence testing with several starts). J depends on the number of items alone, never on their scores."""
    j = 1 + max(0, int(math.floor(math.log2(max(n_items, 1) / min_items(target, delta)))))
    first = min_items(target, delta / j)
    return [first * 2**i for i in range(j)], delta / j


def guaranteed_rule(conf, correct, target: float = DEFAULT_TARGET_PRECISION, delta: float = DEFAULT_DELTA) -> dict:
    """The lowest confidence threshold such that, at it and at every higher candidate of its sequence, the upper
    bound on the error among accepted items (confidence >= it) is at most 1 - target (fixed-sequence testing, from
    the starts of sequence_starts, each at its share of delta).

    conf: each calibration item's calibrated confidence; correct: whether its top class is right. Candidates are
    the distinct confidences (an item ties with every item of equal confidence). Returns the threshold (None:
    nothing is labelled automatically), what it accepts on the calibration items and its bound, and `needed`:
    how many more items (all right) a promise would take at the least, where the items are fewer than min_items.
    """
    check_review_target(target, delta)
    conf = torch.as_tensor(conf, dtype=torch.float64).flatten()
    correct = torch.as_tensor(correct, dtype=torch.bool).flatten()
    n_items, least = len(conf), min_items(target, delta)
    rule = {"rule": RULE, "target_precision": target, "delta": delta, "calibration_items": n_items, "min_items": least}
    rule |= {"threshold": None, "accepted": 0, "accepted_errors": 0, "error_bound": None}
    rule["needed"] = max(0, least - n_items)
    if n_items == 0 or not torch.isfinite(conf).all():
        return rule | {"promise": promise(rule)}
    order = torch.argsort(conf, descending=True, stable=True)
    c, wrong = conf[order].numpy(), (~correct[order]).numpy()
    ends = np.flatnonzero(np.append(c[1:] != c[:-1], True))  # the last item of each group of equal confidence
    errors, n = np.cumsum(wrong)[ends], ends + 1
    starts, level = sequence_starts(n_items, target, delta)
    passes = error_upper_bound(errors, n, level) <= 1 - target + 1e-12
    best = -1
    for start in starts:  # each sequence: from its first candidate down to the one before its first failure
        first = int(np.searchsorted(n, start))
        fails = np.flatnonzero(~passes[first:])
        passed = fails[0] if len(fails) else len(ends) - first  # how many candidates it rejects (0: none)
        if passed:
            best = max(best, first + passed - 1)
    if best >= 0:
        rule |= {"threshold": float(c[ends[best]]), "accepted": int(n[best]), "accepted_errors": int(errors[best])}
        rule["error_bound"] = float(error_upper_bound(errors[best], n[best], level))
    return rule | {"promise": promise(rule)}


def review_threshold(
    probs: torch.Tensor, labels: torch.Tensor, target: float = DEFAULT_TARGET_PRECISION, delta: float = DEFAULT_DELTA
) -> float | None:
    """The guaranteed rule's threshold on calibrated probabilities (guaranteed_rule); None: everything to review."""
    conf, pred = probs.max(1)
    return guaranteed_rule(conf, pred == labels, target, delta)["threshold"]


def point_estimate_threshold(probs: torch.Tensor, labels: torch.Tensor, target: float = DEFAULT_TARGET_PRECISION) -> float | None:
    """The rule before the guarantee, kept to measure against: the lowest confidence whose accepted items reach
    `target` precision on the calibration items themselves (no allowance for their number)."""
    conf, pred = probs.max(1)
    order = torch.argsort(conf, descending=True)
    correct = (pred == labels)[order].double()
    precision = correct.cumsum(0) / torch.arange(1, len(correct) + 1, dtype=torch.float64)
    ok = torch.nonzero(precision >= target).flatten()
    return float(conf[order][int(ok[-1])]) if len(ok) else None


def promise(calibration: dict | None) -> str:
    """The rule in words a shop can check, from a run's calibration (metrics.json) or a ready model's rule."""
    cal = calibration or {}
    target, delta = cal.get("target_precision", DEFAULT_TARGET_PRECISION), cal.get("delta", DEFAULT_DELTA)
    if cal.get("rule") != RULE:
        th = cal.get("threshold")
        return "review rule fitted by the old point estimate (no guarantee): " + (
            f"confidence >= {th:.4f} is labelled automatically" if th is not None else "everything goes to a person"
        )
    words = f"automatic labels are at least {_pct(target)} precise with {_pct(1 - delta)} confidence, on photos like the calibration photos"
    if cal.get("threshold") is not None:
        return f"{words} (confidence >= {cal['threshold']:.4f}; fitted on {cal.get('calibration_items')} items)"
    n, least = cal.get("calibration_items"), cal.get("min_items", min_items(target, delta))
    if (n or 0) < least:
        return (
            f"nothing is labelled automatically: {n} calibration items are too few to promise {_pct(target)} precision with "
            f"{_pct(1 - delta)} confidence; at least {least} are needed even with no errors ({least - (n or 0)} more labelled photos)"
        )
    return (
        f"nothing is labelled automatically: even the most confident of {n} calibration items have too many errors to "
        f"promise {_pct(target)} precision with {_pct(1 - delta)} confidence"
    )


def _pct(share: float) -> str:
    """0.99 -> '99%', 0.999 -> '99.9%': as many digits as the share has."""
    return f"{round(share * 100, 6):g}%"


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


def calibrate(
    val_logits: torch.Tensor, val_labels: torch.Tensor, target: float = DEFAULT_TARGET_PRECISION, delta: float = DEFAULT_DELTA
) -> dict:
    """Fit on the calibration (validation) items: the temperature, and the guaranteed review rule on calibrated
    confidences (guaranteed_rule: threshold, what it accepts there, its bound, how many items were used)."""
    t = fit_temperature(val_logits, val_labels)
    conf, pred = (val_logits.float() / t).softmax(1).max(1)
    return {"temperature": t, **guaranteed_rule(conf, pred == val_labels, target, delta)}


def crossfit_review(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target: float = DEFAULT_TARGET_PRECISION,
    folds: int = 5,
    seed: int = 0,
    delta: float = DEFAULT_DELTA,
) -> dict:
    """What the review rule does on items it was not fitted on, estimated from the validation split alone.

    The split is cut into `folds` random parts; each part's items are decided by the temperature and threshold
    fitted (calibrate) on the other parts. Pooled over the parts: the share labelled automatically and their
    realised precision. The rule fitted on all of validation promises `target` on new items; this says how much it
    labels there and whether the promise holds, so recipes can be chosen by it on validation without
    touching the test split. None for both where there are fewer than 2 items per part or the logits are not finite.
    """
    n = len(labels)
    if n < 2 * folds or not torch.isfinite(logits).all():
        return {"val_auto_share": None, "val_auto_precision": None}
    part = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    auto, right = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    for k in range(folds):
        fit, held = part != k, part == k
        cal = calibrate(logits[fit], labels[fit], target, delta)
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
