"""Train-evaluate-save for one run, and the seed study (`compare`) as many runs.

Test-set figures are computed once, after training has chosen its weights on the
validation split, and stored with the run (metrics.json and the test logits),
so reports derive everything from stored outputs without re-running models.

A training claims its run folder (a lock) and keeps the checkpoint of its last
epoch there, so a killed one continues with `resume=True` (`train --resume DIR`)
to the weights an uninterrupted one would have reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from fashionclf.core.config import TrainConfig, config_from_dict, config_to_dict
from fashionclf.core.io import to_json
from fashionclf.data.fashion_mnist import FashionMNIST
from fashionclf.engine import distributed
from fashionclf.engine.checkpoint import CHECKPOINT, CheckpointError, read_state
from fashionclf.engine.device import inference_precision
from fashionclf.engine.inference import infer, measure_inference
from fashionclf.engine.runs import (
    METRICS,
    METRICS_FIELDS,
    RunError,
    check_metadata,
    check_writable,
    claim,
    save_run,
)
from fashionclf.evaluation.calibrate import calibrate, calibration_report, crossfit_review
from fashionclf.evaluation.metrics import classification_report
from fashionclf.evaluation.unknown import fit_unknown
from fashionclf.evaluation.unknown import known_share as unknown_known_share
from fashionclf.training.base import Job, Trainer
from fashionclf.training.loop import fit


class Supervised(Trainer):
    """The loop (loop.py) on labelled data, then the run scored and saved: what every other trainer ends with."""

    kind = "supervised"

    def train(self, cfg: TrainConfig, data: FashionMNIST, job: Job) -> dict:
        """Fit cfg on data, score it on the test set, write job.out; return its metrics.

        job.out is claimed (locked) before training and holds the checkpoint of the last finished epoch until the
        run replaces it; job.resume continues from that checkpoint (the same config and data, else a RunError).
        How the data were loaded (`data.load_options`, set by fashionclf.api.load_data) is recorded with it, so
        `train --resume` can load them again."""
        out = job.out
        # Rank 0 holds the folder; the other ranks of a torchrun job only read the checkpoint to resume.
        held = claim(out, job.overwrite, job.resume) if distributed.is_main() else contextlib.nullcontext(out / CHECKPOINT)
        with held as checkpoint:
            if distributed.is_main():  # announced once the folder is held: a refused training says nothing first
                job.callbacks.on_run_start(cfg, out)
            same = {**data_info(data), "source": None, "sha256": data_digest(data)}  # what a resumed run must train on again
            if job.resume:
                check_resumable(checkpoint, cfg, same)
            extra = {"data": same, "data_options": getattr(data, "load_options", None)}
            xy = (data.train_x, data.train_y, data.val_x, data.val_y)
            res = fit(cfg, *xy, len(data.classes), job.callbacks, checkpoint=checkpoint, resume=job.resume, checkpoint_extra=extra)
            if not distributed.is_main():  # the other ranks of a torchrun job only helped train; rank 0 scores and saves
                return {}
            return score_and_save(cfg, data, res, job)


def train_and_save(cfg: TrainConfig, data: FashionMNIST, out: str | Path, **job) -> dict:
    """Supervised training of cfg on data into out; job: the other fields of a `Job` (overwrite, resume, callbacks,
    unknown_share, promise, meta). Returns the run's metrics."""
    return Supervised().train(cfg, data, Job(Path(out), **job))


