"""The layouts a shop's labelled photos come in, read into (file, class) lists per split.

- class folders: `root/<class>/*.jpg` (the test and validation splits are carved out at training time);
- split folders: `root/train/<class>/`, `root/val|valid|validation/<class>/`, `root/test/<class>/`
  (Ultralytics, Roboflow and Keras users' layout), used as given; a missing val or test split is carved
  out of train;
- a manifest: a CSV (header `path,label[,split]`) or JSONL file (objects with those keys), paths
  relative to the manifest's folder.

A folder that reads two ways is refused, with both readings named: split folders beside loose images
or beside class folders, split folders without class folders (they would become classes called
`train` and `val`), class folders that hold split folders. Nothing here decodes an image.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from fashionclf.data.fashion_mnist import DataError
from fashionclf.data.images import SUFFIXES

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_SUFFIXES = {".csv", ".jsonl"}


@dataclass
class Layout:
    """What a --data path holds: its kind, its classes (sorted) and (file, class index) pairs per split.

    splits has the key "all" for class folders and manifests without a split column, else some of
    "train", "val", "test". Files named by a manifest may be missing; they are read (and reported) later.
    """

    kind: str  # "classes" | "splits" | "manifest"
    root: Path  # the folder paths are relative to
    classes: list[str]
    splits: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return f"{self.kind} ({len(self.classes)} classes; {parts})"


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


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, recursive: bool = True) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))


def read_layout(path: str | Path) -> Layout:
    """The layout of a folder or manifest; one clear DataError for anything unusable or ambiguous."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(f"{path} is a file but not a manifest; expected a folder, or a .csv or .jsonl file with path,label[,split]")
        return read_manifest(path)
    if not path.is_dir():
        raise DataError(f"{path} does not exist; expected a folder of class folders, of train/val/test folders, or a .csv/.jsonl manifest")
    subs = _subdirs(path)
    splits = [d for d in subs if d.name.lower() in SPLIT_NAMES]
    if splits:
        return _read_splits(path, subs, splits)
    _refuse_class_split_folders(path, subs)
    classes, items = scan(path)
    return Layout("classes", path, classes, {"all": items})


def _refuse_class_split_folders(root: Path, subs: list[Path]) -> None:
    """`root/<class>/train/` etc.: either classes with splits inside, or classes whose subfolders are merged."""
    nested = [d for d in subs if any(s.name.lower() in SPLIT_NAMES for s in _subdirs(d))]
    if nested and len(nested) == len(subs):
        raise DataError(
            f"{root}: its class folders ({', '.join(d.name for d in nested[:3])}...) hold split folders (train/val/test). "
            "Read as class folders, each class's splits would be merged; read as splits, the layout is class/split, which "
            f"this tool does not read. Move them to {root}/train/<class>/, {root}/val/<class>/, {root}/test/<class>/"
        )


def _read_splits(root: Path, subs: list[Path], splits: list[Path]) -> Layout:
    names = [d.name for d in splits]
    others = [d.name for d in subs if d not in splits]
    loose = _images(root, recursive=False)
    if others or loose:
        what = f"class folders {others[:5]}" if others else f"{len(loose)} images directly in it"
        raise DataError(
            f"{root} holds split folders {names} and also {what}: read as class folders it would train classes named "
            f"{sorted(names + others)}; read as split folders the rest would be ignored. Move everything into the split "
            f"folders ({root}/train/<class>/...), or the split folders out"
        )
    seen: dict[str, Path] = {}
    for d in splits:
        key = SPLIT_NAMES[d.name.lower()]
        if key in seen:
            raise DataError(f"{root}: {seen[key].name}/ and {d.name}/ are both the {key} split; keep one")
        seen[key] = d
        loose = _images(d, recursive=False)
        if _subdirs(d) and loose:
            raise DataError(
                f"{d} holds class folders and also {len(loose)} images directly in it ({loose[0].name}, ...), which have no class; "
                f"move them into {d}/<class>/"
            )
        if not _subdirs(d):
            n = len(_images(d))
            raise DataError(
                f"{d} holds no class folders ({n} images directly in it): read as class folders, {root} would train classes "
                f"named {sorted(names)}; read as split folders, {d.name}/ has no classes. Put the images in "
                f"{d}/<class>/ folders"
            )
    if "train" not in seen:
        raise DataError(f"{root} has split folders {names} but no train/ folder; add {root}/train/<class>/ with the training photos")
    classes = sorted(c.name for c in _subdirs(seen["train"]))
    if len(classes) < 2:
        raise DataError(f"{seen['train']} has {len(classes)} class folder(s); expected at least 2")
    out: dict[str, list[tuple[Path, int]]] = {}
    for key in ("train", "val", "test"):
        if key in seen:
            out[key] = _split_items(seen[key], classes, key)
    return Layout("splits", root, classes, out)


def _split_items(folder: Path, classes: list[str], key: str) -> list[tuple[Path, int]]:
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted(d.name for d in _subdirs(folder) if d.name not in index)
    if extra:
        raise DataError(f"{folder} has class folders {extra} that train/ does not have; every class must be trained on")
    items = [(f, index[d.name]) for d in _subdirs(folder) for f in _images(d)]
    if key == "train":
        empty = [c for c in classes if not any(i == index[c] for _, i in items)]
        if empty:
            raise DataError(f"{folder}: class folders {empty} hold no images (.jpg, .png, .webp, .bmp, .gif, .tif)")
    if not items:
        raise DataError(f"{folder} holds no images in its class folders; add some or remove the folder")
    return items


def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV or JSONL manifest."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: the CSV header {reader.fieldnames} lacks {sorted(missing)}; expected path,label[,split]")
        return [(n + 2, row) for n, row in enumerate(reader)]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: not JSON ({e.msg}); expected one object per line with path, label[, split]") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {n}: expected an object with path, label[, split]")
        rows.append((n, row))
    return rows


def read_manifest(path: str | Path) -> Layout:
    """A CSV or JSONL manifest: path (relative to the manifest's folder, or absolute), label, optional split."""
    path = Path(path)
    root = path.parent
    parsed = []
    for n, row in _manifest_rows(path):
        file, label = str(row.get("path") or "").strip(), str(row.get("label") or "").strip()
        if not file or not label:
            raise DataError(f"{path} line {n}: empty path or label; every row needs both")
        split = str(row.get("split") or "").strip().lower()
        if split and split not in SPLIT_NAMES:
            raise DataError(f"{path} line {n}: split {split!r}; expected train, val (valid, validation), test or empty")
        parsed.append((root / file, label, SPLIT_NAMES.get(split, ""), n))
    if not parsed:
        raise DataError(f"{path} lists no images; expected rows of path,label[,split]")
    with_split = {s != "" for _, _, s, _ in parsed}
    if len(with_split) == 2:
        n = next(n for _, _, s, n in parsed if not s)
        raise DataError(f"{path} line {n}: no split while other rows have one; give every row a split, or none")
    classes = sorted({label for _, label, _, _ in parsed})
    if len(classes) < 2:
        raise DataError(f"{path} has {len(classes)} label(s); expected at least 2 classes")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[tuple[Path, int]]] = {}
    for file, label, split, _ in parsed:
        splits.setdefault(split or "all", []).append((file, index[label]))
    if with_split == {True} and "train" not in splits:
        raise DataError(f"{path}: no row is in the train split; mark the training photos split=train")
    return Layout("manifest", root, classes, splits)
