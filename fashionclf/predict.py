"""Predict categories of product photos with a trained run: decode, convert, infer, calibrate, flag for review.

`predict_files` yields one result per input file, in input order, in batches; a file that
cannot be read yields an error result and the rest still run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .images import MAX_PIXELS, ImageError, load_rgb
from .preprocess import to_fashion_mnist
from .runs import Run, atomic_write_bytes
from .train import infer, resolve_precision


def calibrated_probs(run: Run, logits: torch.Tensor) -> torch.Tensor:
    """Softmax of the logits over the run's temperature (1 for runs saved before calibration existed)."""
    cal = run.metrics.get("calibration") or {}
    return (logits.float() / cal.get("temperature", 1.0)).softmax(1)


def review_threshold(run: Run) -> float | None:
    """The run's confidence threshold for automatic labelling; None if it has none (everything needs review)."""
    cal = run.metrics.get("calibration") or {}
    return cal.get("threshold")


def results_from_logits(run: Run, logits: torch.Tensor, top_k: int = 3) -> list[dict]:
    return results_from_probs(run, calibrated_probs(run, logits), top_k)


def results_from_probs(run: Run, probs: torch.Tensor, top_k: int = 3) -> list[dict]:
    """One result per row of calibrated probabilities: label, confidence, top-k, review flag."""
    threshold = review_threshold(run)
    k = min(top_k, probs.shape[1])
    conf, idx = probs.topk(k, dim=1)
    out = []
    for c, i in zip(conf.tolist(), idx.tolist()):
        out.append(
            {
                "label": run.classes[i[0]],
                "index": i[0],
                "confidence": c[0],
                "top_k": [{"label": run.classes[j], "index": j, "confidence": p} for j, p in zip(i, c)],
                "needs_review": threshold is None or c[0] < threshold,
            }
        )
    return out


def predict_arrays(run: Run, images_u8: np.ndarray | torch.Tensor, top_k: int = 3, device: str = "cpu", backend=None) -> list[dict]:
    """Results for model-ready uint8 images: (N, 28, 28) Fashion-MNIST style, or (N, 3, S, S) for image-folder runs.

    backend: None for the run's PyTorch model, or an object whose .probs(images) gives calibrated
    probabilities (export.OnnxModel).
    """
    if backend is not None:
        return results_from_probs(run, torch.from_numpy(backend.probs(images_u8)), top_k)
    x = torch.as_tensor(np.asarray(images_u8), dtype=torch.uint8)
    dev = torch.device(device)
    amp = resolve_precision("fp32" if run.config.precision == "fp32" else "auto", dev)
    logits = infer(run.model.to(dev), x, device=dev, amp_dtype=amp, channels_last=run.config.channels_last, tta=run.config.tta)
    return results_from_logits(run, logits, top_k)


def preprocess_file(
    source: str | Path | bytes, method: str = "grabcut", run: Run | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """What the run's model takes, from a file or its bytes: a Fashion-MNIST-style (28, 28) image, or (3, S, S)
    RGB for image-folder runs."""
    spec = run.meta.get("input", {}) if run is not None else {}
    rgb = load_rgb(source, max_pixels)
    if spec.get("kind") == "rgb-letterbox":
        from .folders import letterbox

        return letterbox(rgb, spec["height"]).transpose(2, 0, 1)
    return to_fashion_mnist(rgb, method).image


def png_bytes(img: np.ndarray) -> bytes:
    """A model-ready image, (H, W) gray or (3, H, W) RGB, as PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.transpose(1, 2, 0) if img.ndim == 3 else img).save(buf, format="PNG")
    return buf.getvalue()


def predict_files(
    run: Run,
    paths: list[Path],
    top_k: int = 3,
    batch_size: int = 64,
    save_preprocessed: str | Path | None = None,
    method: str = "grabcut",
    backend=None,
) -> Iterator[dict]:
    """One dict per path, in order: the prediction, or {'file', 'error'} for a file that cannot be used."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images, rows = [], []
        for p in chunk:
            try:
                images.append(preprocess_file(p, method, run))
                rows.append({"file": str(p)})
            except ImageError as e:
                rows.append({"file": str(p), "error": str(e)})
        preds = iter(predict_arrays(run, np.stack(images), top_k, backend=backend) if images else [])
        it = iter(images)
        for row in rows:
            if "error" in row:
                yield row
                continue
            img = next(it)
            if save_preprocessed is not None:
                _save_png(Path(save_preprocessed), Path(row["file"]), img)
            yield {**row, **next(preds)}


def _save_png(folder: Path, source: Path, img: np.ndarray) -> None:
    # The source's path, flattened, keeps names from different folders apart.
    name = "__".join(p for p in source.with_suffix("").parts if p not in ("/", "..", ".")) + ".png"
    atomic_write_bytes(folder / name, png_bytes(img))


def load_labelled_photos(
    run: Run, folder: str | Path, method: str = "grabcut", class_map: dict[str, str | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Photos from class subfolders, preprocessed for the run, with labels in the run's class order.

    Folder names match class names ignoring case and punctuation ('tshirt_top' is 'T-shirt/top');
    class_map renames folders first (see parse_class_map), None there leaving a folder out.
    Returns images, labels and one message per file left out because it could not be read.
    """
    from .folders import load_converted_photos

    x, y, skipped, _ = load_converted_photos(folder, run.classes, lambda p: preprocess_file(p, method, run), class_map)
    return x, y, skipped
