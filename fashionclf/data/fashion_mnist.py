"""Fashion-MNIST: find, verify and load the four official IDX files into memory.

The whole dataset lives as uint8 tensors (60k x 28 x 28 is 47 MB): no Dataset
objects, no per-sample Python. Augmentation and normalisation happen later on
whole batches (see augment.py and train.py).

Search order for the files: an explicit folder, $FASHIONCLF_DATA, the Debian
package's folder, the user cache; otherwise download into the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Train-set pixel statistics after scaling to [0, 1]: the input normalisation of every model, saved in meta.json.
MEAN, STD = 0.2860, 0.3530

# Zalando's official mirror (the README of zalandoresearch/fashion-mnist).
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# name -> (official .gz MD5, MD5 of the uncompressed IDX file, number of items).
# Debian recompresses the .gz files, so its MD5s differ; the raw contents match.
FILES = {
    "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a", 60000),
    "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9", 60000),
    "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a", 10000),
    "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965", 10000),
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
PER_CLASS = {"train": 6000, "test": 1000}

# The .gz MD5s of the classic MNIST digits: a common mix-up worth naming.
MNIST_MD5 = {
    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "d53e105ee54ea40749a09fcbcd1e9432",
    "9fb629c4189551a2d022fa330f9573f3",
    "ec29112dd5afa0611ce80d1b7f02629c",
}

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes are used by Fashion-MNIST.
_IDX_UBYTE = 0x08


class DataError(Exception):
    """A data file is missing or is not what it should be. The message says which file and what to do."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fashionclf" / "fashion-mnist"


