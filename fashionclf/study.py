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
from collections.abc import Callable
from pathlib import Path

import torch

from fashionclf.config import TrainConfig, config_from_dict, config_to_dict
from fashionclf.data.fashion_mnist import DataError, FashionMNIST
from fashionclf.engine import distributed
from fashionclf.engine.callbacks import NONE, Callbacks
from fashionclf.engine.checkpoint import CHECKPOINT, CheckpointError, read_state
from fashionclf.engine.device import inference_precision, resolve_precision
from fashionclf.engine.inference import infer, measure_inference
from fashionclf.engine.loop import fit
from fashionclf.evaluation.calibrate import Promise, calibrate, calibration_report, crossfit_review, promise
from fashionclf.evaluation.metrics import classification_report
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE, fit_unknown
from fashionclf.evaluation.unknown import known_share as unknown_known_share
from fashionclf.io import atomic_write_text, to_json
from fashionclf.runs import METRICS, METRICS_FIELDS, PREDICTIONS, Run, RunError, check_metadata, check_writable, claim, load_run, save_run


def train_and_save(
    cfg: TrainConfig,
    data: FashionMNIST,
    out: str | Path,
    overwrite: bool = False,
    callbacks: Callbacks = NONE,
    extra_meta: dict | None = None,
    resume: bool = False,
    unknown_share: float = DEFAULT_KNOWN_SHARE,
    promise: Promise = Promise(),
) -> dict:
    """Fit cfg on data, score it on the test set, write the run folder; return its metrics.

    `out` is claimed (locked) before training and holds the checkpoint of the last finished epoch until the
    run replaces it; resume=True continues from that checkpoint (the same config and data, else a RunError).
    How the data were loaded (`data.load_options`, set by fashionclf.api.load_data) is recorded with it, so
    `train --resume` can load them again. unknown_share: the share of validation images the "none of these"
    score counts known (evaluation/unknown.py); promise: the precision and confidence the review rule guarantees.
    """
    # Rank 0 holds the folder; the other ranks of a torchrun job only read the checkpoint to resume.
    held = claim(out, overwrite, resume) if distributed.is_main() else contextlib.nullcontext(Path(out) / CHECKPOINT)
    with held as checkpoint:
        if distributed.is_main():  # announced once the folder is held: a refused training says nothing first
            callbacks.on_run_start(cfg, Path(out))
        same = {**data_info(data), "source": None, "sha256": data_digest(data)}  # what a resumed run must train on again
        if resume:
            check_resumable(checkpoint, cfg, same)
        extra = {"data": same, "data_options": getattr(data, "load_options", None)}
        xy = (data.train_x, data.train_y, data.val_x, data.val_y)
        res = fit(cfg, *xy, len(data.classes), callbacks, checkpoint=checkpoint, resume=resume, checkpoint_extra=extra)
        if not distributed.is_main():  # the other ranks of a torchrun job only helped train; rank 0 scores and saves
            return {}
        return _score_and_save(cfg, data, out, res, overwrite, extra_meta, unknown_share, promise)


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


