"""The Python API: what the CLI, the service, the benchmarks and users call. Functions return values and never
print; progress goes to the callbacks given.

    import fashionclf
    run = fashionclf.load_run("runs/shop")
    rows = run.predict(["photo.jpg", "new-photos/"])
    run = fashionclf.train(fashionclf.recipe("best-cpu", seed=1), out="runs/best")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from fashionclf.core.config import DEFAULT_FOLDER_MODEL, DEFAULT_RECIPE, TrainConfig
from fashionclf.core.io import check_new_file  # noqa: F401  (the CLI's, kept here)
from fashionclf.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from fashionclf.data.load import load_data  # noqa: F401  (re-exported: fashionclf.load_data)
from fashionclf.engine import runs
from fashionclf.evaluation.calibrate import Promise
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE
from fashionclf.infer import ready
from fashionclf.models.registry import model_kwargs  # noqa: F401  (re-exported: fashionclf.model_kwargs)
from fashionclf.training.callbacks import NONE, Callbacks
from fashionclf.training.recipes import load_config_file, load_recipe, resolve_config


class Run(runs.LoadedRun):
    """A trained run folder, loaded: `.predict`, `.evaluate`, `.robustness`, `.export`."""

    def predict(
        self,
        inputs: str | Path | Sequence[str | Path] | np.ndarray | torch.Tensor,
        top_k: int = 3,
        method: str = "grabcut",
        with_runs: Sequence[runs.LoadedRun] = (),
        save_preprocessed: str | Path | None = None,
    ) -> list[dict]:
        """Predictions for image files and folders (searched recursively), or for model-ready uint8 arrays. Each row:
        file, label, confidence (calibrated), top_k, needs_review; an unreadable file gives {'file', 'error'}."""
        from fashionclf.infer.predict import class_order, predict_arrays, predict_files

        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            if self.partners:
                raise ValueError("the ready model asks several runs, each converting the photo its own way: give photo files, not arrays")
            return predict_arrays(self, inputs, top_k)
        from fashionclf.data.images import find_images

        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        paths = find_images(items)
        if not paths:
            raise ValueError(f"no image files found in {', '.join(map(str, items))} (looked for .jpg, .png, .webp, .bmp, .gif, .tif)")
        for r in with_runs:
            class_order(self, r)  # the same classes, or a clear message before any photo is decoded
        return list(predict_files(self, paths, top_k=top_k, save_preprocessed=save_preprocessed, method=method, also=list(with_runs)))

    def evaluate(
        self,
        data: str | Path | None = None,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        class_map: dict | None = None,
        method: str = "grabcut",
        data_dir: str | Path | None = None,
        allow_download: bool = True,
    ) -> dict:
        """Accuracy, loss, per-class figures, confusion matrix and calibration on: labelled photos in class
        folders (data), a folder of t10k IDX files (data_dir), given arrays, or the Fashion-MNIST test set. The ready
        model (several runs asked together) is evaluated on labelled photos as `predict` answers them."""
        if self.partners and data is not None and images is None:
            rep = ready.evaluate_photos(self, data, class_map, method)
            return {
                "run": str(self.path),
                "model": "ready model: " + ", ".join(r.meta["model"] for r in [self, *self.partners]),
                "data": str(data),
                **rep,
            }
        ready.one_run(self, "evaluate")
        from fashionclf.data.fashion_mnist import DataError, load_split
        from fashionclf.study.compare import evaluate_run

        skipped: list[str] = []
        if images is not None:
            x, y, source = images, labels, "arrays"
        elif data is not None:
            from fashionclf.infer.predict import load_labelled_photos

            x, y, skipped = load_labelled_photos(self, data, method, class_map)
            source = str(data)
        elif data_dir is not None:
            x, y, _ = load_split(data_dir, "test", official=False)
            source = str(data_dir)
        else:
            d = load_fashion_mnist(None, allow_download=allow_download)
            x, y, source = d.test_x, d.test_y, d.source
        try:
            scores = evaluate_run(self, x, y)
        except DataError as e:
            raise DataError(f"{source}: {e}") from None
        return {"run": str(self.path), "model": self.meta["model"], "data": source, **scores, "skipped": skipped}

    def robustness(
        self, split: str = "test", limit: int | None = None, seed: int = 0, data_dir: str | Path | None = None, allow_download: bool = True
    ) -> dict:
        """Accuracy under the corruption suite (14 corruptions x 5 severities) on the test split or the run's own validation split."""
        ready.one_run(self, "robustness")
        from fashionclf.study.compare import robustness

        if split not in ("test", "validation"):
            raise ValueError(f"split {split!r}: expected test or validation")
        cfg = self.config
        data = load_fashion_mnist(data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed, allow_download=allow_download)
        x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
        if limit:
            x, y = x[:limit], y[:limit]
        return {"run": str(self.path), "model": self.meta["model"], "split": split, **robustness(self, x, y, seed=seed)}

    def export(
        self,
        path: str | Path | None = None,
        int8: bool = False,
        data: str | Path | None = None,
        val_data: str | Path | None = None,
        data_dir: str | Path | None = None,
    ) -> tuple[bytes, dict]:
        """ONNX (pixels in, calibrated probabilities out), checked against PyTorch at batch 1/7/64 before it is
        written (atomically, never over an existing file). int8: statically quantized, calibrated on the run's
        validation images and refused when it costs more than 0.3 points of test accuracy (image-folder runs
        need their folder as data). Returns the model's bytes and a report {parity, int8?}."""
        ready.one_run(self, "export")
        from fashionclf.core.io import atomic_write_bytes
        from fashionclf.infer.export import export_checked

        if path is not None:
            path = Path(path)
            if path.suffix.lower() != ".onnx":
                raise ValueError(f"{path}: expected a file name ending in .onnx")
            check_new_file(path)
        model, rows = export_checked(self)  # raises before anything is written
        report: dict = {"parity": rows}
        if int8:
            from fashionclf.infer.quantize import int8_checked

            ds = self.dataset(data, val_data, data_dir)
            model, report["int8"] = int8_checked(model, ds.val_x[:1024].numpy(), ds.test_x.numpy(), ds.test_y.numpy())
        if path is not None:
            atomic_write_bytes(path, model)
        return model, report

    def dataset(
        self, data: str | Path | None = None, val_data: str | Path | None = None, data_dir: str | Path | None = None
    ) -> FashionMNIST:
        """The run's own splits again: Fashion-MNIST with its validation split, or its image folder (given as data)."""
        if (self.meta.get("input") or {}).get("kind") == "rgb-letterbox":
            if data is None:
                raise ValueError(
                    f"{self.path} was trained on an image folder: give that folder (--data) for its validation and test images"
                )
            from fashionclf.data.folders import load_image_folder

            ds, _ = load_image_folder(data, val_data, self.meta["input"]["height"], split_seed=self.config.split_seed, cache="auto")
            return ds
        return load_fashion_mnist(data_dir, val_size=self.config.val_size, split_seed=self.config.split_seed)


