"""Predict categories of product photos with a trained run: decode, convert, infer, calibrate, flag for review.

`predict_files` yields one result per input file, in input order, in batches; a file that
cannot be read yields an error result and the rest still run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fashionclf.core.io import atomic_write_bytes
from fashionclf.data.images import MAX_PIXELS, ImageError, load_rgb
from fashionclf.data.photos import to_fashion_mnist
from fashionclf.engine.inference import head_view_logits
from fashionclf.engine.runs import DAMAGED, NOVELTY, LoadedRun, RunError, load_predictions
from fashionclf.evaluation.calibrate import RULE, Promise, guaranteed_rule
from fashionclf.evaluation.novelty import EMBEDDING_SCORE, check_novelty, embedding_score


def calibrated_probs(run: LoadedRun, logits: torch.Tensor) -> torch.Tensor:
    """Softmax of the logits over the run's temperature (1 for runs saved before calibration existed)."""
    cal = run.metrics.get("calibration") or {}
    return (logits.float() / cal.get("temperature", 1.0)).softmax(1)


def review_threshold(run: LoadedRun) -> float | None:
    """The run's confidence threshold for automatic labelling; None if it has none (everything needs review)."""
    cal = run.metrics.get("calibration") or {}
    return cal.get("threshold")


def rule_of(run: LoadedRun) -> dict | None:
    """The review rule that decides for this run: a ready model's own (fitted on photos), else the run's calibration."""
    return getattr(run, "review", None) or run.metrics.get("calibration")


def with_promise(run: LoadedRun, promise: Promise) -> LoadedRun:
    """The run with its review rule fitted again for another promise, on its own calibration items (the validation
    logits stored with it) and its own temperature: the same guarantee at another precision or confidence."""
    cal = run.metrics.get("calibration")
    if cal and cal.get("rule") == RULE and (cal.get("target_precision"), cal.get("delta")) == (promise.target, promise.delta):
        return run
    if getattr(run, "partners", None) or cal is None:
        why = "the ready model's rule was fitted on photos kept outside the package" if cal else "it has no calibration"
        raise RunError(f"{run.path}: its review rule cannot be fitted again for another promise ({why}); leave out the promise options")
    logits, labels = load_predictions(run.path, "val")
    conf, pred = calibrated_probs(run, logits).max(1)
    refit = {**cal, **guaranteed_rule(conf, pred == labels, promise.target, promise.delta)}  # its words too
    out = copy.copy(run)
    out.metrics = {**run.metrics, "calibration": refit}
    return out


def unknown_scores(run: LoadedRun, logits: torch.Tensor | None, probs: torch.Tensor, embedding=None) -> tuple[str, torch.Tensor] | None:
    """The run's "none of these" score per row (evaluation/unknown.py), named; None for runs saved without one.
    Without logits (an ONNX backend gives calibrated probabilities) it is the probability score, with its own
    threshold. embedding: the embedding scores of run_scores, for a run whose score is that one."""
    from fashionclf.evaluation.unknown import scores_for

    params = run.metrics.get("unknown")
    return scores_for(params, logits, probs, embedding) if params else None


def results_from_probs(
    run: LoadedRun, probs: torch.Tensor, top_k: int = 3, unknown: tuple[str, torch.Tensor] | None = None, unknown_params: dict | None = None
) -> list[dict]:
    """One result per row of calibrated probabilities: label, confidence, top-k, review flag, and whether the
    item belongs to none of the run's classes ("unknown": label None, top-k kept, always flagged for review).

    unknown: the run's (score name, scores) from unknown_scores; None computes it from the probabilities.
    unknown_params: the score's fitted parameters, if not the run's own (a ready model's, refitted on photos).
    A row that is not all finite numbers (a damaged model or calibration; load_run refuses those, so this is
    a second guard) gets confidence 0 and is flagged for review: a NaN never reaches a response or a file.
    """
    from fashionclf.evaluation.unknown import unknown_flags

    threshold = review_threshold(run)
    finite = torch.isfinite(probs).all(1)
    if unknown is None:
        unknown = unknown_scores(run, None, probs)
    name, scores = unknown or (None, None)
    probs = torch.where(finite[:, None], probs, torch.zeros_like(probs))
    k = min(top_k, probs.shape[1])
    conf, idx = probs.topk(k, dim=1)
    flags = unknown_flags(unknown_params or run.metrics.get("unknown"), run.classes, idx[:, 0], name, scores) & finite
    shown = [None] * len(probs) if scores is None else [v if math.isfinite(v) else None for v in scores.tolist()]
    out = []
    for c, i, ok, unk, score in zip(conf.tolist(), idx.tolist(), finite.tolist(), flags.tolist(), shown):
        out.append(
            {
                "label": None if unk else run.classes[i[0]],
                "index": i[0],
                "confidence": c[0],
                "top_k": [{"label": run.classes[j], "index": j, "confidence": p} for j, p in zip(i, c)],
                "needs_review": not ok or unk or threshold is None or c[0] < threshold,
                "unknown": unk,
                "unknown_score": score,
            }
        )
    return out


