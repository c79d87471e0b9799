"""Training checkpoints: what a killed training needs to continue exactly where it stopped.

At the end of every epoch `fit` writes `<run folder>/checkpoint/`:

- `epoch-NNNN.safetensors`: the model's weights and buffers, the optimizer's state tensors, the EMA copy,
  the best-so-far weights (early stopping restores them) and the random number generators' states as
  uint8 tensors (torch's CPU generator, the augmentation `torch.Generator`, CUDA's; one set per rank of a
  torchrun job);
- `state.json`: the epoch, the history, the best epoch and loss, the schedulers' state_dicts (plain numbers),
  the optimizer's hyper-parameters (param_groups), the config and what the caller records (its data), and
  the name and SHA-256 of the tensors file.

The tensors go to a new file first, then `state.json` is replaced atomically to name it, then the previous
tensors file is deleted: a kill at any moment leaves one complete checkpoint. Nothing is pickled: loading
reads safetensors and JSON only. The training loop uses no numpy or Python `random` state, so these are all
the generators there are.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from fashionclf.core.io import atomic_write_bytes, atomic_write_text, to_json
from fashionclf.engine import distributed

CHECKPOINT, STATE = "checkpoint", "state.json"
FORMAT = "fashionclf-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or of another training."""


@dataclass
class LoopState:
    """Everything of a training loop that changes from epoch to epoch (fit builds it; this module saves and restores it)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    plateau: object | None
    step_schedule: object | None
    ema: torch.optim.swa_utils.AveragedModel | None
    generator: torch.Generator
    device: torch.device
    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    epoch: int = 0  # epochs finished
    stopped: bool = False  # early stopping has ended the loop
    elapsed: float = 0.0  # training seconds so far, across the processes that trained it
    precision: dict = field(default_factory=dict)  # autotune's choice (precision, channels_last, how), kept on resume

    @property
    def scored(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def read_state(folder: str | Path) -> dict:
    """A checkpoint's state.json (no tensors): what it is of and how far it got."""
    path = Path(folder) / STATE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {Path(folder).parent} holds no checkpoint to resume") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, train again with --overwrite") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fashionclf checkpoint (format {FORMAT}); train again with --overwrite")
    return state


def _rng_tensors(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's generators, gathered from every rank of a torchrun job (rank r's under '.r')."""
    mine = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    out = {}
    for name, t in mine.items():
        if distributed.world_size() > 1:
            parts = [torch.empty_like(t, device=device) for _ in range(distributed.world_size())]
            torch.distributed.all_gather(parts, t.to(device))
        else:
            parts = [t]
        out |= {f"rng.{name}.{r}": p.cpu() for r, p in enumerate(parts)}
    return out


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """The optimizer's state_dict as JSON (hyper-parameters, scalar state) and tensors (per-parameter buffers)."""
    sd = opt.state_dict()
    tensors, state = {}, {}
    for idx, entries in sd["state"].items():
        state[str(idx)] = {}
        for key, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = v
                state[str(idx)][key] = {"tensor": f"optimizer.{idx}.{key}"}
            else:
                state[str(idx)][key] = v
    return {"state": state, "param_groups": sd["param_groups"]}, tensors


