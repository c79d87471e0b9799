"""Catalogue-style product shots made from Fashion-MNIST test images, to test the whole photo path.

A shop's catalogue photo is one item, centred, on a white or light-grey studio background, in
colour, at several hundred pixels, JPEG-compressed. This script turns test images (never trained on)
into such shots: upscaled 10-20x, the item in a random colour (light ones included, the hard case
for cut-outs) shaded by the original intensities, a soft drop shadow, a random margin and offset,
a light background with a faint gradient, JPEG quality 80-95. One folder per class, so that

    .venv/bin/python tools/catalogue_shots.py /tmp/catalogue-shots --per-class 50
    .venv/bin/fashionclf evaluate RUN --data /tmp/catalogue-shots --json

scores a run on them through the same decoding and cut-out as `fashionclf predict`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fashionclf.data.fashion_mnist import load_fashion_mnist


def shot(item: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 catalogue photo of one 28x28 Fashion-MNIST item (light on black)."""
    side = int(rng.integers(280, 560))
    scale = side * rng.uniform(0.55, 0.85) / 28
    size = max(8, int(round(28 * scale)))
    alpha = cv2.resize(item.astype(np.float32) / 255, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    colour = rng.uniform(0, 1, 3)
    if rng.random() < 0.25:  # a light garment on a light background
        colour = 0.75 + 0.25 * colour
    # Fashion-MNIST is negated (light item on black): a brighter pixel was a darker spot of the photo.
    shade = 1.0 - 0.4 * alpha
    garment = (colour[None, None, :] * shade[..., None]).clip(0, 1)
    mask = (alpha > 0.04).astype(np.float32)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)

    bg_level = rng.uniform(0.88, 1.0)
    yy = np.linspace(0, 1, side)[:, None, None]
    bg = np.full((side, side, 3), bg_level, np.float32) - rng.uniform(0, 0.06) * yy  # faint studio gradient
    top = int((side - size) / 2 + rng.uniform(-0.08, 0.08) * side)
    left = int((side - size) / 2 + rng.uniform(-0.08, 0.08) * side)
    top, left = np.clip([top, left], 0, side - size)

    shadow = np.zeros((side, side), np.float32)
    dy, dx = int(rng.integers(2, 10)), int(rng.integers(-6, 7))
    t2, l2 = np.clip([top + dy, left + dx], 0, side - size)
    shadow[t2 : t2 + size, l2 : l2 + size] = mask
    shadow = cv2.GaussianBlur(shadow, (0, 0), side / 80) * rng.uniform(0.05, 0.2)
    img = bg * (1 - shadow[..., None])

    region = img[top : top + size, left : left + size]
    img[top : top + size, left : left + size] = region * (1 - mask[..., None]) + garment * mask[..., None]
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    d = load_fashion_mnist(allow_download=False)
    rng = np.random.default_rng(args.seed)
    root = Path(args.out)
    for c, name in enumerate(d.classes):
        folder = root / "".join(ch if ch.isalnum() else "_" for ch in name.lower())
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(d.test_y.numpy() == c)[: args.per_class]
        for i in idx:
            img = shot(d.test_x[i].numpy(), rng)
            Image.fromarray(img).save(folder / f"test{i:05d}.jpg", quality=int(rng.integers(80, 96)))


if __name__ == "__main__":
    main()
