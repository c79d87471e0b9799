"""Train-evaluate-save for one run, and the seed study (`compare`) as many runs.

Test-set figures are computed once, after training has chosen its weights on the
validation split, and stored with the run (metrics.json and the test logits),
so reports derive everything from stored outputs without re-running models.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from fashionclf.config import TrainConfig, config_to_dict
from fashionclf.data.fashion_mnist import DataError, FashionMNIST
from fashionclf.engine import distributed
from fashionclf.engine.device import resolve_precision
from fashionclf.engine.inference import infer, measure_inference
from fashionclf.engine.loop import fit
from fashionclf.evaluation.calibrate import calibrate, calibration_report
from fashionclf.evaluation.metrics import classification_report
from fashionclf.io import atomic_write_text, to_json
from fashionclf.runs import PREDICTIONS, Run, RunError, check_writable, load_run, save_run


def train_and_save(
    cfg: TrainConfig,
    data: FashionMNIST,
    out: str | Path,
    overwrite: bool = False,
    on_epoch: Callable | None = None,
    on_batch_factory: Callable | None = None,
    extra_meta: dict | None = None,
) -> dict:
    """Fit cfg on data, score it on the test set, write the run folder; return its metrics."""
    check_writable(out, overwrite)  # before training, not after ten minutes of it
    res = fit(cfg, data.train_x, data.train_y, data.val_x, data.val_y, len(data.classes), on_epoch, on_batch_factory)
    if not distributed.is_main():  # the other ranks of a torchrun job only helped train; rank 0 scores and saves
        return {}
    device = torch.device(res.device)
    amp = resolve_precision(cfg.precision, device)
    val_logits = infer(res.model, data.val_x, device=device, amp_dtype=amp, channels_last=cfg.channels_last, tta=cfg.tta)
    test_logits = infer(res.model, data.test_x, device=device, amp_dtype=amp, channels_last=cfg.channels_last, tta=cfg.tta)
    val_rep = classification_report(val_logits, data.val_y, data.classes)
    test_rep = classification_report(test_logits, data.test_y, data.classes)
    # Temperature and review threshold from the validation split; the test set only reports what they do.
    calibration = calibrate(val_logits, data.val_y) if len(data.val_y) else None
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
        "infer_images_per_s": measure_inference(res.model, data.test_x, device, amp, cfg.channels_last, cfg.tta),
        "test_per_class": test_rep["per_class"],
        "test_confusion_matrix": test_rep["confusion_matrix"],
        "calibration": calibration,
    }
    if calibration is not None:
        metrics["test_calibration"] = calibration_report(test_logits, data.test_y, calibration)
    predictions = {"logits": test_logits, "labels": data.test_y}
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
    logits = run.logits(x_u8, device)
    report = classification_report(logits, y, run.classes)
    if run.metrics.get("calibration"):  # runs saved before calibration existed have none
        report.update(calibration_report(logits, y, run.metrics["calibration"]))
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


RESULT_KEYS = (
    "model",
    "seed",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "train_seconds",
    "seconds_per_epoch",
    "params",
    "epochs_run",
    "best_epoch",
    "precision",
    "device",
    "infer_images_per_s",
)


def run_label(cfg: TrainConfig) -> str:
    """A config's name in reports and run folders: the model, and its resolution where it is not 28 px."""
    return cfg.model if cfg.resolution == 28 else f"{cfg.model}@{cfg.resolution}px"


def compare(
    configs: list[TrainConfig],
    data: FashionMNIST,
    out: str | Path,
    overwrite: bool = False,
    on_run_start: Callable[[TrainConfig, Path], None] | None = None,
    on_epoch: Callable | None = None,
    on_batch_factory: Callable | None = None,
    robustness_images: int = 0,
) -> dict:
    """Train every config into out/runs/<label>-s<seed>; write out/results.json after each run.

    A finished run with the same config and data is reused, so an interrupted study resumes;
    overwrite=True retrains every run, each old run replaced only once its new one is complete.
    """
    out = Path(out)
    runs = []
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
        else:
            if on_run_start:
                on_run_start(cfg, run_dir)
            metrics = train_and_save(cfg, data, run_dir, overwrite=run_dir.exists(), on_epoch=on_epoch, on_batch_factory=on_batch_factory)
        row = {**{k: metrics.get(k) for k in RESULT_KEYS}, "name": run_label(cfg), "resolution": cfg.resolution}
        if robustness_images:
            row["robustness"] = run_robustness(run_dir, data, robustness_images)["mean"]
        runs.append({**row, "run_dir": str(run_dir.relative_to(out))})
        atomic_write_text(out / "results.json", to_json({"runs": runs}))
    return {"runs": runs}


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
