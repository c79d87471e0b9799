"""Image-folder datasets: a shop's own labelled photos, one subfolder per class.

The photos are decoded once, letterboxed to a square of `image_size` pixels (aspect kept, padded
with the photo's own border colour, so nothing of the item is cut) and held as one uint8 tensor
(N, 3, S, S), like Fashion-MNIST, so the same training loop, augmentation and run folders apply.

Splits: the test split is always carved out of --data (stratified, seeded) and never trained on or
chosen on. Validation, for model choice, is --val-data when given, else another slice of --data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import torch

from .data import DataError, FashionMNIST
from .images import SUFFIXES, ImageError, load_rgb


def scan(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolder names) and (file, label) pairs; clear errors for unusable folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected a folder with one subfolder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class subfolder(s); expected at least 2 (one subfolder of images per class)")
    items = []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{root / c} holds no images (.jpg, .png, .webp, .bmp, .gif, .tif); add some or remove the folder")
        items += [(f, i) for f in files]
    return classes, items


def letterbox(rgb: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3): the whole photo scaled to fit, centred, padded with the median colour of its border."""
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.median(border, axis=0).astype(np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return out


def load_images(items: list[tuple[Path, int]], size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, 3, S, S) uint8 images, labels, and one message per file that could not be read (those are left out)."""
    xs, ys, skipped = [], [], []
    for path, label in items:
        try:
            xs.append(letterbox(load_rgb(path), size))
            ys.append(label)
        except ImageError as e:
            skipped.append(f"{path}: {e}")
    if not xs:
        raise DataError("none of the images could be read: " + "; ".join(skipped[:3]))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ys, dtype=torch.long), skipped


def _fingerprint(items: list[tuple[Path, int]], root: Path) -> str:
    """Names, sizes and labels of the files: a resumed study must see the same data."""
    h = hashlib.sha256()
    for p, label in items:
        h.update(f"{p.relative_to(root)}\t{p.stat().st_size}\t{label}\n".encode())
    return h.hexdigest()


def _split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, held) with round(fraction * n_c) items of every class c held out (at least 1)."""
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[: max(1, round(fraction * len(idx)))])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def load_image_folder(
    data: str | Path,
    val_data: str | Path | None = None,
    image_size: int = 128,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> tuple[FashionMNIST, list[str]]:
    """The dataset (train/val/test as uint8 tensors) and the messages for files that were left out."""
    if not 16 <= image_size <= 512:
        raise DataError(f"--image-size {image_size}: expected 16-512 pixels")
    root = Path(data)
    classes, items = scan(root)
    x, y, skipped = load_images(items, image_size)
    rest, test = _split(y, test_fraction, split_seed)
    checksums = {"data": _fingerprint(items, root)}
    if val_data is not None:
        vroot = Path(val_data)
        vclasses, vitems = scan(vroot)
        if vclasses != classes:
            missing, extra = sorted(set(classes) - set(vclasses)), sorted(set(vclasses) - set(classes))
            raise DataError(f"{vroot} has other class folders than {root}: missing {missing or 'none'}, extra {extra or 'none'}")
        vx, vy, vskipped = load_images(vitems, image_size)
        skipped += vskipped
        train_idx = rest
        checksums["val_data"] = _fingerprint(vitems, vroot)
    else:
        r, v = _split(y[rest], val_fraction / (1 - test_fraction), split_seed + 1)
        train_idx, vx, vy = rest[r], x[rest[v]], y[rest[v]]
    ds = FashionMNIST(x[train_idx], y[train_idx], vx, vy, x[test], y[test], str(root), checksums, tuple(classes), split_seed)
    return ds, skipped