def load_run(path: str | Path = "default", device: str | torch.device = "cpu") -> Run:
    """A run folder, rebuilt from meta.json and safetensors weights: nothing is unpickled, no code executes. "default":
    the ready model in the package; a folder with ready.json: such a bundle, its SHA-256 checked first (ready.py)."""
    bundle = ready.resolve(path)
    r = ready.load_bundle(bundle, device) if bundle else runs.load_run(path, device)
    return Run(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)})


def recipe(name: str, **overrides) -> TrainConfig:
    """A recipe's config by name (a model's defaults or a preset), with overrides, e.g. seed=1, aug_rotation=15."""
    return resolve_config(base=load_recipe(name).config, **overrides)


def as_config(config: TrainConfig | str | Path | None, **overrides) -> TrainConfig:
    """A TrainConfig from a config, a recipe name, or a file (recipe .toml or a run's meta.json), with overrides."""
    if config is None or isinstance(config, TrainConfig):
        return resolve_config(base=config, **overrides)
    text = str(config)
    if Path(text).suffix in (".toml", ".json") or Path(text).is_file():
        return resolve_config(base=load_config_file(text), **overrides)
    return resolve_config(base=load_recipe(text).config, **overrides)


def default_out(cfg: TrainConfig) -> Path:
    return Path(f"runs/{cfg.model}-s{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}")


