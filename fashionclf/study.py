"""Train-evaluate-save for one run, and the seed study (`compare`) as many runs.

Test-set figures are computed once, after training has chosen its weights on the
validation split, and stored with the run (metrics.json and the test logits),
so reports derive everything from stored outputs without re-running models.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

from .data import FashionMNIST
from .metrics import classification_report
from .runs import RunError, atomic_write_text, check_writable, load_run, save_run, to_json
from .train import TrainConfig, config_to_dict, fit, infer, resolve_precision

PREDICTIONS = "test_predictions.safetensors"


def measure_inference(model, x_u8, device, amp_dtype, channels_last, batch_size=1024) -> float:
    """Images per second of `infer` over x_u8 (one untimed warm-up batch first)."""
    infer(model, x_u8[:batch_size], batch_size, device, amp_dtype, channels_last)
    t0 = time.perf_counter()
    infer(model, x_u8, batch_size, device, amp_dtype, channels_last)
    return len(x_u8) / (time.perf_counter() - t0)


def train_and_save(
    cfg: TrainConfig,
    data: FashionMNIST,
    out: str | Path,
    overwrite: bool = False,
    on_epoch: Callable | None = None,
    on_batch_factory: Callable | None = None,
) -> dict:
    """Fit cfg on data, score it on the test set, write the run folder; return its metrics."""
    check_writable(out, overwrite)  # before training, not after ten minutes of it
    res = fit(cfg, data.train_x, data.train_y, data.val_x, data.val_y, len(data.classes), on_epoch, on_batch_factory)
    device = torch.device(res.device)
    amp = resolve_precision(cfg.precision, device)
    val_logits = infer(res.model, data.val_x, device=device, amp_dtype=amp, channels_last=cfg.channels_last)
    test_logits = infer(res.model, data.test_x, device=device, amp_dtype=amp, channels_last=cfg.channels_last)
    val_rep = classification_report(val_logits, data.val_y, data.classes)
    test_rep = classification_report(test_logits, data.test_y, data.classes)
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
        "infer_images_per_s": measure_inference(res.model, data.test_x, device, amp, cfg.channels_last),
        "test_per_class": test_rep["per_class"],
        "test_confusion_matrix": test_rep["confusion_matrix"],
    }
    data_info = {
        "source": data.source,
        "checksums": data.checksums,
        "train": len(data.train_x),
        "val": len(data.val_x),
        "test": len(data.test_x),
        "split_seed": data.split_seed,
    }
    save_run(out, res.model, cfg, metrics, res.history, data.classes, data_info, overwrite=overwrite)
    # Stored outputs for reports: logits and labels of the test set, in safetensors (no pickle).
    tmp = Path(out) / f".{PREDICTIONS}.tmp"
    safetensors.torch.save_file({"logits": test_logits.contiguous(), "labels": data.test_y.contiguous()}, str(tmp))
    tmp.replace(Path(out) / PREDICTIONS)
    return metrics


def load_predictions(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    t = safetensors.torch.load_file(str(Path(run_dir) / PREDICTIONS))
    return t["logits"], t["labels"]


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


def compare(
    configs: list[TrainConfig],
    data: FashionMNIST,
    out: str | Path,
    resume: bool = True,
    on_run_start: Callable[[TrainConfig, Path], None] | None = None,
    on_epoch: Callable | None = None,
    on_batch_factory: Callable | None = None,
) -> dict:
    """Train every config into out/runs/<model>-s<seed>; write out/results.json after each run.

    A finished run folder (with its predictions) is reused, so an interrupted study resumes.
    """
    out = Path(out)
    runs = []
    for cfg in configs:
        run_dir = out / "runs" / f"{cfg.model}-s{cfg.seed}"
        if resume and (run_dir / PREDICTIONS).exists():
            done = load_run(run_dir)
            if done.meta.get("config") != json.loads(to_json(config_to_dict(cfg))):
                raise RunError(
                    f"{run_dir} holds a finished run with another configuration; "
                    "use another --out, or --overwrite to train everything again"
                )
            metrics = done.metrics
        else:
            if on_run_start:
                on_run_start(cfg, run_dir)
            metrics = train_and_save(cfg, data, run_dir, overwrite=run_dir.exists(), on_epoch=on_epoch, on_batch_factory=on_batch_factory)
        runs.append({**{k: metrics.get(k) for k in RESULT_KEYS}, "run_dir": str(run_dir.relative_to(out))})
        atomic_write_text(out / "results.json", to_json({"runs": runs}))
    return {"runs": runs}
