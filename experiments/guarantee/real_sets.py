"""The guaranteed review rule against the old point estimate on real runs: each run's stored validation logits (the
calibration items) and test logits (never used to fit), from `test_predictions.safetensors`
(docs/results/guarantee.md).

For each run: the share of test items labelled with no person and its realised precision, under the guaranteed
rule and under the old point estimate, both fitted on the whole validation split with the run's temperature; then
the same with random calibration subsets of the validation split (20 draws per size), to show what more
calibration data buys.

    .venv/bin/python experiments/guarantee/real_sets.py RUN [RUN ...] --name NAME [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fashionclf.core.io import atomic_write_bytes, to_json
from fashionclf.engine.runs import load_predictions, read_json
from fashionclf.evaluation.calibrate import guaranteed_rule, point_estimate_threshold

SIZES = (300, 600, 1000, 2000, 4000)
DRAWS = 20


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits.float() / temperature).softmax(1)


def _apply(threshold, probs, labels) -> dict:
    conf, pred = probs.max(1)
    auto = conf >= threshold if threshold is not None else torch.zeros(len(conf), dtype=torch.bool)
    n, right = int(auto.sum()), int((auto & (pred == labels)).sum())
    return {"threshold": threshold, "share": n / len(conf), "precision": right / n if n else None, "errors": n - right}


def one_run(run_dir: Path, rng) -> dict:
    temperature = read_json(run_dir / "metrics.json")["calibration"]["temperature"]
    (vl, vy), (tl, ty) = load_predictions(run_dir, "val"), load_predictions(run_dir, "test")
    vp, tp = _probs(vl, temperature), _probs(tl, temperature)
    vconf, vpred = vp.max(1)
    right = vpred == vy
    out = {"run": str(run_dir), "calibration_items": len(vy), "test_items": len(ty)}
    out["test_accuracy"] = float((tp.argmax(1) == ty).float().mean())
    out["guaranteed"] = _apply(guaranteed_rule(vconf, right)["threshold"], tp, ty)
    out["old"] = _apply(point_estimate_threshold(vp, vy), tp, ty)
    out["by_size"] = {}
    for n in (s for s in SIZES if s < len(vy)):
        rows = []
        for _ in range(DRAWS):
            idx = torch.from_numpy(rng.choice(len(vy), n, replace=False))
            rows.append(_apply(guaranteed_rule(vconf[idx], right[idx])["threshold"], tp, ty))
        precisions = [r["precision"] for r in rows if r["precision"] is not None]
        out["by_size"][str(n)] = {
            "share": float(np.mean([r["share"] for r in rows])),
            "labels_nothing": float(np.mean([r["threshold"] is None for r in rows])),
            "precision_min": min(precisions) if precisions else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--name", required=True, help="what the runs are, for the results file")
    ap.add_argument("--out", default=None, help="default experiments/guarantee/results/real_<name>.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = [one_run(r, rng) for r in args.runs]
    out = Path(args.out or f"experiments/guarantee/results/real_{args.name}.json")
    atomic_write_bytes(out, to_json({"name": args.name, "command": " ".join(sys.argv), "runs": rows}).encode())
    for r in rows:
        g, o = r["guaranteed"], r["old"]
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        print(f"{r['run']}: test acc {r['test_accuracy']:.4f}, {r['calibration_items']} calibration items")
        print(f"  guaranteed: share {g['share']:.4f} precision {fmt(g['precision'])} ({g['errors']} wrong)")
        print(f"  old:        share {o['share']:.4f} precision {fmt(o['precision'])} ({o['errors']} wrong)")
        for n, s in r["by_size"].items():
            worst = fmt(s["precision_min"])
            print(f"  {n:>5} items: share {s['share']:.4f}, nothing in {s['labels_nothing']:.0%}, worst precision {worst}")
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