def train(
    config: TrainConfig | str | Path | None = None,
    out: str | Path | None = None,
    data: FashionMNIST | str | Path | None = None,
    overwrite: bool = False,
    callbacks: Callbacks = NONE,
    resume: bool = False,
    unknown_share: float = DEFAULT_KNOWN_SHARE,
    unlabelled: str | Path | None = None,
    teachers: Sequence[str | Path] = (),
    promise: Promise = Promise(),
    **data_options,
) -> Run | None:
    """Train one run into `out` and return it loaded (None on the helper ranks of a torchrun job). config: a
    TrainConfig, a recipe name ("best-cpu"), or a file (recipe .toml, a run's meta.json). data: a loaded dataset,
    an image folder, or None for Fashion-MNIST; data_options go to load_data. resume: continue the training a kill
    left in `out` (its checkpoint), with its config (config None) and, where data is None, its data as it loaded
    them. unknown_share: the share of validation images the "none of these" score counts known. promise: the precision
    and confidence the review rule guarantees. unlabelled: photos for self-training (selftrain.py), or with `teachers`
    (finished runs) for distillation: their soft labels on those photos teach the student (distill.py)."""
    from fashionclf.engine import distributed
    from fashionclf.engine.runs import check_writable
    from fashionclf.training.base import Job
    from fashionclf.training.supervised import resume_plan
    from fashionclf.training.trainer import trainer_for

    job = Job(Path(out or "."), overwrite, resume, callbacks, unknown_share, promise)  # checks unknown_share first
    if resume:
        if out is None:
            raise ValueError("resume=True continues the training in `out`: give that folder")
        cfg, loaded = resume_plan(out)
        cfg = as_config(config) if config is not None else cfg  # another config than the checkpoint's is refused
        data_options = {**(loaded or {}), **data_options} if data is None else data_options
        data = data_options.pop("data", None) if data is None else data
    else:
        cfg = as_config(config if config is not None else DEFAULT_FOLDER_MODEL if data is not None else DEFAULT_RECIPE)
    out = Path(out) if out is not None else default_out(cfg)
    check_writable(out, overwrite, resume)
    if not isinstance(data, FashionMNIST):
        data, _ = load_data(cfg, data, **data_options)
    trainer = trainer_for(unlabelled, [teachers] if isinstance(teachers, str | Path) else teachers)
    trainer.train(cfg, data, job.but(out=out))
    return load_run(out) if distributed.is_main() else None


def compare(
    configs: Sequence[TrainConfig],
    data: FashionMNIST,
    out: str | Path = "study",
    overwrite: bool = False,
    robustness: int | None = None,
    callbacks: Callbacks = NONE,
    photos: str | Path | None = None,
    class_map: dict[str, str | None] | None = None,
    choose_by: str = "accuracy",
    study: dict | None = None,
) -> tuple[dict, list[Path]]:
    """Train every config over its seed into out/runs/, then write the study report; returns results and report files.
    An interrupted study resumes: finished runs with the same config and data are reused. robustness: validation images
    for the corruption suite (None: 1,000 on 28x28 data; 0: off); photos: labelled photos (class_map as in Run.evaluate);
    choose_by: the recommendation's rule, "accuracy" or "auto-share" (reports/choose.py), checked before anything trains;
    study: which study this is, for the report ({"kind": "quick", ...}: `compare --quick`)."""
    from fashionclf.study.choose import check_rule
    from fashionclf.study.compare import compare as run_all
    from fashionclf.study.report import write_report

    check_rule(choose_by, len(data.val_y))
    results = run_all(list(configs), data, out, overwrite, callbacks, robustness, photos, class_map, choose_by, study)
    return results, write_report(out, results, data)


def plan_study(configs: Sequence[TrainConfig], data: FashionMNIST, out: str | Path = "study", overwrite: bool = False, robustness=None):
    """Each run's epochs and estimated seconds before compare trains them (study/plan.py; a reused run costs 0)."""
    from fashionclf.study.compare import DEFAULT_ROBUSTNESS_IMAGES, finished
    from fashionclf.study.plan import estimate

    n = (DEFAULT_ROBUSTNESS_IMAGES if data.val_x.dim() == 3 else 0) if robustness is None else robustness
    return estimate(list(configs), data, n, reused=lambda cfg: not overwrite and finished(out, cfg))


def study_configs(plan: Sequence[tuple[str, int]], **overrides) -> list[TrainConfig]:
    """One config per (model, seed) for a study plan [(model, number of seeds), ...]."""
    return [resolve_config(name, None, seed=s, **overrides) for name, k in plan for s in range(k)]