def _score_and_save(
    cfg: TrainConfig, data: FashionMNIST, out, res, overwrite: bool, extra_meta: dict | None, unknown_share: float, promise: Promise
) -> dict:
    device = torch.device(res.device)
    inf = inference_precision(cfg.precision, device, res.model, data.test_x, channels_last=cfg.channels_last, name=cfg.model)
    amp, cl = inf.dtype, inf.channels_last
    # raw: the logits the "none of these" score takes (under TTA the views' mean), from the same passes
    (val_logits, val_raw), (test_logits, test_raw) = (
        infer(res.model, x, device=device, amp_dtype=amp, channels_last=cl, tta=cfg.tta, raw=True) for x in (data.val_x, data.test_x)
    )
    val_rep = classification_report(val_logits, data.val_y, data.classes)
    test_rep = classification_report(test_logits, data.test_y, data.classes)
    # Temperature and the guaranteed review rule from the validation split; the test set only reports what they do.
    calibration = usable_calibration(calibrate(val_logits, data.val_y, promise.target, promise.delta)) if len(data.val_y) else None
    temperature = (calibration or {}).get("temperature", 1.0)
    unknown = fit_unknown(val_logits if len(data.val_y) else None, temperature, list(data.classes), unknown_share, raw=val_raw)
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
        "precision_choice": {"train": res.precision_choice, "infer": inf.record()},
        "infer_images_per_s": measure_inference(res.model, data.test_x, device, amp, cl, cfg.tta),
        "test_per_class": test_rep["per_class"],
        "test_confusion_matrix": test_rep["confusion_matrix"],
        "calibration": calibration,
        "unknown": usable_unknown(unknown),
        **crossfit_review(val_logits, data.val_y, promise.target, delta=promise.delta),  # the rule on items it was not fitted on
    }
    if calibration is not None:
        metrics["test_calibration"] = calibration_report(test_logits, data.test_y, calibration)
    if metrics["unknown"] is not None and len(data.test_y):  # about unknown_share on new photos of the classes
        metrics["test_unknown"] = {"known_share": unknown_known_share(metrics["unknown"], test_logits, temperature, test_raw)}
    predictions = {"logits": test_logits, "labels": data.test_y, "val_logits": val_logits, "val_labels": data.val_y}
    shape = tuple(data.train_x.shape[1:])
    if len(shape) == 3:  # image-folder data: (3, S, S) RGB; Fashion-MNIST keeps save_run's 28x28 gray default
        extra_meta = {"input": {"channels": shape[0], "height": shape[1], "width": shape[2], "kind": "rgb-letterbox"}, **(extra_meta or {})}
    save_run(
        out,
        res.model,
        cfg,
        metrics,
        res.history,
        data.classes,
        data_info(data),
        overwrite=overwrite,
        predictions=predictions,
        extra_meta=extra_meta,
        claimed=True,
    )
    return metrics


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


# The seed study's ladder, in order: dense -> CNN -> regularised CNN -> augmented deeper CNN.
DEFAULT_MODELS = ("mlp", "simple_cnn", "tuned_cnn", "advanced_cnn")


def evaluate_run(run: Run, x_u8: torch.Tensor, y: torch.Tensor, device: str = "cpu") -> dict:
    """The full classification report of a loaded run on a labelled set."""
    if len(y) == 0:
        raise DataError("the evaluation set holds no images")
    if int(y.max()) >= len(run.classes):
        raise DataError(f"label {int(y.max())} in the evaluation set, but the run knows {len(run.classes)} classes")
    from fashionclf.predict import run_logits

    logits, raw = run_logits(run, x_u8, device)
    report = classification_report(logits, y, run.classes)
    calibration = run.metrics.get("calibration")
    if calibration:  # runs saved before calibration existed have none
        report.update(calibration_report(logits, y, calibration))
    report["promise"] = promise(calibration)
    if run.metrics.get("unknown"):  # the share the "none of these" score counts known (about its known_share)
        report["unknown_known_share"] = unknown_known_share(
            run.metrics["unknown"], logits, (calibration or {}).get("temperature", 1.0), raw
        )
    return report


def robustness(run: Run, x_u8: torch.Tensor, y: torch.Tensor, names=None, seed: int = 0, device: str = "cpu") -> dict:
    """Accuracy of a run on clean images and under each corruption of the suite at severities 1-5.

    'mean' is the mean accuracy over every corruption and severity (Fashion-MNIST-C style).
    """
    from fashionclf.data.corrupt import CORRUPTIONS, SEVERITIES, corrupt

    names = list(names or CORRUPTIONS)

    def accuracy(x):
        return (run.logits(x, device).argmax(1) == y).float().mean().item()

    table = {n: [accuracy(corrupt(x_u8, n, s, seed)) for s in SEVERITIES] for n in names}
    return {
        "clean": accuracy(x_u8),
        "severities": list(SEVERITIES),
        "corruptions": table,
        "mean": sum(map(sum, table.values())) / (len(table) * len(SEVERITIES)),
        "images": len(y),
        "seed": seed,
    }


