"""Turn a product photo into what the models were trained on: a Fashion-MNIST-style 28x28 image.

Zalando made Fashion-MNIST from catalogue shots by trimming the background, resizing the longer
edge to 28, centring on a square, negating (so the item is light on black) and converting to
grayscale. A photo goes through the same steps, after the item is separated from its background:

1. scale the photo down (the result is 28 px: ~200 pixels a side are plenty);
2. estimate the background from the image border and decide if it is light or dark;
3. separate the item: GrabCut (OpenCV) seeded with the border as background and a colour-distance
   threshold's guess as probable foreground, or that threshold alone (method="threshold"), then
   keep the largest connected part and fill its holes. "grabcut" cuts on a CUT_SIDE-pixel copy in
   CUT_ITERS iterations and scales the mask back up, several times cheaper than "grabcut-full"
   (the whole 200-px copy, 4 iterations; the method before 2026-11-29, kept to compare against:
   docs/results/photo-speed.md);
4. crop to the item, negate the grayscale inside it, zero the background, resize the longer edge
   to 28 keeping the aspect ratio, centre on a 28x28 black square.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = 200  # longer side of the working copy; the result is 28 px, finer masks buy nothing
DECODE_SIDE = 2 * WORK_SIDE  # a JPEG is decoded at a fraction of its size only down to this: the working copy stays area-averaged
CUT_SIDE, CUT_ITERS = 100, 3  # GrabCut's copy and iterations for "grabcut" (chosen on realphotos-dev)
BORDER = 0.04  # fraction of each side treated as background evidence
GRABCUT = {"grabcut": (CUT_SIDE, CUT_ITERS), "grabcut-full": (WORK_SIDE, 4)}  # (longer side, iterations)
METHODS = ("grabcut", "grabcut-full", "threshold")


@dataclass
class Preprocessed:
    image: np.ndarray  # (28, 28) uint8, the model's input
    mask: np.ndarray  # (h, w) bool at working size: what was taken as the item
    light_background: bool
    method: str


def _work_copy(rgb: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    if s < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def _border_mask(h: int, w: int) -> np.ndarray:
    b = max(1, round(BORDER * min(h, w)))
    m = np.zeros((h, w), bool)
    m[:b], m[-b:], m[:, :b], m[:, -b:] = True, True, True, True
    return m


def _threshold_mask(rgb: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Pixels far (in Lab colour) from the border's median colour, split by Otsu's threshold."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    bg = np.median(lab[border], axis=0)
    dist = np.linalg.norm(lab - bg, axis=2)
    d8 = np.clip(dist * (255.0 / max(dist.max(), 1e-6)), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return d8 > max(t, 12)  # a near-uniform image has no item: Otsu would split noise


def _grabcut_mask(rgb: np.ndarray, border: np.ndarray, seed_mask: np.ndarray, iters: int = 4) -> np.ndarray:
    h, w = border.shape
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    mask[seed_mask] = cv2.GC_PR_FGD  # the colour threshold's guess, as probable foreground
    mask[border] = cv2.GC_BGD
    if not (mask == cv2.GC_PR_FGD).any():
        return np.zeros((h, w), bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation uses OpenCV's RNG: fix it for repeatable output
    try:
        cv2.grabCut(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return seed_mask  # degenerate colour statistics (e.g. two-colour images): keep the threshold's mask
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _cut_out(rgb: np.ndarray, side: int, iters: int) -> np.ndarray:
    """GrabCut on a copy at most `side` pixels a side, seeded by the threshold there, its mask scaled back to rgb's size."""
    h, w = rgb.shape[:2]
    small = _work_copy(rgb, side)
    border = _border_mask(*small.shape[:2])
    mask = _grabcut_mask(small, border, _threshold_mask(small, border), iters)
    if small.shape[:2] != (h, w):
        mask = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
    return mask


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest connected component plus any of at least a fifth its size, holes filled."""
    m = mask.astype(np.uint8)
    k = max(1, round(min(m.shape) / 100)) * 2 + 1
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= areas.max() / 5)
    m = np.isin(labels, keep).astype(np.uint8)
    # fill holes: everything not reachable from the border through background is item
    flood = np.pad(1 - m, 1, constant_values=1).astype(np.uint8)
    cv2.floodFill(flood, None, (0, 0), 2)
    holes = flood[1:-1, 1:-1] == 1
    return (m.astype(bool)) | holes


def to_fashion_mnist(rgb: np.ndarray, method: str = "grabcut") -> Preprocessed:
    """A Fashion-MNIST-style (28, 28) uint8 image from an (H, W, 3) uint8 RGB photo."""
    if method not in METHODS:
        raise ValueError(f"unknown preprocessing method {method!r}; valid: {', '.join(METHODS)}")
    rgb = _work_copy(rgb)
    h, w = rgb.shape[:2]
    border = _border_mask(h, w)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    light = float(np.median(gray[border])) >= 128
    mask = _cut_out(rgb, *GRABCUT[method]) if method in GRABCUT else _threshold_mask(rgb, border)
    mask = _largest_part(mask)
    if mask.sum() < 0.005 * h * w:  # nothing found (a blank photo): the whole frame is the item
        mask = np.ones((h, w), bool)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    item = np.where(mask, 255 - gray.astype(np.int16), 0)[y0:y1, x0:x1].astype(np.uint8)
    ih, iw = item.shape
    s = 28 / max(ih, iw)
    nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
    small = cv2.resize(item, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((28, 28), np.uint8)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    out[top : top + nh, left : left + nw] = small
    return Preprocessed(out, mask, light, method)
