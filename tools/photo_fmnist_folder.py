"""An image folder with Fashion-MNIST's ten classes for a photo model: a shop's labelled photos plus scans.

The 28x28 route (`predict` cuts the item out, shrinks it to a gray thumbnail and asks a scan model)
loses what separates a shirt from a pullover in a phone photo. The other route keeps the photo: an
ImageNet-pretrained network (`efficientnet_lite0`, RGB, letterboxed) trained on the shop's photos.
A shop's folders rarely cover all ten classes (`clothing-photos` has no sandals, sneakers, boots or
bags as such), so Fashion-MNIST scans fill every class: negated back to a dark item on white, the way
Zalando's product shots looked before the dataset was made from them.

    .venv/bin/python tools/photo_fmnist_folder.py OUT --shop ../shared/clothing-photos/train --class-map "$MAP" [--scans-per-class 400]
    .venv/bin/fashionclf train --data OUT --model efficientnet_lite0 --image-size 160 ... --out RUN

Shop photos are linked, not copied; scans are written as PNG. Folder names are the classes' names in
the form `catalogue_shots.py` uses, so `evaluate --data` on its shots needs no class map.
Scans come from the training split only (never the validation or test images of Fashion-MNIST).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fashionclf.data.fashion_mnist import CLASSES, load_fashion_mnist
from fashionclf.data.folders import mapped_items, parse_class_map


def folder_name(cls: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in cls.lower())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a new folder")
    ap.add_argument("--shop", required=True, help="labelled photos, one subfolder per category")
    ap.add_argument("--class-map", required=True, help="shop folder=Fashion-MNIST class, ... ('-' leaves a folder out)")
    ap.add_argument("--scans-per-class", type=int, default=400, help="Fashion-MNIST training images per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"photo_fmnist_folder: {out} is not empty; give a new folder")
    for cls in CLASSES:
        (out / folder_name(cls)).mkdir(parents=True, exist_ok=True)
    shop = mapped_items(args.shop, CLASSES, parse_class_map(args.class_map))
    for path, label in shop:
        os.symlink(path.resolve(), out / folder_name(CLASSES[label]) / f"shop-{path.parent.name}-{path.name}")
    d = load_fashion_mnist(allow_download=False)
    rng = np.random.default_rng(args.seed)
    for c, cls in enumerate(CLASSES):
        idx = rng.permutation(np.flatnonzero(d.train_y.numpy() == c))[: args.scans_per_class]
        for i in idx:
            Image.fromarray(255 - d.train_x[i].numpy()).save(out / folder_name(cls) / f"scan{i:05d}.png")
    counts = {cls: len(os.listdir(out / folder_name(cls))) for cls in CLASSES}
    print(f"{out}: {len(shop)} shop photos, {args.scans_per_class} scans per class; per class: {counts}")


if __name__ == "__main__":
    main()
