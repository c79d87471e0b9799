"""The seed study (`compare`) as many runs, their corruption scores, and the cross-fitted probabilities
behind label issues: studies built from runs that training/supervised.py trains and saves."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from fashionclf.core.config import TrainConfig, config_to_dict
from fashionclf.core.io import atomic_write_text, to_json
from fashionclf.data.fashion_mnist import DataError, FashionMNIST
from fashionclf.engine.checkpoint import CHECKPOINT, CheckpointError
from fashionclf.engine.device import resolve_precision
from fashionclf.engine.inference import infer
from fashionclf.engine.runs import (
    PREDICTIONS,
    LoadedRun,
    RunError,
    load_run,
)
from fashionclf.evaluation.calibrate import calibration_report, crossfit_review, promise
from fashionclf.evaluation.metrics import classification_report
from fashionclf.evaluation.unknown import known_share as unknown_known_share
from fashionclf.training.callbacks import NONE, Callbacks
from fashionclf.training.loop import fit
from fashionclf.training.supervised import check_resumable, data_digest, data_info, train_and_save

# The seed study's ladder, in order: dense -> CNN -> regularised CNN -> augmented deeper CNN.
DEFAULT_MODELS = ("mlp", "simple_cnn", "tuned_cnn", "advanced_cnn")


def evaluate_run(run: LoadedRun, x_u8: torch.Tensor, y: torch.Tensor, device: str = "cpu") -> dict:
    """The full classification report of a loaded run on a labelled set."""
    if len(y) == 0:
        raise DataError("the evaluation set holds no images")
    if int(y.max()) >= len(run.classes):
        raise DataError(f"label {int(y.max())} in the evaluation set, but the run knows {len(run.classes)} classes")
    from fashionclf.infer.predict import run_scores

    logits, raw, embedding = run_scores(run, x_u8, device)
    report = classification_report(logits, y, run.classes)
    calibration = run.metrics.get("calibration")
    if calibration:  # runs saved before calibration existed have none
        report.update(calibration_report(logits, y, calibration))
    report["promise"] = promise(calibration)
    if run.metrics.get("unknown"):  # the share the "none of these" score counts known (about its known_share)
        report["unknown_known_share"] = unknown_known_share(
            run.metrics["unknown"], logits, (calibration or {}).get("temperature", 1.0), raw, embedding
        )
    return report


def robustness(run: LoadedRun, x_u8: torch.Tensor, y: torch.Tensor, names=None, seed: int = 0, device: str = "cpu") -> dict:
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


def run_folder(out: str | Path, cfg: TrainConfig) -> Path:
    """Where a study in `out` trains cfg: out/runs/<label>-s<seed>."""
    return Path(out) / "runs" / f"{run_label(cfg).replace('@', '-')}-s{cfg.seed}"


def finished(out: str | Path, cfg: TrainConfig) -> bool:
    """Whether a study in `out` holds a finished run for cfg's folder (reused unless overwritten)."""
    return (run_folder(out, cfg) / PREDICTIONS).exists()


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
    study: dict | None = None,
) -> dict:
    """Train every config into out/runs/<label>-s<seed>; write out/results.json after each run (with `choose_by`, the
    report's recommendation rule: reports/choose.py).

    A finished run with the same config and data is reused (an interrupted study resumes); overwrite=True retrains
    every run, each old run replaced only once its new one is complete. robustness_images: the corruption suite's
    mean on that many validation images per run (row 'robustness'; None: 1,000 on 28x28 data). photos: a folder of labelled photos (class
    subfolders, renamed by class_map), checked before anything trains, scoring every run (row 'photo_accuracy').
    study: what kind of study this is, kept in results.json for the report (the quick one: {"kind": "quick", ...}).
    """
    out = Path(out)
    if robustness_images is None:  # the default: the suite wherever it applies (28x28 grayscale images)
        robustness_images = DEFAULT_ROBUSTNESS_IMAGES if data.val_x.dim() == 3 else 0
    if robustness_images < 0 or (robustness_images and data.val_x.dim() != 3):
        raise DataError(f"robustness {robustness_images}: expected 0 (off) or a number of 28x28 grayscale validation images (--data: 0)")
    score_photos = PhotoScorer(photos, data.classes, class_map) if photos is not None else None
    runs, head = [], {}
    for cfg in configs:
        run_dir = run_folder(out, cfg)
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
                from fashionclf.infer.predict import run_logits

                metrics = {**metrics, **crossfit_review(run_logits(done, data.val_x)[0], data.val_y)}
        else:
            resume = not overwrite and _resumable(run_dir, cfg, data)  # a run killed mid-training continues
            overwrite_dir = run_dir.exists() and not resume
            metrics = train_and_save(cfg, data, run_dir, overwrite=overwrite_dir, callbacks=callbacks, resume=resume)
        row = {**{k: metrics.get(k) for k in RESULT_KEYS}, "name": run_label(cfg), "resolution": cfg.resolution}
        if robustness_images:
            row["robustness"] = run_robustness(run_dir, data, robustness_images)["mean"]
        if score_photos is not None:
            row["photo_accuracy"] = score_photos(run_dir)
        runs.append({**row, "run_dir": str(run_dir.relative_to(out))})
        head = {"photos": score_photos.record()} if score_photos is not None else {}
        head["choose_by"] = choose_by
        head |= {"study": study} if study else {}
        atomic_write_text(out / "results.json", to_json({**head, "runs": runs}))
    return {**head, "runs": runs}


class PhotoScorer:
    """Accuracy of runs on labelled photos converted as `predict` converts them (LoadedRun.evaluate(data=FOLDER)), once per
    kind of model input. A missing folder or a class map matching no class of the data fails when it is made."""

    def __init__(self, folder: str | Path, classes, class_map: dict[str, str | None] | None = None, method: str = "grabcut"):
        from fashionclf.data.folders import mapped_items

        self.folder, self.class_map, self.method = Path(folder), class_map, method
        self.files, self.converted, self.left_out = len(mapped_items(self.folder, classes, class_map)), {}, []

    def __call__(self, run_dir: Path) -> float:
        from fashionclf.infer.predict import load_labelled_photos

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
    from fashionclf.training.recipes import resolve_config

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