ROBUSTNESS = "robustness.json"
DEFAULT_ROBUSTNESS_IMAGES = 1000  # compare's default: validation images the corruption suite scores each run on


def run_robustness(run_dir: Path, data: FashionMNIST, n: int) -> dict:
    """The corruption suite on the first n validation images (validation: the figure may choose a model), cached in the run."""
    path = Path(run_dir) / ROBUSTNESS
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("images") == min(n, len(data.val_y)) and done.get("split") == "validation":
            return done
    rep = {**robustness(load_run(run_dir), data.val_x[:n], data.val_y[:n]), "split": "validation"}
    atomic_write_text(path, to_json(rep))
    return rep


RESULT_KEYS = tuple(  # what results.json keeps of each run's metrics.json
    "model seed test_accuracy test_loss val_accuracy val_loss train_seconds seconds_per_epoch params epochs_run best_epoch "
    "precision device infer_images_per_s val_auto_share val_auto_precision".split()
)


def run_label(cfg: TrainConfig) -> str:
    """A config's name in reports and run folders: the model, and its resolution where it is not 28 px."""
    return cfg.model if cfg.resolution == 28 else f"{cfg.model}@{cfg.resolution}px"


def compare(
    configs: list[TrainConfig],
    data: FashionMNIST,
    out: str | Path,
    overwrite: bool = False,
    callbacks: Callbacks = NONE,
    robustness_images: int | None = 0,
    photos: str | Path | None = None,
    class_map: dict[str, str | None] | None = None,
    choose_by: str = "accuracy",
) -> dict:
    """Train every config into out/runs/<label>-s<seed>; write out/results.json after each run (with `choose_by`, the
    report's recommendation rule: reports/choose.py).

    A finished run with the same config and data is reused (an interrupted study resumes); overwrite=True retrains
    every run, each old run replaced only once its new one is complete. robustness_images: the corruption suite's
    mean on that many validation images per run (row 'robustness'; None: 1,000 on 28x28 data). photos: a folder of labelled photos (class
    subfolders, renamed by class_map), checked before anything trains, scoring every run (row 'photo_accuracy').
    """
    out = Path(out)
    if robustness_images is None:  # the default: the suite wherever it applies (28x28 grayscale images)
        robustness_images = DEFAULT_ROBUSTNESS_IMAGES if data.val_x.dim() == 3 else 0
    if robustness_images < 0 or (robustness_images and data.val_x.dim() != 3):
        raise DataError(f"robustness {robustness_images}: expected 0 (off) or a number of 28x28 grayscale validation images (--data: 0)")
    score_photos = PhotoScorer(photos, data.classes, class_map) if photos is not None else None
    runs, head = [], {}
    for cfg in configs:
        run_dir = out / "runs" / f"{run_label(cfg).replace('@', '-')}-s{cfg.seed}"
        if not overwrite and (run_dir / PREDICTIONS).exists():
            done = load_run(run_dir)
            # Through config_from_dict, a run saved before a new config field existed reads with its default.
            # The same files found in another folder are the same data: compare checksums and sizes, not the path.
            now = json.loads(to_json({"config": config_to_dict(cfg), "data": {**data_info(data), "source": None}}))
            then = json.loads(to_json({"config": config_to_dict(done.config), "data": {**done.meta.get("data", {}), "source": None}}))
            if then != now:
                raise RunError(
                    f"{run_dir} holds a finished run with another configuration or other data; "
                    "use another --out, or --overwrite to train everything again"
                )
            metrics = done.metrics
            if "val_auto_share" not in metrics and len(data.val_y):  # saved before the review rule was cross-fitted
                from fashionclf.predict import run_logits

                metrics = {**metrics, **crossfit_review(run_logits(done, data.val_x)[0], data.val_y)}
        else:
            resume = not overwrite and _resumable(run_dir, cfg, data)  # a run killed mid-training continues
            overwrite_dir = run_dir.exists() and not resume
            metrics = train_and_save(cfg, data, run_dir, overwrite_dir, callbacks, resume=resume)
        row = {**{k: metrics.get(k) for k in RESULT_KEYS}, "name": run_label(cfg), "resolution": cfg.resolution}
        if robustness_images:
            row["robustness"] = run_robustness(run_dir, data, robustness_images)["mean"]
        if score_photos is not None:
            row["photo_accuracy"] = score_photos(run_dir)
        runs.append({**row, "run_dir": str(run_dir.relative_to(out))})
        head = {"photos": score_photos.record()} if score_photos is not None else {}
        head["choose_by"] = choose_by
        atomic_write_text(out / "results.json", to_json({**head, "runs": runs}))
    return {**head, "runs": runs}


