"""The guaranteed review rule against the old point estimate, on synthetic calibration items whose true precision
curve is known (docs/results/guarantee.md).

Confidence s ~ U(0, 1); an item is right with probability 1 - a (1 - s)^3 - floor, so the precision of the items
above a threshold t is 1 - a (1 - t)^3 / 4 - floor and the share of new items labelled automatically is 1 - t.
For each calibration size, 1,000 draws: how often each rule's true precision reaches the target, and the share it
labels automatically (mean over draws; 0 where it labels nothing). The oracle is the largest share at the target.

    .venv/bin/python experiments/guarantee/simulate.py [--draws 1000] [--out experiments/guarantee/results/simulate.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fashionclf.core.io import atomic_write_bytes, to_json
from fashionclf.evaluation.calibrate import guaranteed_rule, point_estimate_threshold

CURVES = {  # name: (a, floor)
    "smooth": (0.3, 0.0),
    "confident mistakes (0.3% wrong even at the top)": (0.3, 0.003),
}
SIZES = (300, 600, 1000, 2000, 5000, 10000)


def true_precision(t: float | None, a: float, floor: float) -> float:
    return 1.0 if t is None else 1 - a * (1 - t) ** 3 / 4 - floor


def oracle_share(target: float, a: float, floor: float) -> float:
    return min(1.0, ((1 - target - floor) * 4 / a) ** (1 / 3))


def one_size(n: int, draws: int, a: float, floor: float, target: float, delta: float, rng) -> dict:
    rows = {"guaranteed": [], "old": []}
    for _ in range(draws):
        s = rng.random(n)
        right = rng.random(n) < 1 - a * (1 - s) ** 3 - floor
        new = guaranteed_rule(torch.from_numpy(s), torch.from_numpy(right), target, delta)["threshold"]
        top = torch.from_numpy(0.5 + s / 2)  # two-class probabilities with confidence 0.5 + s / 2 (same order as s)
        old = point_estimate_threshold(torch.stack([top, 1 - top], 1), torch.from_numpy((~right).astype(np.int64)), target)
        rows["guaranteed"].append(new)
        rows["old"].append(None if old is None else 2 * old - 1)
    out = {}
    for rule, ts in rows.items():
        out[rule] = {
            "target_met": float(np.mean([true_precision(t, a, floor) >= target for t in ts])),
            "auto_share": float(np.mean([0.0 if t is None else 1 - t for t in ts])),
            "labels_nothing": float(np.mean([t is None for t in ts])),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--out", default="experiments/guarantee/results/simulate.json")
    args = ap.parse_args()
    rng, t0 = np.random.default_rng(0), time.time()
    results = {"target": args.target, "delta": args.delta, "draws": args.draws, "curves": {}}
    for name, (a, floor) in CURVES.items():
        per = {str(n): one_size(n, args.draws, a, floor, args.target, args.delta, rng) for n in SIZES}
        results["curves"][name] = {"a": a, "floor": floor, "oracle_share": oracle_share(args.target, a, floor), "sizes": per}
    results["seconds"] = round(time.time() - t0, 1)
    atomic_write_bytes(Path(args.out), to_json(results).encode())
    for name, c in results["curves"].items():
        print(f"{name}: oracle share {c['oracle_share']:.3f}")
        for n, r in c["sizes"].items():
            g, o = r["guaranteed"], r["old"]
            print(
                f"  n={n:>6}: guaranteed met {g['target_met']:.3f} share {g['auto_share']:.3f} (none {g['labels_nothing']:.2f})"
                f" | old met {o['target_met']:.3f} share {o['auto_share']:.3f}"
            )


if __name__ == "__main__":
    main()
