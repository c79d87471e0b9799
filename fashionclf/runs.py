"""Run folders: weights in safetensors, everything else in JSON/CSV. Nothing here unpickles.

A run folder is written complete into a hidden temporary sibling and renamed
into place, so a crash never leaves half a run, and an existing run is only
replaced when asked to.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from fashionclf import __version__
from fashionclf.config import TrainConfig, config_from_dict, config_to_dict
from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.io import UMASK, to_json
from fashionclf.models import build_model, model_info, resolved_kwargs

WEIGHTS, META, METRICS, HISTORY = "model.safetensors", "meta.json", "metrics.json", "history.csv"
PREDICTIONS = "test_predictions.safetensors"  # stored outputs: reports derive everything from these


class RunError(Exception):
    """A run folder is missing, incomplete or would be overwritten."""


def versions() -> dict:
    return {
        "fashionclf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def check_writable(out: str | Path, overwrite: bool = False) -> None:
    """Fail before any training if `out` holds something that would be lost."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is a file; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(f"{out} already holds files; choose another --out, or pass --overwrite to replace it")
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"cannot create {out}: {ancestor} is a file; choose another --out")
    if not os.access(ancestor, os.W_OK):
        raise RunError(f"cannot create {out}: {ancestor} is not writable; choose another --out")


def history_csv(history: list[dict]) -> str:
    if not history:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    return buf.getvalue()


def save_run(
    out: str | Path,
    model: nn.Module,
    cfg: TrainConfig,
    metrics: dict,
    history: list[dict],
    classes,
    data_info: dict,
    overwrite: bool = False,
    extra_meta: dict | None = None,
    predictions: dict[str, torch.Tensor] | None = None,
) -> Path:
    out = Path(out)
    check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": 1,
        "model": cfg.model,
        "model_kwargs": resolved_kwargs(cfg.model, cfg.model_kwargs),
        "classes": list(classes),
        "input": {"channels": 1, "height": 28, "width": 28, "dtype": "uint8 pixels scaled to [0, 1]"},
        "normalization": {"mean": MEAN, "std": STD},
        "config": config_to_dict(cfg),
        "data": data_info,
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra_meta or {}),
    }
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / WEIGHTS), metadata={"model": cfg.model, "format": "fashionclf-1"})
        (tmp / META).write_text(to_json(meta))
        (tmp / METRICS).write_text(to_json(metrics))
        (tmp / HISTORY).write_text(history_csv(history))
        if predictions is not None:
            safetensors.torch.save_file({k: v.contiguous() for k, v in predictions.items()}, str(tmp / PREDICTIONS))
        for f in tmp.iterdir():  # durable before the rename makes the run visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():  # only reached with overwrite=True: swap, then delete the old run
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.rmdir(old)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Run:
    path: Path
    model: nn.Module
    meta: dict
    metrics: dict
    config: TrainConfig

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def logits(self, x_u8: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """Logits for model-ready uint8 images, computed as the run was trained: its channels_last and TTA, and
        its precision where this machine has it (a run trained in bf16 falls back to fp32 elsewhere)."""
        from fashionclf.engine.device import resolve_precision
        from fashionclf.engine.inference import infer

        dev = torch.device(device)
        amp = resolve_precision("fp32" if self.config.precision == "fp32" else "auto", dev)
        return infer(self.model.to(dev), x_u8, device=dev, amp_dtype=amp, channels_last=self.config.channels_last, tta=self.config.tta)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing; is {path.parent} a run folder written by `fashionclf train`?") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e}); the run folder is damaged, train again") from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model from meta.json and load its safetensors weights (no pickle, no code execution)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder; pass the --out folder of a `fashionclf train` run")
    meta = read_json(path / META)
    for key in ("model", "classes"):
        if key not in meta:
            raise RunError(f"{path / META} has no {key!r} field; the run folder is damaged or from another tool")
    try:
        model_info(meta["model"])
    except ValueError as e:
        raise RunError(f"{path / META}: {e}") from None
    metrics = read_json(path / METRICS) if (path / METRICS).exists() else {}
    config = config_from_dict({**meta.get("config", {}), "model": meta["model"]})  # as trained, for resuming and reports
    # Rebuilt from the recorded kwargs (builder defaults included), not today's defaults.
    built = config_from_dict({**meta.get("config", {}), "model": meta["model"], "model_kwargs": meta.get("model_kwargs", {})})
    try:
        # pretrained=False: the run's own weights replace any pretrained ones just below
        model = build_model(built, len(meta["classes"]), pretrained=False)
    except (TypeError, ValueError) as e:
        raise RunError(f"{path / META}: the model cannot be rebuilt from its config ({e})") from None
    weights = path / WEIGHTS
    if not weights.exists():
        raise RunError(f"{weights} is missing; the run did not finish, train again")
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except safetensors.SafetensorError as e:
        raise RunError(f"{weights} is not a valid safetensors file ({e}); train again") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"{weights} does not fit model {meta['model']!r}: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    if config.channels_last:  # as it was trained: with channels_last input, NCHW weights cost oneDNN a 3.7x slowdown here
        model.to(memory_format=torch.channels_last)
    return Run(path, model, meta, metrics, config)


def load_predictions(run_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored test logits and labels of a run."""
    path = Path(run_dir) / PREDICTIONS
    if not path.exists():
        raise RunError(f"{path} is missing; the run was saved without test predictions, train it again")
    t = safetensors.torch.load_file(str(path))
    return t["logits"], t["labels"]