class PhotoScorer:
    """Accuracy of runs on labelled photos converted as `predict` converts them (Run.evaluate(data=FOLDER)), once per
    kind of model input. A missing folder or a class map matching no class of the data fails when it is made."""

    def __init__(self, folder: str | Path, classes, class_map: dict[str, str | None] | None = None, method: str = "grabcut"):
        from fashionclf.data.folders import mapped_items

        self.folder, self.class_map, self.method = Path(folder), class_map, method
        self.files, self.converted, self.left_out = len(mapped_items(self.folder, classes, class_map)), {}, []

    def __call__(self, run_dir: Path) -> float:
        from fashionclf.predict import load_labelled_photos

        run = load_run(run_dir)
        key = to_json([run.meta.get("input"), list(run.classes)])
        if key not in self.converted:
            self.converted[key] = load_labelled_photos(run, self.folder, self.method, self.class_map)
        x, y, self.left_out = self.converted[key]
        return evaluate_run(run, x, y)["accuracy"]

    def record(self) -> dict:
        """What results.json keeps of the photos: the folder, the map, and the files scored and left out (unreadable)."""
        n = self.files - len(self.left_out)
        return {"folder": str(self.folder), "class_map": self.class_map, "images": n, "left_out": self.left_out}


def _resumable(run_dir: Path, cfg: TrainConfig, data: FashionMNIST) -> bool:
    try:
        check_resumable(run_dir / CHECKPOINT, cfg, {**data_info(data), "source": None, "sha256": data_digest(data)})
    except (CheckpointError, KeyError, TypeError):
        return False
    return True


RESOLUTIONS = (7, 14, 21, 28)


def resolution_configs(model: str, sizes=RESOLUTIONS, seeds: int = 1, **overrides) -> list[TrainConfig]:
    """The same model and recipe at each resolution (images downsampled, then upsampled back to 28)."""
    from fashionclf.recipes import resolve_config

    return [resolve_config(model, None, seed=s, resolution=px, **overrides) for px in sizes for s in range(seeds)]


def out_of_fold_probs(
    cfg: TrainConfig, x_u8: torch.Tensor, y: torch.Tensor, folds: int = 5, on_fold: Callable | None = None
) -> torch.Tensor:
    """Probabilities for every item from a model that never trained on it (k-fold, stratified by position).

    Each fold's model trains on the other folds with cfg (no validation split: the schedule runs to its end).
    """
    if folds < 2:
        raise ValueError("--folds must be at least 2")
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(len(y), generator=g)
    probs = torch.zeros(len(y), int(y.max()) + 1)
    for f in range(folds):
        held = perm[f::folds]
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        if on_fold:
            on_fold(f, folds)
        res = fit(cfg, x_u8[keep], y[keep], x_u8[held][:0], y[held][:0], int(y.max()) + 1)
        device = torch.device(res.device)
        logits = infer(res.model, x_u8[held], device=device, amp_dtype=resolve_precision(cfg.precision, device), tta=cfg.tta)
        probs[held] = logits.softmax(1)
    return probs
