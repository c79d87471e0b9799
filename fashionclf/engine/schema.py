"""The run folder's metadata checked field by field: what load_run refuses, with a message naming the file, the field
and what is valid (engine/runs.py reads and writes the folder)."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

from fashionclf.models import model_info


class RunError(Exception):
    """A run folder is missing, incomplete or would be overwritten."""


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
THRESHOLDS = {s: Field("number", nullable=True) for s in ("energy", "msp", "maxlogit", "embedding")}
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