def save(folder: str | Path, st: LoopState, config: dict, extra: dict | None = None) -> None:
    """Write the checkpoint after st.epoch (on rank 0; every rank must call it, for the generators' states)."""
    rng = _rng_tensors(st.generator, st.device)
    if not distributed.is_main():
        return
    folder = Path(folder)
    opt_json, tensors = _optimizer_split(st.optimizer)
    tensors |= {f"model.{k}": v for k, v in st.model.state_dict().items()} | rng
    if st.ema is not None:
        tensors |= {f"ema.{k}": v for k, v in st.ema.state_dict().items()}
    if st.best_state is not None:
        tensors |= {f"best.{k}": v for k, v in st.best_state.items()}
    blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": FORMAT})
    name = f"epoch-{st.epoch:04d}.safetensors"
    atomic_write_bytes(folder / name, blob)
    scalars = {
        "format": FORMAT,
        "tensors": name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "epoch": st.epoch,
        "stopped": st.stopped,
        "elapsed": st.elapsed,
        "history": st.history,
        "best": {"loss": st.best_loss, "epoch": st.best_epoch, "saved": st.best_state is not None},
        "optimizer": opt_json,
        "plateau": st.plateau.state_dict() if st.plateau is not None else None,
        "schedule": st.step_schedule.state_dict() if st.step_schedule is not None else None,
        "ema": st.ema is not None,
        "precision": st.precision,
        "world_size": distributed.world_size(),
        "config": config,
        "extra": extra or {},
    }
    atomic_write_text(folder / STATE, to_json(scalars))
    for old in folder.glob("epoch-*.safetensors"):  # the previous epoch's, now that state.json names the new one
        if old.name != name:
            old.unlink(missing_ok=True)


def load(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """state.json and its tensors, checked against each other."""
    folder = Path(folder)
    state = read_state(folder)
    path = folder / str(state.get("tensors"))
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror}); the checkpoint is damaged, train again with --overwrite") from None
    if hashlib.sha256(blob).hexdigest() != state.get("sha256"):
        raise CheckpointError(f"{path} does not match {folder / STATE} (SHA-256); the checkpoint is damaged, train again with --overwrite")
    try:
        return state, safetensors.torch.load(blob)
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}); train again with --overwrite") from None


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_optimizer(opt: torch.optim.Optimizer, saved: dict, tensors: dict[str, torch.Tensor]) -> None:
    groups = []
    for group, now in zip(saved["param_groups"], opt.param_groups):  # JSON made tuples (Adam's betas) lists
        groups.append({k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in group.items()})
    state = {
        int(idx): {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v for k, v in entries.items()}
        for idx, entries in saved["state"].items()
    }
    opt.load_state_dict({"state": state, "param_groups": groups})
    # Buffers shaped like their parameter take its memory format (channels_last), as freshly created ones do.
    for group in opt.param_groups:
        for p in group["params"]:
            for key, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def restore(folder: str | Path, st: LoopState, config: dict) -> dict:
    """Put the checkpoint's state into st (built as fit builds it for a new run); returns its state.json."""
    state, tensors = load(folder)
    if state["config"] != json.loads(to_json(config)):
        diff = sorted(k for k in config if state["config"].get(k) != json.loads(to_json(config[k])))
        raise CheckpointError(f"{folder} is the checkpoint of another configuration ({', '.join(diff)} differ); resume it with its own")
    if state["world_size"] != distributed.world_size():
        raise CheckpointError(
            f"{folder} was written by {state['world_size']} processes; resume it with as many (this job has {distributed.world_size()})"
        )
    if state["ema"] != (st.ema is not None):
        raise CheckpointError(f"{folder}: its EMA setting does not match the configuration")
    try:
        st.model.load_state_dict(_prefixed(tensors, "model."))
        if st.ema is not None:
            st.ema.load_state_dict(_prefixed(tensors, "ema."))
        _load_optimizer(st.optimizer, state["optimizer"], tensors)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{folder} does not fit this model: {str(e).splitlines()[0]}; train again with --overwrite") from None
    if st.plateau is not None:
        st.plateau.load_state_dict(state["plateau"])
    if st.step_schedule is not None:
        st.step_schedule.load_state_dict(state["schedule"])
    best = state["best"]
    st.best_loss, st.best_epoch = best["loss"], best["epoch"]
    st.best_state = {k: v.to(st.device) for k, v in _prefixed(tensors, "best.").items()} if best["saved"] else None
    st.history, st.epoch, st.stopped, st.elapsed = state["history"], state["epoch"], state["stopped"], state["elapsed"]
    st.precision = state.get("precision") or st.precision
    r = distributed.rank()
    torch.set_rng_state(tensors[f"rng.torch.{r}"])
    st.generator.set_state(tensors[f"rng.generator.{r}"])
    if st.device.type == "cuda" and f"rng.cuda.{r}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{r}"], st.device)
    return state
