"""Run folders: weights in safetensors, everything else in JSON/CSV. Nothing here unpickles.

A run folder is written complete into a hidden temporary sibling and renamed into place, so a crash never leaves half
a run, and a run is only replaced when asked to. A training holds its folder's `.lock` and keeps the last epoch's
checkpoint (`checkpoint/`); the finished run replaces both.

Loading checks meta.json and metrics.json against one schema (META_FIELDS, METRICS_FIELDS, TrainConfig's checks):
a damaged or out-of-range field is one RunError naming the file, the field and what is valid."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
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
from fashionclf.engine.inference import infer
from fashionclf.models import build_model, model_info, resolved_kwargs

WEIGHTS, META, METRICS, HISTORY = "model.safetensors", "meta.json", "metrics.json", "history.csv"
PREDICTIONS = "test_predictions.safetensors"  # stored logits and labels of the test and calibration splits
LOCK = ".lock"  # held (flock) by the training writing the folder


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
    checked it; what it holds (a checkpoint, an old run with overwrite) is replaced. files: more text files of the
    run by plain name (a store run's labelled.json), written with the rest."""
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
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(tmp / WEIGHTS), metadata={"model": cfg.model, "format": "fashionclf-1"})
        (tmp / META).write_text(to_json(meta))
        (tmp / METRICS).write_text(to_json(metrics))
        (tmp / HISTORY).write_text(csv_text(history))
        if predictions is not None:
            safetensors.torch.save_file({k: v.contiguous().clone() for k, v in predictions.items()}, str(tmp / PREDICTIONS))
        for name, text in (files or {}).items():
            (tmp / Path(name).name).write_text(text)
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

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    def logits(self, x_u8: torch.Tensor, device: str | torch.device = "cpu", raw: bool = False):
        """Logits for model-ready uint8 images with the run's TTA: in fp32 where it was trained in fp32 (with its
        channels_last), else in the precision and memory format measured fastest for inference on this machine.
        raw=True: (logits, the raw logits "none of these" scores take), from the same passes (engine.inference.infer)."""
        dev = torch.device(device)
        model = self.model.to(dev)
        p = inference_precision(self.config.precision, dev, model, x_u8, channels_last=self.config.channels_last, name=self.config.model)
        return infer(model, x_u8, device=dev, amp_dtype=p.dtype, channels_last=p.channels_last, tta=self.config.tta, raw=raw)


DAMAGED = "the run folder is damaged or was not written by this version of fashionclf; train it again"


@dataclass(frozen=True)
class Field:
    """One field of a metadata file: its kind (number: finite; int: whole; str; table; names: a non-empty list of
    strings), whether it must be there or may be null, its valid range ([lo, hi], or above a bound) and choices."""

    kind: str
    required: bool = False
    nullable: bool = False
    lo: float | None = None
    hi: float | None = None
    above: float | None = None
    choices: tuple = ()
    fields: dict | None = None  # a table's own fields

    def problem(self, v) -> str | None:
        """What is wrong with v, as 'expected ...', or None."""
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        kinds = {
            "number": (number and math.isfinite(v), "a finite number"),
            "int": (number and isinstance(v, int), "a whole number"),
            "str": (isinstance(v, str), "a string"),
            "table": (isinstance(v, dict), "a table of named fields (a JSON object)"),
            "names": (isinstance(v, list) and len(v) > 0 and all(isinstance(s, str) for s in v), "a non-empty list of names"),
        }
        ok, want = kinds[self.kind]
        if not ok:
            return want
        if self.choices and v not in self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.above is not None and not v > self.above:
            return f"a number above {self.above}"
        if self.lo is not None and not self.lo <= v <= self.hi:
            return f"a value in [{self.lo}, {self.hi}]"
        return None


# The schema of a run folder's JSON files: what load_run relies on. Other keys are allowed (a newer version may
# record more); the config's own settings are checked by TrainConfig (config_from_dict), the ranges of the flags.
SIDE, FRACTION = Field("int", True, lo=1, hi=4096), Field("number", nullable=True, lo=0, hi=1)
INPUT_FIELDS = {"channels": Field("int", True, choices=(1, 3)), "height": SIDE, "width": SIDE}
META_FIELDS = {
    "format": Field("int", choices=(1,)),
    "model": Field("str", True),
    "model_kwargs": Field("table"),
    "classes": Field("names", True),
    "input": Field("table", fields=INPUT_FIELDS),
    "config": Field("table"),
    "data": Field("table"),
}
# What predict applies: no calibration, or a null threshold, flags every item; no "rule" marks the old point estimate.
CALIBRATION_FIELDS = {"temperature": Field("number", True, above=0), "threshold": FRACTION, "target_precision": FRACTION}
CALIBRATION_FIELDS |= {"delta": FRACTION, "rule": Field("str"), "calibration_items": Field("int", lo=0, hi=2**62)}
# "None of these" (evaluation/unknown.py); runs saved before it have none and never say unknown.
THRESHOLDS = {s: Field("number", nullable=True) for s in ("energy", "msp", "maxlogit")}
SHARE, NAMES = Field("number", True, above=0, lo=0, hi=1), Field("names")
UNKNOWN_FIELDS = {"score": Field("str", True, choices=tuple(THRESHOLDS)), "known_share": SHARE, "negative_classes": NAMES}
UNKNOWN_FIELDS |= {"temperature": Field("number", above=0), "thresholds": Field("table", True, fields=THRESHOLDS)}
CAL, UNK = Field("table", nullable=True, fields=CALIBRATION_FIELDS), Field("table", nullable=True, fields=UNKNOWN_FIELDS)
METRICS_FIELDS = {"calibration": CAL, "unknown": UNK, "val_auto_share": FRACTION, "val_auto_precision": FRACTION}


