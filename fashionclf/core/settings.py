"""How a setting is declared: a dataclass field with its help text, --help group, choices and valid range.

The training flags of the CLI are generated from these declarations (cli/options.py) and every config
is checked against them when it is built (check_fields).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field

# CLI groups, in the order `--help` shows them (as timm groups its train.py arguments).
GROUPS = {
    "optimizer": "optimizer and learning rate",
    "schedule": "schedule, epochs and early stopping",
    "regularization": "regularization and evaluation",
    "augmentation": "augmentation (batched, on tensors)",
    "pretrained": "pretrained models",
    "data": "data and splits",
    "photos": "a shop's photos mixed into Fashion-MNIST training",
    "hardware": "device, precision and threads",
}


def setting(default, help: str, group: str, *, choices=None, lo=None, hi=None, flag: bool = True, factory=None):
    """A dataclass field with what the CLI and the validator need: help text, group, choices and range [lo, hi]."""
    meta = {"help": help, "group": group, "choices": choices, "lo": lo, "hi": hi, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(cfg, prefix: str = "") -> None:
    """Types, choices and ranges of every field; a ValueError names the field and what is valid."""
    for f in dataclasses.fields(cfg):
        v, meta = getattr(cfg, f.name), f.metadata
        name = prefix + f.name
        want = f.type if isinstance(f.type, str) else f.type.__name__
        if want == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"{name} = {v!r}: expected true or false")
            continue
        if want == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} = {v!r}: expected a whole number")
        elif want == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} = {v!r}: expected a finite number")
        elif want == "str" and not isinstance(v, str):
            raise ValueError(f"{name} = {v!r}: expected a string")
        elif want == "dict" and not isinstance(v, dict):
            raise ValueError(f"{name} = {v!r}: expected a table of names to values")
        if meta.get("choices") and v not in meta["choices"]:
            raise ValueError(f"unknown {name} {v!r}; valid: {', '.join(meta['choices'])}")
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and not lo <= v <= hi:
            raise ValueError(f"{name} = {v!r}: expected a value in [{lo}, {hi}]")
