"""A catalogue's photos embedded on Ray Data: the decoding and backbones of `fashionclf embed`, on a cluster's actors.

For a catalogue beyond one machine. This process hashes the photos (the store's index keeps the hashes, so a known
photo is not read again) and sends only the ones the store lacks to Ray actors (`Embedder`: the store's backbones
loaded once per actor, photos decoded and letterboxed as `embed` does). The vectors come back here, and this process
is the store's one writer: each batch is added as it arrives, so a killed job resumes where it stopped and another
writer never corrupts the store (embed/store.py's guarantees hold unchanged). Ray is imported only here
(`pip install 'fashionclf[ray]'`).

    import ray
    from fashionclf.embed.ray import embed_paths_ray

    ray.init()                                    # or ray.init(address="auto") on a cluster
    embed_paths_ray(["catalogue/"], "store/", concurrency=4)

Every node must see the photos at the same paths (a shared filesystem or a synced copy). precision: "auto" lets
each actor measure bf16 against fp32 on its own node, as `embed` does on one machine; "fp32" gives vectors equal to
one process's fp32 vectors wherever they are computed (tests/test_embed_ray.py checks it on a local Ray cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fashionclf.embed.extract import decode_photo, embedding_model, features, files_of, open_for
from fashionclf.embed.store import store_size
from fashionclf.engine.device import inference_precision

COLUMNS = ("hash", "vectors", "error", "precision")


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("embedding on Ray needs Ray Data: pip install 'fashionclf[ray]' (or pip install 'ray[data]')") from None
    return ray


class Embedder:
    """A Ray Data callable class: the backbones loaded once per actor, then one call per batch of photos."""

    def __init__(self, backbones: str, image_size: int, precision: str = "auto", threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.model, self.precision, self.prec = embedding_model(backbones, image_size).eval(), precision, None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = [decode_photo(Path(str(p)), self.model.image_size) for p in batch["path"]]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        vectors = np.zeros((len(decoded), 2, self.model.dim), np.float32)
        if good:
            x = torch.from_numpy(np.stack([decoded[i] for i in good]))
            if self.prec is None:  # measured once per actor, on its node, as embed_files does
                self.prec = inference_precision(self.precision, torch.device("cpu"), self.model, x, channels_last=True, name="frozen_lites")
            vectors[good] = features(self.model, x, self.prec.dtype, self.prec.channels_last)
        return {
            "hash": np.asarray(batch["hash"], dtype=object),
            "vectors": vectors,
            "error": np.array([d if isinstance(d, str) else "" for d in decoded], dtype=object),
            "precision": np.array([_name(self.prec)] * len(decoded), dtype=object),
        }


def _name(prec) -> str:
    return "none" if prec is None else ("bf16" if prec.dtype is not None else "fp32")


def embed_paths_ray(
    paths,
    store,
    backbones: str | None = None,
    image_size: int | None = None,
    batch_size: int = 16,
    concurrency: int = 1,
    precision: str = "auto",
    threads: int = 0,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict:
    """embed_paths' report for the photos of paths, embedded by `concurrency` Ray actors (ray.init() first: a local
    instance or a cluster's address) and written to the store here."""
    ray = _ray()
    start = time.perf_counter()
    files = files_of(paths)
    st, model = open_for(store, backbones, image_size, pretrained=False)  # its shape only: the actors load the weights
    spec = {"backbones": "+".join(model.keys), "image_size": model.image_size}
    try:
        hashes = st.hashes(files)
        first = dict(zip(reversed(hashes), reversed(files)))  # one file per content: the first with it
        todo = [(h, first[h]) for h in st.missing(hashes)]
        report = {"files": len(files), "unique": len(first), "embedded": 0, "already": len(first) - len(todo), "skipped": []}
        used: set[str] = set()
        if todo:
            ds = ray.data.from_items([{"hash": h, "path": str(p)} for h, p in todo])
            out = ds.map_batches(
                Embedder,
                fn_constructor_kwargs={
                    "backbones": spec["backbones"],
                    "image_size": spec["image_size"],
                    "precision": precision,
                    "threads": threads,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=max(1, concurrency)),
            )
            for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
                ok = batch["error"] == ""
                report["skipped"] += [str(e) for e in batch["error"][~ok]]
                if ok.any():
                    st.add([str(h) for h in batch["hash"][ok]], batch["vectors"][ok])
                report["embedded"] += int(ok.sum())
                used |= {str(p) for p in batch["precision"][ok]}
                if on_batch is not None:
                    on_batch(report["embedded"] + len(report["skipped"]), len(todo))
        seconds = time.perf_counter() - start
        speed = {"photos_per_s": report["embedded"] / seconds} if report["embedded"] else {}
        report |= {
            "seconds": seconds,
            **speed,
            "precision": "+".join(sorted(used)) or None,
            "stored": len(st),
            "backbones": spec["backbones"],
        }
        report |= {"image_size": spec["image_size"], "ray": {"concurrency": concurrency}}
    finally:
        st.close()
    return {**report, "store_mb": store_size(store) / 1e6}


def embed_on_ray(paths, store, address: str = "local", **options) -> dict:
    """embed_paths_ray on a Ray instance: "local" starts one on this machine for the call (stopped after it); any
    other address ("auto", "ray://host:10001") joins that cluster. An instance this process already started is used
    as it is. options: embed_paths_ray's."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    try:
        return embed_paths_ray(paths, store, **options)
    finally:
        if started:
            ray.shutdown()