def check_metadata(path: Path, doc, fields: dict, prefix: str = "") -> dict:
    """doc (read from path) against its fields; a RunError naming the file, the field and what is valid."""
    if not isinstance(doc, dict):
        raise RunError(f"{path} holds {json.dumps(doc)[:40]}, not a JSON object of named fields; {DAMAGED}")
    for name, f in fields.items():
        where = prefix + name
        if name not in doc:
            if f.required:
                raise RunError(f"{path} has no {where!r} field; {DAMAGED}")
            continue
        v = doc[name]
        if v is None and f.nullable:
            continue
        want = f.problem(v)
        if want is not None:
            got = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
            raise RunError(f"{path}: {where} = {got}: expected {want}; {DAMAGED}")
        if f.fields:
            check_metadata(path, v, f.fields, where + ".")
    return doc


def check_model_kwargs(name: str, kwargs: dict) -> None:
    """Each recorded constructor argument is one the builder takes, of its default's type, in a sane range."""
    info = model_info(name)
    params = {k: p.default for k, p in inspect.signature(info.build).parameters.items() if p.default is not inspect.Parameter.empty}
    params.pop("num_classes", None)

    def whole(v, lo=1, hi=4096):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    for k, v in kwargs.items():
        if k not in params:
            raise ValueError(f"model_kwargs.{k}: {name} takes no such argument (it takes {', '.join(params)})")
        d = params[k]
        if k == "in_chans":
            ok, want = whole(v) and v in info.in_chans, f"one of {', '.join(map(str, info.in_chans))}"
        elif isinstance(d, bool):
            ok, want = isinstance(v, bool), "true or false"
        elif isinstance(d, int):
            ok, want = whole(v), "a whole number in [1, 4096]"
        elif isinstance(d, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v < 1
            want = "a rate in [0, 1)"
        elif isinstance(d, tuple):
            ok, want = isinstance(v, (list, tuple)) and len(v) > 0 and all(map(whole, v)), "a list of whole numbers in [1, 4096]"
        else:
            ok, want = isinstance(v, type(d)), f"a {type(d).__name__}"
        if not ok:
            raise ValueError(f"model_kwargs.{k} = {v!r}: expected {want}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing; is {path.parent} a run folder written by `fashionclf train`?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON ({e}); the run folder is damaged, train again") from None


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
    try:
        # pretrained=False, empty: the run's own weights (assigned below) replace pretrained and random ones
        model = build_model(built, len(meta["classes"]), pretrained=False, empty=True)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RunError(f"{path / META}: the model cannot be rebuilt from its config ({e})") from None
    weights = path / WEIGHTS
    if not weights.exists():
        raise RunError(f"{weights} is missing; the run did not finish, train again")
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except safetensors.SafetensorError as e:
        raise RunError(f"{weights} is not a valid safetensors file ({e}); train again") from None
    bad = next((k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise RunError(f"{weights}: tensor {bad!r} holds NaN or infinite values; {DAMAGED}")
    try:
        model.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in state.items()}, assign=True)
    except RuntimeError as e:
        raise RunError(f"{weights} does not fit model {meta['model']!r}: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    if config.channels_last:  # as it was trained: with channels_last input, NCHW weights cost oneDNN a 3.7x slowdown here
        model.to(memory_format=torch.channels_last)
    return LoadedRun(path, model, meta, metrics, config)


def load_predictions(run_dir: str | Path, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The stored logits and labels of a run's test split, or of its calibration split (split "val")."""
    path, key = Path(run_dir) / PREDICTIONS, "" if split == "test" else "val_"
    t = safetensors.torch.load_file(str(path)) if path.exists() else {}
    if key + "logits" not in t:
        raise RunError(f"{path} holds no {split} logits: the run was saved without them (before the guaranteed rule); train it again")
    return t[key + "logits"], t[key + "labels"]
