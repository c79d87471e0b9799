"""What the lab-note scripts under experiments/ share: the --group argument and the "mean ± std" cell.

Not a package: each script finds this file by putting experiments/ (its parent's parent) first on
sys.path, so it works from any working directory:

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import common

Scoring a loaded run with its own precision and test-time augmentation is the package's job
(fashionclf.study.compare.evaluate_run, fashionclf.infer.predict.predict_probs); the scripts call those.
"""

from __future__ import annotations

import argparse

from fashionclf.evaluation.metrics import mean_std


def add_group_argument(ap: argparse.ArgumentParser, item: str = "RUN", note: str = "") -> None:
    """--group NAME=ITEM,ITEM,... (repeatable, required); read it back with parse_groups."""
    ap.add_argument("--group", action="append", required=True, metavar=f"NAME={item},{item},...", help=note or "repeatable")


def parse_groups(specs: list[str]) -> dict[str, list[str]]:
    """["NAME=A,B", ...] -> {"NAME": ["A", "B"], ...} in the order given; empty items are dropped."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, items = spec.partition("=")
        members = [m for m in items.split(",") if m]
        if not sep or not name or not members:
            raise SystemExit(f"--group {spec!r}: expected NAME=ITEM[,ITEM...]")
        if name in groups:
            raise SystemExit(f"--group {name!r} given twice")
        groups[name] = members
    return groups


def fmt_mean_std(values, scale: float = 100, digits: int = 1) -> str:
    """A table cell: mean ± sample std of the values (None left out) times scale; one value alone; "" for none."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
