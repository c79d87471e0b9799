"""Catalogue inference on Ray: the project's predictor over a Ray Dataset of image files.

An optional extra (`pip install 'fashionclf[ray]'`); Ray is imported only here. Each Ray actor loads
the run once (`RunPredictor.__init__`) and then classifies batches with `predict.predict_files`, the
same decoding, cut-out, model and calibration as `fashionclf predict`, so the labels, confidences and
review flags are the same numbers.

    import ray
    from fashionclf.infer.ray import predict_dataset

    ray.init()                                              # or ray.init(address="auto") on a cluster
    ds = ray.data.from_items([{"path": p} for p in paths])  # any Dataset with a "path" column
    out = predict_dataset(ds, "study/runs/resnet-s0", batch_size=64, concurrency=4)
    out.write_parquet("s3://bucket/labels/")                # or .take_all(), .to_pandas(), ...

Output columns: path, label, index, confidence, needs_review, top_k (JSON text: a list of
{label, index, confidence}) and error ("" when the file could be used; label "" and index -1 when not).

On a cluster, every node must see the run folder and the images at the same paths (a shared
filesystem or a synced copy): each actor opens them itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("Ray inference needs Ray Data: pip install 'fashionclf[ray]' (or pip install 'ray[data]')") from None
    return ray


class RunPredictor:
    """A Ray Data callable class: the run loaded once per actor, then one call per batch of paths."""

    def __init__(self, run_dir: str, top_k: int = 3, method: str = "grabcut", threads: int = 0):
        import torch

        from fashionclf.engine.device import keep_freed_memory
        from fashionclf.engine.runs import load_run

        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()
        self.run, self.top_k, self.method = load_run(run_dir), top_k, method

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from fashionclf.infer.predict import predict_files

        paths = [Path(str(p)) for p in batch["path"]]
        rows = list(predict_files(self.run, paths, top_k=self.top_k, batch_size=max(1, len(paths)), method=self.method))
        return {
            "path": np.array([str(p) for p in batch["path"]], dtype=object),
            "label": np.array([r.get("label", "") for r in rows], dtype=object),
            "index": np.array([r.get("index", -1) for r in rows], dtype=np.int64),
            "confidence": np.array([r.get("confidence", np.nan) for r in rows], dtype=np.float64),
            "needs_review": np.array([r.get("needs_review", True) for r in rows], dtype=bool),
            "top_k": np.array([json.dumps(r.get("top_k", [])) for r in rows], dtype=object),
            "error": np.array([r.get("error", "") for r in rows], dtype=object),
        }


def predict_dataset(
    ds, run_dir: str | Path, batch_size: int = 64, concurrency: int = 1, top_k: int = 3, method: str = "grabcut", threads: int = 0
):
    """ds (a Ray Dataset with a "path" column) -> a lazy Ray Dataset of predictions, one row per path."""
    _ray()
    if "path" not in (ds.columns() or []):
        raise ValueError(f"the dataset needs a 'path' column of image file paths; it has {ds.columns()}")
    return ds.map_batches(
        RunPredictor,
        fn_constructor_kwargs={"run_dir": str(run_dir), "top_k": top_k, "method": method, "threads": threads},
        batch_size=batch_size,
        batch_format="numpy",
        compute=_actor_pool(concurrency),
    )


def _actor_pool(size: int):
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size)


def predict_paths(paths: list[str | Path], run_dir: str | Path, batch_size: int = 64, concurrency: int = 1, top_k: int = 3) -> list[dict]:
    """Convenience for a list of files: rows in input order (Ray may finish batches out of order)."""
    ray = _ray()
    if not paths:
        return []
    ds = ray.data.from_items([{"path": str(p)} for p in paths])
    order = {str(p): i for i, p in enumerate(paths)}
    rows = predict_dataset(ds, run_dir, batch_size, concurrency, top_k).take_all()
    return sorted(rows, key=lambda r: order[r["path"]])
