"""Error analysis from stored outputs: top losses, duplicates across splits, likely label errors.

Everything here takes predictions already computed (logits, out-of-fold probabilities) and the
uint8 images, and returns plain lists of indices and scores that the report renders.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def top_losses(logits: torch.Tensor, labels: torch.Tensor, k: int = 20) -> list[dict]:
    """The k items with the highest cross-entropy: confident mistakes first (fastai's plot_top_losses)."""
    loss = F.cross_entropy(logits.float(), labels, reduction="none")
    probs = logits.float().softmax(1)
    order = torch.argsort(loss, descending=True)[:k]
    return [
        {
            "index": int(i),
            "label": int(labels[i]),
            "predicted": int(probs[i].argmax()),
            "loss": float(loss[i]),
            "p_label": float(probs[i, labels[i]]),
            "p_predicted": float(probs[i].max()),
        }
        for i in order
    ]


def _signature(x_u8: torch.Tensor, side: int = 28) -> torch.Tensor:
    """Unit-length, mean-centred image vectors (optionally area-downsampled): near duplicates are nearly parallel."""
    x = x_u8.float()
    x = x.unsqueeze(1) if x.dim() == 3 else x  # (N, H, W) gray or (N, C, H, W)
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    v = x.flatten(1)
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)


def duplicates(train_x: torch.Tensor, test_x: torch.Tensor, near: float = 0.995, chunk: int = 2048) -> list[dict]:
    """Test images that also appear in the training set: exact copies (same bytes) and near copies.

    A near copy has a cosine similarity of at least `near` between the mean-centred images
    (the same photo re-cropped, shifted by a pixel or re-encoded). One row per test image, its closest
    training image, sorted by similarity.
    """
    exact_index: dict[bytes, int] = {}
    for i, img in enumerate(train_x.numpy()):
        exact_index.setdefault(img.tobytes(), i)
    a, b = _signature(test_x), _signature(train_x)
    out = []
    for s in range(0, len(a), chunk):
        sim = a[s : s + chunk] @ b.T
        best, idx = sim.max(1)
        for j in torch.nonzero(best >= near).flatten().tolist():
            t = s + j
            exact = exact_index.get(test_x[t].numpy().tobytes())
            out.append(
                {"test": t, "train": exact if exact is not None else int(idx[j]), "similarity": float(best[j]), "exact": exact is not None}
            )
    return sorted(out, key=lambda r: -r["similarity"])


def label_issues(oof_probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Likely label errors by confident learning (Northcutt et al., 2021), from out-of-fold probabilities.

    Each class j gets a threshold t_j: the mean predicted probability of class j over items labelled j.
    An item is flagged when its given label's probability is below that label's threshold and some
    other class k reaches t_k; ranked by how much more the model believes k than the given label.
    """
    probs = np.asarray(oof_probs, dtype=np.float64)
    labels = np.asarray(labels)
    k = probs.shape[1]
    t = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = probs >= t[None, :]
    above[np.arange(len(labels)), labels] = False
    p_given = probs[np.arange(len(labels)), labels]
    suspect = above.any(1) & (p_given < t[labels])
    out = []
    for i in np.flatnonzero(suspect):
        alt = int(np.argmax(np.where(above[i], probs[i], -1)))
        out.append(
            {"index": int(i), "label": int(labels[i]), "suggested": alt, "p_label": float(p_given[i]), "p_suggested": float(probs[i, alt])}
        )
    return sorted(out, key=lambda r: r["p_label"] - r["p_suggested"])
