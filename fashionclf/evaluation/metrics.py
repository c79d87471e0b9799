"""Scores derived from stored predictions (predict once, derive everything, as fastai's interpretation does)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of items of true class i predicted as j."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray, classes) -> list[dict]:
    """Precision, recall, F1 and support per class; 0 where undefined (no predictions or no items)."""
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(0), cm.sum(1)
    out = []
    for i, name in enumerate(classes):
        p = tp[i] / predicted[i] if predicted[i] else 0.0
        r = tp[i] / actual[i] if actual[i] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out.append({"class": name, "precision": p, "recall": r, "f1": f1, "support": int(actual[i])})
    return out


def most_confused(cm: np.ndarray, classes, top: int = 5) -> list[dict]:
    """Unordered class pairs by total confusions in both directions, largest first."""
    k = len(classes)
    pairs = []
    for i in range(k):
        for j in range(i + 1, k):
            n = int(cm[i, j] + cm[j, i])
            if n:
                pairs.append({"a": classes[i], "b": classes[j], "a_as_b": int(cm[i, j]), "b_as_a": int(cm[j, i]), "total": n})
    pairs.sort(key=lambda p: -p["total"])
    return pairs[:top]


def classification_report(logits: torch.Tensor, y: torch.Tensor, classes) -> dict:
    """Everything `evaluate` reports, from logits and labels."""
    pred = logits.argmax(1)
    cm = confusion_matrix(y.numpy(), pred.numpy(), len(classes))
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).float().mean()) if len(y) else math.nan,
        "loss": float(F.cross_entropy(logits, y)) if len(y) else math.nan,
        "per_class": per_class(cm, classes),
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused(cm, classes),
    }


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test on paired per-item correctness of two classifiers on the same items.

    b = items only A gets right, c = items only B gets right. Under "equally accurate" each
    discordant item is a fair coin, so p is the two-sided binomial tail of min(b, c) in b + c.
    """
    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n, k = b + c, min(b, c)
    if n == 0:
        return {"b": 0, "c": 0, "p": 1.0}
    # log-space binomial terms keep thousands of discordant items exact enough
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return {"b": b, "c": c, "p": min(1.0, 2 * tail)}