def _open_maybe_gzip(path: Path, raw: bytes | None = None) -> bytes:
    """Return the file's bytes, gunzipped if it starts with the gzip magic (not by its name)."""
    raw = path.read_bytes() if raw is None else raw
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: gzip data is corrupt or truncated ({e}). Delete the file and download it again.") from e
    return raw


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX blob of unsigned bytes into an array, checking header and length."""
    if len(data) < 4:
        raise DataError(f"{source}: {len(data)} bytes is too short for an IDX header (expected at least 4).")
    zero, dtype, ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or dtype != _IDX_UBYTE or ndim not in (1, 3):
        raise DataError(
            f"{source}: not an IDX file of unsigned bytes (magic {data[:4].hex()}, expected 00000801 for labels "
            "or 00000803 for images). Check that the file is one of Fashion-MNIST's four IDX files."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: header truncated ({len(data)} bytes). Download the file again.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    actual = len(data) - header
    if actual != expected:
        raise DataError(
            f"{source}: header says shape {shape} ({expected} bytes of data) but the file holds {actual}; "
            "the file is truncated or corrupt. Download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    return parse_idx(_open_maybe_gzip(path), str(path))


def find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def verify_md5(path: Path, name: str, blob: bytes | None = None, content: bytes | None = None) -> str:
    """Check a file against the official MD5 of its .gz or of its raw contents; return the raw MD5.

    blob (the file's bytes) and content (uncompressed) may be passed in when already read.
    """
    gz_md5, raw_md5, _ = FILES[name]
    blob = path.read_bytes() if blob is None else blob
    file_md5 = hashlib.md5(blob).hexdigest()
    if file_md5 == gz_md5:
        return raw_md5
    content = _open_maybe_gzip(path, blob) if content is None else content
    content_md5 = hashlib.md5(content).hexdigest()
    if content_md5 == raw_md5:
        return raw_md5
    hint = ""
    if file_md5 in MNIST_MD5:
        hint = " This is the MNIST handwritten-digits file, not Fashion-MNIST."
    raise DataError(
        f"{path}: MD5 {file_md5} (uncompressed {content_md5}) matches neither the official {name}.gz ({gz_md5}) "
        f"nor its raw contents ({raw_md5}).{hint} Replace it with the official file from {BASE_URL} "
        "or install Debian's package dataset-fashion-mnist."
    )


def load_split(folder: str | Path, split: str, official: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Load images (N, 28, 28) uint8 and labels (N,) int64 of one split from a folder.

    official=True also checks the MD5s and the exact class balance of Fashion-MNIST;
    official=False (a user's own test folder) checks only the structure.
    """
    folder = Path(folder)
    img_name, lbl_name = SPLITS[split]
    paths = {}
    for n in (img_name, lbl_name):
        p = find_file(folder, n)
        if p is None:
            raise DataError(f"{folder}: missing {n} or {n}.gz. Expected the {split} files of Fashion-MNIST in this folder.")
        paths[n] = p
    arrays, checksums = {}, {}
    for n, p in paths.items():  # each file read and gunzipped once
        blob = p.read_bytes()
        content = _open_maybe_gzip(p, blob)
        if official:
            checksums[n] = verify_md5(p, n, blob, content)
        arrays[n] = parse_idx(content, str(p))
    images, labels = arrays[img_name], arrays[lbl_name]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{paths[img_name]}: images have shape {images.shape}, expected (N, 28, 28).")
    if labels.ndim != 1:
        raise DataError(f"{paths[lbl_name]}: labels have shape {labels.shape}, expected (N,). Are the image and label files swapped?")
    if len(images) != len(labels):
        raise DataError(
            f"{folder}: {len(images)} images in {paths[img_name].name} but {len(labels)} labels in {paths[lbl_name].name}; they must match."
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{paths[lbl_name]}: label {int(labels.max())} found, expected 0-9.")
    if official:
        n_expected = FILES[img_name][2]
        if len(images) != n_expected:
            raise DataError(f"{paths[img_name]}: {len(images)} images, expected {n_expected}. Download the file again.")
        counts = np.bincount(labels, minlength=10)
        if not (counts == PER_CLASS[split]).all():
            raise DataError(
                f"{paths[lbl_name]}: class counts {counts.tolist()}, expected {PER_CLASS[split]} per class. "
                "This is not Fashion-MNIST (MNIST digits are unbalanced); use the official files."
            )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), checksums


def download(dest: Path, base_url: str = BASE_URL) -> None:
    """Download the four official .gz files into dest, verifying each MD5 before it is kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = dest / f"{name}.gz"
        if target.exists():
            continue
        url = base_url + f"{name}.gz"
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
            verify_md5(Path(tmp), name)
            os.replace(tmp, target)
        except OSError as e:
            raise DataError(
                f"could not download {url} ({e}). Without internet access, install Debian's package "
                "dataset-fashion-mnist or pass --data-dir with the four IDX files."
            ) from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def locate(data_dir: str | Path | None = None, allow_download: bool = True, base_url: str = BASE_URL) -> Path:
    """Return the first folder in the search order that holds all four files."""
    candidates: list[Path] = []
    if data_dir is not None:
        folder = Path(data_dir)
        if not all(find_file(folder, n) for n in FILES):
            missing = [n for n in FILES if not find_file(folder, n)]
            raise DataError(
                f"--data-dir {folder}: missing {', '.join(missing)} (.gz or raw). Put Fashion-MNIST's four IDX files there, "
                "or leave out --data-dir to use the installed or cached copy."
            )
        return folder
    if os.environ.get("FASHIONCLF_DATA"):
        # An explicit setting that points at the wrong place is an error, not a reason to look elsewhere.
        folder = Path(os.environ["FASHIONCLF_DATA"])
        missing = [n for n in FILES if not find_file(folder, n)]
        if missing:
            raise DataError(f"$FASHIONCLF_DATA={folder}: missing {', '.join(missing)} (.gz or raw). Fix or unset the variable.")
        return folder
    candidates += [DEBIAN_DIR, cache_dir()]
    for folder in candidates:
        if all(find_file(folder, n) for n in FILES):
            return folder
    if not allow_download:
        raise DataError(
            "Fashion-MNIST not found in " + ", ".join(map(str, candidates)) + ". Install Debian's package "
            "dataset-fashion-mnist, set FASHIONCLF_DATA, or pass --data-dir."
        )
    download(cache_dir(), base_url)
    return cache_dir()


@dataclass
class FashionMNIST:
    """The whole dataset in memory. val_* is a fixed stratified slice of the official train split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    checksums: dict = field(default_factory=dict)
    classes: tuple = CLASSES
    split_seed: int = 0


def stratified_split(labels: torch.Tensor, val_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) with val_per_class items of every class in val, fixed by seed."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    val_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        members = perm[labels[perm] == c]
        val_mask[members[:val_per_class]] = True
    return (~val_mask).nonzero().squeeze(1), val_mask.nonzero().squeeze(1)


def load_fashion_mnist(data_dir=None, val_size: int = 6000, split_seed: int = 0, allow_download: bool = True) -> FashionMNIST:
    """Find, verify and load Fashion-MNIST with a 54k/6k train/validation split by default."""
    folder = locate(data_dir, allow_download)
    tx, ty, c1 = load_split(folder, "train")
    ex, ey, c2 = load_split(folder, "test")
    tr, va = stratified_split(ty, val_size // 10, split_seed)
    return FashionMNIST(tx[tr], ty[tr], tx[va], ty[va], ex, ey, str(folder), {**c1, **c2}, CLASSES, split_seed)
