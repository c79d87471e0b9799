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

from fashionclf.data.fashion_mnist import DataError, FashionMNIST
from fashionclf.data.images import ImageError, load_rgb
from fashionclf.data.layouts import read_layout, scan


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


def scans_as_photos(x_u8: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 28, 28) light-on-black Fashion-MNIST scans as an RGB photo run takes them: negated back to a dark item
    on white (what the shots looked like before the dataset was made), letterboxed to (N, 3, size, size)."""
    out = torch.empty((len(x_u8), 3, size, size), dtype=torch.uint8)
    for i, img in enumerate(np.asarray(x_u8)):
        rgb = np.repeat((255 - img)[:, :, None], 3, axis=2)
        out[i] = torch.from_numpy(letterbox(rgb, size).transpose(2, 0, 1).copy())
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
        name = p.relative_to(root) if p.is_relative_to(root) else p  # a manifest may name files anywhere
        size = p.stat().st_size if p.exists() else -1  # ... or missing ones (read, and reported, as unreadable)
        h.update(f"{name}\t{size}\t{label}\n".encode())
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


class _Decoder:
    """load_images, in memory or (cache="disk") into files mapped from the cache (data/store.py)."""

    def __init__(self, mode: str, size: int):
        from fashionclf.data import images, store

        self.size, self.disk = size, store.DiskStore() if mode == "disk" else None
        self.code = [Path(__file__), Path(images.__file__)]
        self.keys: dict[int, str] = {}  # id(items) -> file_key: one stat of every file per list, not per split taken

    def _key(self, items: list) -> str:
        from fashionclf.data.store import file_key

        if id(items) not in self.keys:
            self.keys[id(items)] = file_key(items, self.size, self.code)
        return self.keys[id(items)]

    def decode(self, items: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        if self.disk is None:
            return load_images(items, self.size)
        return self.disk.decode(items, self.size, lambda p: letterbox(load_rgb(p), self.size), self._key(items))

    def take(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, of: list) -> tuple[torch.Tensor, torch.Tensor]:
        if self.disk is None:
            return x[idx], y[idx]
        return self.disk.take(x, y, idx, self._key(of))


def load_image_folder(
    data: str | Path,
    val_data: str | Path | None = None,
    image_size: int = 128,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    cache: str = "memory",
    decoder=None,
) -> tuple[FashionMNIST, list[str]]:
    """The dataset (train/val/test as uint8 tensors) and the messages for files that were left out.

    data: class folders, split folders (train/ val/ test/, each of class folders) or a CSV/JSONL manifest
    (fashionclf.data.layouts). Splits it gives are used as given; missing ones are carved out of train.
    cache: "memory", "disk" (file-backed tensors, for folders larger than memory: data/store.py) or
    "auto" (disk when the decoded images would take more than 15% of the available memory).
    decoder: what turns (file, label) items into tensors (`decode(items)`, `take(x, y, idx, items)`), instead of
    pixels: an embedding store's vectors (training/embedded.py) split exactly as the pixels would be.
    """
    from fashionclf.data.store import choose

    if not 16 <= image_size <= 512:
        raise DataError(f"--image-size {image_size}: expected 16-512 pixels")
    layout = read_layout(data)
    classes, given, root = layout.classes, layout.splits, layout.root
    pool = given.get("all") or given["train"]
    dec = decoder or _Decoder(choose(cache, sum(map(len, given.values())), image_size), image_size)
    x, y, skipped = dec.decode(pool)
    checksums = {"data": _fingerprint(pool, root)}
    if "test" in given:
        tx, ty, s = dec.decode(given["test"])
        skipped += s
        rest = torch.arange(len(y))
        checksums["test"] = _fingerprint(given["test"], root)
    else:
        rest, test = _split(y, test_fraction, split_seed)
        tx, ty = dec.take(x, y, test, pool)
    if val_data is not None and "val" in given:
        raise DataError(f"{data} has its own validation split; leave out --val-data {val_data}, or remove that split")
    if val_data is not None:
        vroot = Path(val_data)
        vclasses, vitems = scan(vroot)
        if vclasses != classes:
            missing, extra = sorted(set(classes) - set(vclasses)), sorted(set(vclasses) - set(classes))
            raise DataError(f"{vroot} has other class folders than {root}: missing {missing or 'none'}, extra {extra or 'none'}")
        vx, vy, vskipped = dec.decode(vitems)
        skipped += vskipped
        train_idx = rest
        checksums["val_data"] = _fingerprint(vitems, vroot)
    elif "val" in given:
        vx, vy, vskipped = dec.decode(given["val"])
        skipped += vskipped
        train_idx = rest
        checksums["val"] = _fingerprint(given["val"], root)
    else:
        r, v = _split(y[rest], val_fraction / (1 - test_fraction), split_seed + 1)
        train_idx = rest[r]
        vx, vy = dec.take(x, y, rest[v], pool)
    if len(train_idx) < len(y) or dec.disk is None:  # all of the pool trains (given splits, disk): use it as it is
        x, y = dec.take(x, y, train_idx, pool)
    ds = FashionMNIST(x, y, vx, vy, tx, ty, str(data), checksums, tuple(classes), split_seed)
    return ds, skipped


def parse_class_map(text: str | None) -> dict[str, str | None]:
    """'t-shirt=T-shirt/top,pants=trouser,hat=-' -> {'t-shirt': 'T-shirt/top', 'pants': 'trouser', 'hat': None}.

    Lets a shop score a model on folders named its own way; '-' leaves a folder out (a class the model lacks).
    """
    out: dict[str, str | None] = {}
    for item in (t.strip() for t in (text or "").split(",")):
        if not item:
            continue
        folder, sep, cls = item.partition("=")
        if not sep or not folder.strip() or not cls.strip():
            raise DataError(f"--class-map item {item!r}: expected FOLDER=CLASS (or FOLDER=- to leave the folder out)")
        out[folder.strip()] = None if cls.strip() == "-" else cls.strip()
    return out


def map_folders(names: list[str], classes: tuple | list, class_map: dict[str, str | None] | None, where: str) -> dict[str, int | None]:
    """Each class folder's index among `classes` (None: left out), matching names ignoring case and punctuation.

    class_map renames folders first ('t-shirt' -> 'T-shirt/top'); a value of None leaves a folder out.
    """
    norm = {norm_name(c): i for i, c in enumerate(classes)}
    class_map = class_map or {}
    stray = sorted(set(class_map) - set(names))
    if stray:
        raise DataError(f"the class map names folders {stray} that {where} does not have (it has {', '.join(names)})")
    bad = sorted(v for v in class_map.values() if v is not None and norm_name(v) not in norm)
    if bad:
        raise DataError(f"the class map maps to {bad}, which are not classes of this model ({', '.join(classes)})")
    target = {n: class_map.get(n, n) for n in names}
    unknown = [n for n in names if target[n] is not None and norm_name(target[n]) not in norm]
    if unknown:
        raise DataError(
            f"{where}: class folders {unknown} match no class of this model ({', '.join(classes)}); "
            "rename them or map them with --class-map FOLDER=CLASS (FOLDER=- leaves one out)"
        )
    return {n: None if t is None else norm[norm_name(t)] for n, t in target.items()}


def norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def mapped_items(folder: str | Path, classes: tuple | list, class_map: dict[str, str | None] | None) -> list[tuple[Path, int]]:
    """(file, label) for every image of the folders the class map keeps, labels in `classes` order."""
    root = Path(folder)
    names, items = scan(root)
    index = map_folders(names, classes, class_map, str(root))
    used = [(p, index[names[i]]) for p, i in items if index[names[i]] is not None]
    if not used:
        raise DataError(f"{root}: the class map leaves no folder in")
    return used


def load_converted_photos(
    folder: str | Path,
    classes: tuple | list,
    convert,
    class_map: dict[str, str | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """Labelled photos, each turned into a model input by convert(path) -> uint8 array, labels in `classes` order.

    convert raises ImageError for a file it cannot use; that file is left out and named.

    Returns images, labels, one message per unreadable file (left out) and a fingerprint of the files used.
    """
    return _convert(mapped_items(folder, classes, class_map), Path(folder), convert)


def _convert(used: list[tuple[Path, int]], root: Path, convert) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    xs, ys, skipped = [], [], []
    for path, label in used:
        try:
            xs.append(convert(path))
            ys.append(label)
        except ImageError as e:
            skipped.append(f"{path}: {e}")
    if not xs:
        raise DataError(f"{root}: none of the images could be read: " + "; ".join(skipped[:3]))
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long), skipped, _fingerprint(used, root)


def converted_photos_cached(
    folder: str | Path, classes: tuple | list, class_map: dict[str, str | None] | None = None, method: str = "grabcut"
) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """load_converted_photos with the Fashion-MNIST conversion, cached: GrabCut costs ~40 ms a photo.

    The cache key covers the files used (names, sizes, mapped labels), the classes, the method, the
    source of the conversion code and OpenCV's version, so a changed photo, map or conversion step is
    converted afresh.
    """
    import json
    import os
    import tempfile

    from fashionclf.data import images
    from fashionclf.data import photos as preprocess
    from fashionclf.data.fashion_mnist import cache_dir

    root = Path(folder)
    used = mapped_items(root, classes, class_map)
    h = hashlib.sha256()
    h.update(_fingerprint(used, root).encode())
    h.update(json.dumps([method, list(classes), cv2.__version__]).encode())
    for mod in (images, preprocess):
        h.update(Path(mod.__file__).read_bytes())
    path = cache_dir().parent / "converted" / f"{h.hexdigest()[:32]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), [str(s) for s in z["skipped"]], str(z["fingerprint"])
    x, y, skipped, fp = _convert(used, root, lambda p: preprocess.to_fashion_mnist(load_rgb(p), method).image)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")  # written whole, then renamed: no torn cache file
    with os.fdopen(fd, "wb") as f:
        np.savez(f, x=x.numpy(), y=y.numpy(), skipped=np.array(skipped, dtype=str), fingerprint=np.array(fp))
    os.replace(tmp, path)
    return x, y, skipped, fp


def add_converted_photos(data: FashionMNIST, folder: str | Path, class_map: dict[str, str | None] | None, repeat: int) -> list[str]:
    """Mix labelled photos, converted to Fashion-MNIST style, into data's training split (in place).

    Validation and test stay as they were, so a run's scores remain comparable with runs without photos;
    score the photos' own held-out split with `evaluate --data`. Returns the messages for unreadable files.
    """
    if not 1 <= repeat <= 10:
        raise DataError(f"--extra-repeat {repeat}: expected 1-10 (times each photo appears per epoch)")
    x, y, skipped, fp = converted_photos_cached(folder, data.classes, class_map)
    data.train_x = torch.cat([data.train_x, x.repeat(repeat, 1, 1)])
    data.train_y = torch.cat([data.train_y, y.repeat(repeat)])
    data.checksums = {**data.checksums, "extra_photos": fp}
    return skipped
