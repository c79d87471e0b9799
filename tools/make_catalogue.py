"""Write N Fashion-MNIST test images as PNG product thumbnails (dark item on white) into a folder tree,
1,000 per subfolder: a stand-in catalogue for timing `fashionclf predict --out` at scale.

    .venv/bin/python tools/make_catalogue.py /tmp/catalogue --n 100000
"""

import argparse
from pathlib import Path

from PIL import Image

from fashionclf.data.fashion_mnist import load_fashion_mnist


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    x = load_fashion_mnist(allow_download=False).test_x.numpy()
    root = Path(args.out)
    for i in range(args.n):
        folder = root / f"{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - x[i % len(x)]).save(folder / f"{i:06d}.png")


if __name__ == "__main__":
    main()