def data_digest(data: FashionMNIST) -> str:
    """SHA-256 of the training images and labels as trained on (a resumed run must see the same)."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.val_x, data.val_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def check_resumable(checkpoint: Path, cfg: TrainConfig, data: dict) -> None:
    """The checkpoint is of this config and these data; a CheckpointError saying which differs otherwise."""
    state = read_state(checkpoint)
    then, now = state["config"], json.loads(to_json(config_to_dict(cfg)))
    if then != now:
        diff = sorted(k for k in now if then.get(k) != now[k])
        raise CheckpointError(f"{checkpoint} is of another configuration ({', '.join(diff)} differ); resume it with its own")
    if state["extra"].get("data") != data:
        raise CheckpointError(f"{checkpoint} was trained on other data (images, labels or split differ); resume it on the same data")


def resume_plan(out: str | Path) -> tuple[TrainConfig, dict | None]:
    """The config a run folder's checkpoint trains, and how its data were loaded (None: given from Python)."""
    check_writable(out, resume=True)
    state = read_state(Path(out) / CHECKPOINT)
    try:
        cfg = config_from_dict(state["config"], strict=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{Path(out) / CHECKPOINT}: its config cannot be used ({e})") from None
    return cfg, state["extra"].get("data_options")


def usable_calibration(calibration: dict | None, key: str = "calibration") -> dict | None:
    """The calibration as fitted, or None (every item reviewed) where it could not be fitted (NaN logits)."""
    try:
        check_metadata(Path(METRICS), json.loads(to_json({key: calibration})), METRICS_FIELDS)
    except RunError:
        return None
    return calibration


def usable_unknown(unknown: dict | None) -> dict | None:
    """The "none of these" record as fitted, or None (nothing said unknown) where it could not be (NaN logits)."""
    return usable_calibration(unknown, "unknown")


def score_and_save(
    cfg: TrainConfig,
    data: FashionMNIST,
    res,
    job: Job,
    scored: tuple | None = None,
    calibration_items: tuple | None = None,
    files=None,
    embedding=None,
) -> dict:
    """Score a fitted model (res: loop.FitResult) on validation and test, fit its review and unknown rules, write
    job.out (already claimed by the caller).
    scored: ((val logits, raw), (test logits, raw)) where they were computed without the images (a head on stored
    embeddings, training/embedded.py); inference speed is then not measured here. calibration_items: (logits, raw,
    labels) the temperature, review rule and unknown rule are fitted on, where more than validation (the default).
    files: more files of the run folder (save_run's). embedding: (validation, test) scores of the embedding "none of
    these" score (evaluation/novelty.py), which the run then uses, its threshold fitted on validation alone."""
    promise, (inf, speed) = job.promise, (None, None)
    if scored is None:
        scored, inf, speed = _infer_splits(cfg, data, res)
    (val_logits, val_raw), (test_logits, test_raw) = scored
    val_rep = classification_report(val_logits, data.val_y, data.classes)
    cal_logits, cal_raw, cal_y = calibration_items or (val_logits, val_raw, data.val_y)
    test_rep = classification_report(test_logits, data.test_y, data.classes)
    # Temperature and the guaranteed review rule from the validation split; the test set only reports what they do.
    calibration = usable_calibration(calibrate(cal_logits, cal_y, promise.target, promise.delta)) if len(cal_y) else None
    temperature = (calibration or {}).get("temperature", 1.0)
    emb_val, emb_test = embedding or (None, None)
    unknown = fit_unknown(
        cal_logits if len(cal_y) else None, temperature, list(data.classes), job.unknown_share, raw=cal_raw, embedding=emb_val
    )
    metrics = {
        "model": cfg.model,
        "seed": cfg.seed,
        "test_accuracy": test_rep["accuracy"],
        "test_loss": test_rep["loss"],
        "val_accuracy": val_rep["accuracy"],
        "val_loss": val_rep["loss"],
        "train_seconds": res.train_seconds,
        "seconds_per_epoch": res.train_seconds / len(res.history),
        "params": res.params,
        "epochs_run": len(res.history),
        "best_epoch": res.best_epoch,
        "device": res.device,
        "precision": res.precision,
        "world_size": res.world_size,  # processes that trained it (torchrun); 1 for a plain run
        # how precision and channels_last were chosen (timed under --precision auto), with the timings and CPU flags
        "precision_choice": {"train": res.precision_choice, "infer": inf and inf.record()},
        "infer_images_per_s": speed,
        "test_per_class": test_rep["per_class"],
        "test_confusion_matrix": test_rep["confusion_matrix"],
        "calibration": calibration,
        "unknown": usable_unknown(unknown),
        **crossfit_review(cal_logits, cal_y, promise.target, delta=promise.delta),  # the rule on items it was not fitted on
    }
    if calibration is not None:
        metrics["test_calibration"] = calibration_report(test_logits, data.test_y, calibration)
    if metrics["unknown"] is not None and len(data.test_y):  # about unknown_share on new photos of the classes
        metrics["test_unknown"] = {"known_share": unknown_known_share(metrics["unknown"], test_logits, temperature, test_raw, emb_test)}
    predictions = {"logits": test_logits, "labels": data.test_y, "val_logits": cal_logits, "val_labels": cal_y}
    shape, extra_meta = tuple(data.train_x.shape[1:]), job.meta
    if len(shape) == 3:  # image-folder data: (3, S, S) RGB; Fashion-MNIST keeps save_run's 28x28 gray default
        extra_meta = {"input": {"channels": shape[0], "height": shape[1], "width": shape[2], "kind": "rgb-letterbox"}, **extra_meta}
    save_run(
        job.out,
        res.model,
        cfg,
        metrics,
        res.history,
        data.classes,
        data_info(data),
        overwrite=job.overwrite,
        predictions=predictions,
        extra_meta=extra_meta or None,
        claimed=True,
        files=files,
    )
    return metrics


def _infer_splits(cfg: TrainConfig, data: FashionMNIST, res) -> tuple[list, object, float]:
    """((val logits, raw), (test logits, raw)) of the fitted network, its measured inference precision and speed.
    raw: the logits the "none of these" score takes (under TTA the views' mean), from the same passes."""
    device = torch.device(res.device)
    inf = inference_precision(cfg.precision, device, res.model, data.test_x, channels_last=cfg.channels_last, name=cfg.model)
    amp, cl = inf.dtype, inf.channels_last
    scored = [infer(res.model, x, device=device, amp_dtype=amp, channels_last=cl, tta=cfg.tta, raw=True) for x in (data.val_x, data.test_x)]
    return scored, inf, measure_inference(res.model, data.test_x, device, amp, cl, cfg.tta)


def data_info(data: FashionMNIST) -> dict:
    """What meta.json records of the data a run saw; compare() resumes only on the same data."""
    return {
        "source": data.source,
        "checksums": data.checksums,
        "train": len(data.train_x),
        "val": len(data.val_x),
        "test": len(data.test_x),
        "split_seed": data.split_seed,
    }