def predict_probs(run: LoadedRun, images_u8: np.ndarray | torch.Tensor, device: str = "cpu", backend=None) -> torch.Tensor:
    """Calibrated probabilities for model-ready uint8 images: (N, 28, 28) Fashion-MNIST style, or (N, 3, S, S)
    for image-folder runs.

    backend: None for the run's PyTorch model, or an object whose .probs(images) gives calibrated
    probabilities (export.OnnxModel).
    """
    return predict_scored(run, images_u8, device, backend)[0]


def predict_scored(
    run: LoadedRun, images_u8: np.ndarray | torch.Tensor, device: str = "cpu", backend=None
) -> tuple[torch.Tensor, tuple[str, torch.Tensor] | None]:
    """Calibrated probabilities (see predict_probs) and the run's "none of these" scores (unknown_scores)."""
    if backend is not None:
        probs = torch.from_numpy(backend.probs(images_u8))
        return probs, unknown_scores(run, None, probs)
    logits, raw, embedding = run_scores(run, torch.as_tensor(np.asarray(images_u8), dtype=torch.uint8), device)
    probs = calibrated_probs(run, logits)
    return probs, unknown_scores(run, raw, probs, embedding)


def run_scores(run: LoadedRun, x_u8: torch.Tensor, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """run_logits, and the embedding "none of these" scores (evaluation/novelty.py) where that is the run's score
    (else None): the network then runs up to its features once, and both the head and the distances take them."""
    params = run.metrics.get("unknown")
    if not params or params["score"] != EMBEDDING_SCORE or run.novelty is None:
        return (*run_logits(run, x_u8, device), None)
    if problem := check_novelty(run.novelty, finite=False):  # load_run refused non-finite values once
        raise RunError(f"{run.path / NOVELTY}: {problem}; {DAMAGED}")
    v = run.features(x_u8, device)
    logits, raw = head_view_logits(run.model.head, v, run.config.tta)
    return logits, raw, embedding_score(run.novelty, v, raw)


def run_logits(run: LoadedRun, x_u8: torch.Tensor, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's logits (LoadedRun.logits: its precision and TTA) and the raw logits its "none of these" score takes
    (None where it takes none: no score, or the probability score). Under TTA the same two passes give both."""
    from fashionclf.evaluation.unknown import PROBABILITY_SCORE

    params = run.metrics.get("unknown")
    if not params or params["score"] == PROBABILITY_SCORE:
        return run.logits(x_u8, device), None
    return run.logits(x_u8, device, raw=True)


def predict_arrays(run: LoadedRun, images_u8: np.ndarray | torch.Tensor, top_k: int = 3, device: str = "cpu", backend=None) -> list[dict]:
    """Results for model-ready uint8 images (see predict_probs)."""
    probs, unknown = predict_scored(run, images_u8, device, backend)
    return results_from_probs(run, probs, top_k, unknown)


def class_order(primary: LoadedRun, other: LoadedRun) -> torch.Tensor:
    """For each of `other`'s classes, its index among `primary`'s, matched by name ignoring case and punctuation
    ('t_shirt_top', the folder of an image-folder run, is 'T-shirt/top')."""
    from fashionclf.data.folders import norm_name

    names = {norm_name(c): i for i, c in enumerate(primary.classes)}
    order = [names.get(norm_name(c)) for c in other.classes]
    if len(other.classes) != len(primary.classes) or None in order or len(set(order)) != len(order):
        raise ValueError(
            f"--with {other.path}: its classes ({', '.join(other.classes)}) are not those of {primary.path} "
            f"({', '.join(primary.classes)}); runs asked together must have the same classes, named alike"
        )
    return torch.tensor(order)


def joint_results(
    runs: list[LoadedRun], probs: list[torch.Tensor], top_k: int = 3, unknown: list | None = None, review: dict | None = None
) -> list[dict]:
    """Results from several runs' calibrated probabilities (each in runs[0]'s class order), averaged.

    Each run's review threshold was fitted for that run alone, not for the average, so an item is
    flagged when the runs disagree on its label or when the average's confidence is below the
    strictest run's threshold (a run without a threshold flags everything, as it does alone).
    unknown: each run's (score name, scores) (unknown_scores; None: from its probabilities). An item is
    unknown when any run's score says so or the average's top class is a negative class; its
    unknown_score is the first run's.
    review: a rule fitted for the runs together ({"temperature", "threshold"}: a ready model's, fitted on photos,
    fashionclf/infer/ready.py); the average is recalibrated by it and an item is flagged when the runs disagree or its
    confidence is below its threshold, instead of the strictest single-run threshold.
    """
    from fashionclf.evaluation.unknown import unknown_flags

    unknown = unknown or [unknown_scores(r, None, p) for r, p in zip(runs, probs)]
    mean = torch.stack(probs).mean(0)
    if review:
        mean = joint_calibrated(mean, review["temperature"])
    params = [unknown_params(r, i, review) for i, r in enumerate(runs)]
    out = results_from_probs(runs[0], mean, top_k, unknown[0], params[0])
    for p, u in zip(params[1:], unknown[1:]):
        more = unknown_flags(p, runs[0].classes, mean.argmax(1), *(u or (None, None)))
        for row, flag in zip(out, more.tolist()):
            if flag and not row["unknown"] and row["confidence"] > 0:  # confidence 0: probabilities not finite
                row.update(label=None, unknown=True, needs_review=True)
    thresholds = [review_threshold(r) for r in runs]
    strict = None if None in thresholds else max(thresholds)
    if review:
        strict = review["threshold"]
    tops = torch.stack([p.argmax(1) for p in probs])
    agree = (tops == tops[0]).all(0) & (tops[0] == mean.argmax(1))
    finite = torch.isfinite(mean).all(1)
    for row, a, ok in zip(out, agree.tolist(), finite.tolist()):  # flagged alone (no finite probabilities) stays flagged
        alone = row["needs_review"] if not review else (row["unknown"] or not ok)
        row["needs_review"] = alone or strict is None or not a or row["confidence"] < strict
    return out


def unknown_params(run: LoadedRun, i: int, review: dict | None) -> dict | None:
    """Run i's "none of these" parameters; a review rule's `unknown_thresholds[i]` (fitted on photos) replaces the
    threshold of its score (None there: that run's score decides nothing)."""
    params = run.metrics.get("unknown")
    over = (review or {}).get("unknown_thresholds")
    if not params or over is None:
        return params
    return {**params, "thresholds": {} if over[i] is None else {params["score"]: over[i]}}


def joint_calibrated(mean: torch.Tensor, temperature: float) -> torch.Tensor:
    """Averaged probabilities recalibrated by a temperature fitted on them: softmax(log(mean) / T)."""
    return (mean.clamp_min(1e-12).log() / temperature).softmax(1)


def preprocess_file(
    source: str | Path | bytes, method: str = "grabcut", run: LoadedRun | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """What the run's model takes, from a file or its bytes: a Fashion-MNIST-style (28, 28) image, or (3, S, S)
    RGB for image-folder runs."""
    return convert_rgb(load_rgb(source, max_pixels, decode_side([run] if run is not None else [])), method, run)


def convert_rgb(rgb: np.ndarray, method: str = "grabcut", run: LoadedRun | None = None) -> np.ndarray:
    """A decoded (H, W, 3) photo as the run's model takes it (see preprocess_file)."""
    spec = run.meta.get("input", {}) if run is not None else {}
    if spec.get("kind") == "rgb-letterbox":
        from fashionclf.data.folders import letterbox

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
    run: LoadedRun,
    paths: list[Path],
    top_k: int = 3,
    batch_size: int = 64,
    save_preprocessed: str | Path | None = None,
    method: str = "grabcut",
    backend=None,
    also: list[LoadedRun] = (),
) -> Iterator[dict]:
    """One dict per path, in order: the prediction, or {'file', 'error'} for a file that cannot be used.

    also: more runs to ask (each converts the photo its own way: 28x28 cut-out or RGB letterbox); their
    calibrated probabilities are averaged with the run's (joint_results). Without it, a ready model's run asks
    its partners, with their review rule (LoadedRun.partners, LoadedRun.review). save_preprocessed keeps the run's own input.
    """
    runs = [run, *(also or run.partners)]
    side = decode_side(runs)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images: list[list[np.ndarray]] = []
        rows = []
        for p in chunk:
            try:
                images.append(convert_for_runs(runs, load_rgb(p, at_least=side), method))
            except ImageError as e:
                rows.append({"file": str(p), "error": str(e)})
                continue
            rows.append({"file": str(p)})
        preds = iter(predict_converted(runs, images, top_k, backend, review=None if also else run.review) if images else [])
        it = iter(images)
        for row in rows:
            if "error" in row:
                yield row
                continue
            per_run = next(it)
            if save_preprocessed is not None:
                _save_png(Path(save_preprocessed), Path(row["file"]), per_run[0])
            yield {**row, **next(preds)}


def decode_side(runs: list[LoadedRun]) -> int | None:
    """How large a photo must be decoded for these runs: twice the cut-out's working copy where every run takes 28x28
    scans (a larger JPEG may be decoded at 1/2-1/8 of its size, load_rgb's at_least; the working copy is then still
    area-averaged from at least twice its size: nearly the same pixels, though a weak model's label can still move,
    5 of 80 upscaled dev photos in docs/results/photo-speed.md), else None: full size, as photo runs' training
    images were decoded (their letterbox must see the same pixels in training and in use)."""
    from fashionclf.data.photos import DECODE_SIDE

    return None if any(r.meta.get("input", {}).get("kind") == "rgb-letterbox" for r in runs) else DECODE_SIDE


def convert_for_runs(runs: list[LoadedRun], rgb: np.ndarray, method: str = "grabcut") -> list[np.ndarray]:
    """A decoded photo as each run takes it; runs with the same kind of input share one conversion."""
    converted: dict[str, np.ndarray] = {}
    out = []
    for r in runs:
        key = repr(sorted(r.meta.get("input", {}).items()))
        if key not in converted:
            converted[key] = convert_rgb(rgb, method, r)
        out.append(converted[key])
    return out


def predict_converted(
    runs: list[LoadedRun], images: list[list[np.ndarray]], top_k: int = 3, backend=None, review: dict | None = None
) -> list[dict]:
    """Results for photos converted by convert_for_runs (one list per photo, one image per run): runs[0] alone, or
    all runs' calibrated probabilities averaged in runs[0]'s class order (joint_results, with review if given)."""
    if len(runs) > 1 and backend is not None:
        raise ValueError("several runs are asked with their PyTorch models only, not with an ONNX backend")
    first, unknown = predict_scored(runs[0], np.stack([im[0] for im in images]), backend=backend)
    if len(runs) == 1:
        return results_from_probs(runs[0], first, top_k, unknown)
    probs, unknowns = [first], [unknown]
    for i, r in enumerate(runs[1:], 1):
        p_other, u_other = predict_scored(r, np.stack([im[i] for im in images]))
        probs.append(torch.empty_like(p_other).index_copy_(1, class_order(runs[0], r), p_other))  # into runs[0]'s order
        unknowns.append(u_other)
    return joint_results(runs, probs, top_k, unknowns, review)


def _save_png(folder: Path, source: Path, img: np.ndarray) -> None:
    # The source's path, flattened, keeps names from different folders apart; its suffix stays, so x.jpg and
    # x.png beside it get x.jpg.png and x.png.png instead of one overwriting the other.
    name = "__".join(p for p in source.parts if p not in ("/", "..", ".")) + ".png"
    atomic_write_bytes(folder / name, png_bytes(img))


def load_labelled_photos(
    run: LoadedRun, folder: str | Path, method: str = "grabcut", class_map: dict[str, str | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Photos from class subfolders, preprocessed for the run, with labels in the run's class order.

    Folder names match class names ignoring case and punctuation ('tshirt_top' is 'T-shirt/top');
    class_map renames folders first (see parse_class_map), None there leaving a folder out.
    Returns images, labels and one message per file left out because it could not be read.
    """
    from fashionclf.data.folders import load_converted_photos

    x, y, skipped, _ = load_converted_photos(folder, run.classes, lambda p: preprocess_file(p, method, run), class_map)
    return x, y, skipped