def resolution_study(
    model: str,
    sizes: Sequence[int],
    seeds: int,
    data: FashionMNIST,
    out: str | Path = "resolution",
    overwrite: bool = False,
    callbacks: Callbacks = NONE,
    **overrides,
) -> tuple[dict, list[Path], dict]:
    """One model and recipe at several resolutions (images down- then upsampled): results, report files, summary."""
    from fashionclf.study.compare import compare as run_all
    from fashionclf.study.compare import resolution_configs
    from fashionclf.study.resolution import write_resolution_report

    configs = resolution_configs(model, sizes, seeds, **overrides)
    results = run_all(configs, data, out, overwrite, callbacks)
    paths, summary = write_resolution_report(out, results, list(data.classes))
    return results, paths, summary


def find_label_issues(cfg: TrainConfig, data: FashionMNIST, out: str | Path, folds: int = 5, on_fold: Callable | None = None) -> dict:
    """Likely label errors in the training data (train + validation split), from k-fold out-of-fold predictions.
    Writes out/oof_probs.safetensors, out/label_issues.json and a report; returns the issues (most likely
    first), the out-of-fold accuracy, the number of images and the report files."""
    import safetensors.torch

    from fashionclf.core.io import atomic_write_bytes, atomic_write_text, to_json
    from fashionclf.study.blocks import write_blocks
    from fashionclf.study.compare import out_of_fold_probs
    from fashionclf.study.label_issues import label_issue_blocks

    out = Path(out)
    x, y = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])  # label errors live in both
    probs = out_of_fold_probs(cfg, x, y, folds, on_fold)
    blocks, issues = label_issue_blocks(x.numpy(), y.numpy(), probs.numpy(), list(data.classes))
    atomic_write_bytes(out / "oof_probs.safetensors", safetensors.torch.save({"probs": probs, "labels": y}))
    atomic_write_text(out / "label_issues.json", to_json({"model": cfg.model, "folds": folds, "issues": issues}))
    paths = write_blocks(out, blocks, "fashionclf: likely label errors")
    return {"issues": issues, "accuracy": (probs.argmax(1) == y).float().mean().item(), "n": len(y), "paths": paths}


def check_data(path: str | Path, near_rms: float = 5.0, tiny: int = 10, on_file: Callable | None = None) -> dict:
    """The data check of any layout `train --data` reads (fashionclf.data.check); ['ok'] False on a leak or unreadable file."""
    from fashionclf.data.check import check_data as check

    return check(path, near_rms, tiny, on_file)


def label_folder(run: Run | str | Path, folder, catalogue, batch_size=64, method="grabcut", on_batch=None, audit_share=0.02) -> dict:
    """The photos under `folder` predicted into a review catalogue (review.label; a rerun skips those in it; audit_share
    of the automatic ones queued for a person anyway, unmarked: review/audit.py); returns counts."""
    from fashionclf.review.label import label_folder as label

    return label(run if isinstance(run, Run) else load_run(run), folder, catalogue, batch_size, method, on_batch, audit_share)


def export_labels(catalogue: str | Path, out: str | Path) -> dict:
    """A catalogue's automatic and reviewed labels as class folders or a .csv/.jsonl manifest (fashionclf.review.export)."""
    from fashionclf.review.export import export_labels as export

    return export(catalogue, out)


def embed(
    paths, store, backbones=None, image_size=None, batch_size=16, workers=2, on_batch=None, ray=None, actors=1, precision="auto"
) -> dict:
    """Embed the photos of folders and manifests into an embedding store (made where missing): embed/extract.py.
    ray: a Ray address ("local", "auto", "ray://host:port") to embed on `actors` Ray Data actors instead (embed/ray.py).
    precision: "auto" (bf16 where measured faster on the machine) or "fp32" (the same vectors on every machine)."""
    if ray is not None:
        from fashionclf.embed.ray import embed_on_ray

        opts = {"backbones": backbones, "image_size": image_size, "batch_size": batch_size, "concurrency": actors, "precision": precision}
        return embed_on_ray(paths, store, ray, on_batch=on_batch, **opts)
    from fashionclf.embed.extract import embed_paths

    return embed_paths(paths, store, backbones, image_size, batch_size, workers, on_batch, precision)


def train_on_store(data, out, store, **options) -> Run:
    """A run whose head is fitted on the store's vectors of `data` in seconds (training/embedded.py), loaded."""
    from fashionclf.training.embedded import train_on_store as fit

    fit(data, out, store, **options)
    return load_run(out)
