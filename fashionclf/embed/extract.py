"""Photos into an embedding store: decoded in parallel threads, through the frozen backbones in batches, once.

Each photo is read once: its bytes give the content hash (the store's key) and are decoded from memory. The
photo is letterboxed to the model's side as a photo run's input is (data/folders.letterbox), and each backbone
sees it and its mirror image (the two views). The precision (bf16 or fp32, and the memory format) is the one
measured fastest for this model on this machine (engine/device.py), re-measured whenever the kernels could
differ (engine/autotune.py's cache key).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fashionclf.data.folders import letterbox
from fashionclf.data.images import ImageError, load_rgb
from fashionclf.embed.store import EmbeddingStore
from fashionclf.engine.device import inference_precision
from fashionclf.engine.inference import infer_features
from fashionclf.models import create_model
from fashionclf.models.frozen import DEFAULT_BACKBONES, FrozenLites

VIEWS = ("photo", "mirror")


STORE_ENV = "FASHIONCLF_STORE"  # where `train --data` with no model keeps its vectors, if set


def default_store() -> Path:
    """The store `fashionclf train --data FOLDER` uses when no --store is given: $FASHIONCLF_STORE, or
    $XDG_CACHE_HOME/fashionclf/embeddings (default ~/.cache). Vectors are kept by content hash, so one store serves
    every folder of every project on the machine: a photo is embedded once whichever folder it is trained from."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashionclf" / "embeddings"


def embedding_model(backbones: str = DEFAULT_BACKBONES, image_size: int = 260, pretrained: bool = True) -> FrozenLites:
    return create_model("frozen_lites", num_classes=1, in_chans=3, pretrained=pretrained, image_size=image_size, backbones=backbones)


def store_spec(model: FrozenLites) -> dict:
    return {
        "model": "frozen_lites",
        "backbones": "+".join(model.keys),
        "image_size": model.image_size,
        "views": list(VIEWS),
        "dim": model.dim,
    }


def open_store(
    root: str | Path, backbones: str = DEFAULT_BACKBONES, image_size: int = 260, pretrained: bool = True
) -> tuple[EmbeddingStore, FrozenLites]:
    """The store at root (made where missing) and the model whose features it holds."""
    model = embedding_model(backbones, image_size, pretrained)
    return EmbeddingStore(root, store_spec(model)), model


@torch.no_grad()
def features(model: FrozenLites, x_u8: torch.Tensor, dtype, channels_last: bool) -> np.ndarray:
    """(n, views, dim) for (n, 3, S, S) uint8 photos: each view's pooled backbone features (engine.inference's
    infer_features, the served run's own computation, in one batch)."""
    return infer_features(model, x_u8, max(1, len(x_u8)), torch.device("cpu"), dtype, channels_last, tta=True).numpy()


def decode_photo(path: Path, side: int) -> np.ndarray | str:
    """(3, side, side) uint8, letterboxed as a photo run's input is, or why the file could not be used."""
    try:
        return letterbox(load_rgb(path), side).transpose(2, 0, 1)
    except (ImageError, OSError) as e:
        return f"{path}: {e}"


def embed_files(
    store: EmbeddingStore,
    model: FrozenLites,
    files: list[Path],
    batch_size: int = 16,
    workers: int = 2,
    precision: str = "auto",
    on_batch: Callable[[int, int], None] | None = None,
    hashes: list[str] | None = None,
) -> dict:
    """Embed the files the store lacks; returns what was done (counts, seconds, photos/s, skipped files).
    hashes: the files' content hashes where the caller has them already (store.hashes)."""
    start = time.perf_counter()
    model.eval()
    hashes = store.hashes(files) if hashes is None else hashes
    first = dict(zip(reversed(hashes), reversed(files)))  # one file per content: the first with it
    todo = [(h, first[h]) for h in store.missing(hashes)]
    skipped: list[str] = []
    report = {"files": len(files), "unique": len(first), "embedded": 0, "already": len(first) - len(todo)}
    if not todo:
        return {**report, "seconds": time.perf_counter() - start, "skipped": skipped}
    side = model.image_size
    with ThreadPoolExecutor(max(1, workers)) as pool:
        decoded = pool.map(lambda item: (item[0], decode_photo(item[1], side)), todo)
        prec, batch = None, []
        for n, (h, img) in enumerate(decoded, 1):
            if isinstance(img, str):
                skipped.append(img)
            else:
                batch.append((h, img))
            if len(batch) == batch_size or (n == len(todo) and batch):
                x = torch.from_numpy(np.stack([b[1] for b in batch]))
                if prec is None:  # measured once, on the first batch
                    prec = inference_precision(precision, torch.device("cpu"), model, x, channels_last=True, name="frozen_lites")
                store.add([b[0] for b in batch], features(model, x, prec.dtype, prec.channels_last))
                report["embedded"] += len(batch)
                batch = []
            if on_batch is not None and (n % batch_size == 0 or n == len(todo)):
                on_batch(n, len(todo))
    seconds = time.perf_counter() - start
    precision_used = None if prec is None else ("bf16" if prec.dtype is not None else "fp32")
    return {**report, "seconds": seconds, "photos_per_s": report["embedded"] / seconds, "precision": precision_used, "skipped": skipped}


def files_of(paths: list[str | Path]) -> list[Path]:
    """The photo files of folders (recursively) and of .csv/.jsonl manifests; a DataError for a missing path."""
    from fashionclf.data.fashion_mnist import DataError
    from fashionclf.data.images import find_images
    from fashionclf.data.layouts import MANIFEST_SUFFIXES, read_manifest

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            out += [f for items in read_manifest(p).splits.values() for f, _ in items]
        elif p.exists():
            out += find_images([p])
        else:
            raise DataError(f"{p} does not exist; expected a folder of photos, a photo or a .csv/.jsonl manifest")
    if not out:
        raise DataError(f"no photos (.jpg, .png, .webp, .bmp, .gif, .tif) in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(out))


def open_for(store, backbones: str | None = None, image_size: int | None = None, pretrained: bool = True):
    """(the store, the model whose features it holds): a new store takes backbones and image_size (or the defaults);
    an existing one keeps its own, and asking it for others is a ValueError. pretrained=False: the model only for its
    shape (no weights read)."""
    from fashionclf.embed.store import read_spec

    spec = read_spec(store)
    if spec and ((backbones and backbones != spec["backbones"]) or (image_size and image_size != spec["image_size"])):
        raise ValueError(
            f"{store} holds {spec['backbones']} at {spec['image_size']} px; leave out --backbones/--image-size, or use a new --store"
        )
    spec = spec or {}
    return open_store(
        store, spec.get("backbones") or backbones or DEFAULT_BACKBONES, spec.get("image_size") or image_size or 260, pretrained
    )


def embed_paths(paths, store, backbones=None, image_size=None, batch_size=16, workers=2, on_batch=None, precision="auto") -> dict:
    """Embed every photo of paths into the store (made with backbones and image_size where it is new)."""
    from fashionclf.embed.store import store_size

    files = files_of(paths)
    st, model = open_for(store, backbones, image_size)
    try:
        report = embed_files(st, model, files, batch_size, workers, precision=precision, on_batch=on_batch)
        report |= {"stored": len(st), "backbones": "+".join(model.keys), "image_size": model.image_size}
    finally:
        st.close()
    return {**report, "store_mb": store_size(store) / 1e6}
