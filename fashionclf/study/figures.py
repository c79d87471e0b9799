"""The report's figures: each takes plain numbers or arrays and returns the PNG's bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _show(ax, img: np.ndarray) -> None:
    """A uint8 image: (H, W) grayscale, or (3, H, W) RGB as image-folder runs take it."""
    if img.ndim == 3:
        ax.imshow(img.transpose(1, 2, 0))
    else:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)


def fig_examples(x, y, classes, per_class=8, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.8, len(classes) * 0.85))
    for c, name in enumerate(classes):
        members = np.flatnonzero(y == c)
        idx = rng.choice(members, min(per_class, len(members)), replace=False)
        for j, i in enumerate(idx):
            ax = axes[c, j]
            _show(ax, x[i])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    return _png(fig)


def fig_curves(histories: dict[str, list[dict]]) -> bytes:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, h) in enumerate(histories.items()):
        ep = [int(r["epoch"]) for r in h]
        color = f"C{i}"
        a1.plot(ep, [float(r["train_loss"]) for r in h], "--", color=color, alpha=0.6)
        a1.plot(ep, [float(r["val_loss"]) for r in h], "-", color=color, label=name)
        a2.plot(ep, [float(r["train_accuracy"]) for r in h], "--", color=color, alpha=0.6)
        a2.plot(ep, [float(r["val_accuracy"]) for r in h], "-", color=color, label=name)
    a1.set(xlabel="epoch", ylabel="loss", title="loss (dashed: train, solid: validation)")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy (dashed: train, solid: validation)")
    a1.legend()
    a2.legend()
    return _png(fig)


def fig_confusion(cm: np.ndarray, classes, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _png(fig)


def fig_gallery(x, items: list[tuple[int, str]], cols=10) -> bytes:
    rows = max(1, (len(items) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, caption) in zip(axes.flat, items):
        _show(ax, x[i])
        ax.set_title(caption, fontsize=6)
    return _png(fig)


def fig_severity(curves: dict[str, list[float]], clean: dict[str, float]) -> bytes:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, ys in curves.items():
        ax.plot([0, 1, 2, 3, 4, 5], [clean[m] * 100] + [v * 100 for v in ys], marker="o", label=m)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy % (mean over corruptions)")
    ax.set_title("accuracy against corruption severity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def fig_reliability(before: list[dict], after: list[dict], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    for bins, label in ((before, "before"), (after, "after temperature scaling")):
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def fig_resolution(sizes, overall, per_class: dict[str, list[float]], focus) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, ys in per_class.items():
        if c not in focus:
            ax.plot(sizes, [v * 100 for v in ys], color="0.8", lw=1)
    for c in focus:
        ax.plot(sizes, [v * 100 for v in per_class[c]], marker="o", label=c)
    ax.plot(sizes, [v * 100 for v in overall], marker="s", color="k", lw=2.5, label="all classes")
    ax.set_xticks(sizes)
    ax.set_xlabel("pixels per side the model saw")
    ax.set_ylabel("test accuracy / recall % (mean over seeds)")
    ax.set_title("accuracy against resolution (gray: the other six classes)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
