"""How many epochs the quick seed study (`make run`, `compare --quick`) gives each model: test and validation accuracy
and training time of each of the four seed-study models at a few epoch counts, one seed (what `make run` trains).

    .venv/bin/python experiments/quick_study/epochs.py --grid simple_cnn=3,4,5 --grid tuned_cnn=3,4,5 \
        --grid advanced_cnn=2,3,4 --out experiments/quick_study/results/epochs-native-bf16.json

Each row is one `fashionclf.train` of the model's recipe with only `epochs` changed (one-cycle schedules end annealed
whatever the count). The choice is made on validation accuracy and step cost; test accuracy only reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import fashionclf
from fashionclf.core.io import atomic_write_text
from fashionclf.engine import autotune


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", action="append", required=True, metavar="MODEL[+SETTING:VALUE...]=E1,E2,...")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cpu = autotune.cpu_info()
    rows = []
    head = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": cpu["model"], "native_bf16": cpu["native_bf16"]}
    head |= {"onednn_max_cpu_isa": __import__("os").environ.get("ONEDNN_MAX_CPU_ISA"), "python": platform.python_version()}
    for spec in args.grid:
        name, _, epochs = spec.partition("=")
        model, *changes = name.split("+")  # MODEL+setting:value+...: the recipe with these settings changed too
        changed = {k: _value(v) for k, _, v in (c.partition(":") for c in changes)}
        for e in (int(x) for x in epochs.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                run = fashionclf.train(fashionclf.recipe(model, epochs=e, seed=args.seed, **changed), out=Path(tmp) / "run")
                m = run.metrics
                row = {"model": model, "changed": changed, "epochs": e, "seed": args.seed, "test_accuracy": m["test_accuracy"]}
                row |= {"val_accuracy": m["val_accuracy"], "train_seconds": m["train_seconds"], "precision": m.get("precision")}
                rows.append(row)
                print(json.dumps(row), flush=True)
                atomic_write_text(args.out, json.dumps({**head, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
