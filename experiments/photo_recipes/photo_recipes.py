"""Compare training recipes on an image-folder dataset: groups of finished runs, one per seed.

Each group is one recipe trained with several seeds (e.g. the runs of one `fashionclf compare --data`
folder). The table gives validation and test accuracy as mean ± std over the group's runs and the
training time; every group after the first is also tested against the first, run by run on the same
test photos (McNemar, paired by seed, with the study report's verdict), because at a few hundred
test photos a point is within noise.
Choose on validation; the test column is what the chosen recipe then scores. The probabilities of a
group's runs averaged (and of all runs) show what more models, at several times the training time,
would buy: a ceiling, not a recipe within the time budget.

    .venv/bin/python experiments/photo_recipes/photo_recipes.py --group "baseline=DIR1,DIR2,DIR3" --group "cutmix=DIR4,DIR5,DIR6" \\
        [--out experiments/photo_recipes/results/photo_recipes.json]
"""

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from fashionclf.core.io import atomic_write_text
from fashionclf.engine.runs import load_predictions, read_json
from fashionclf.evaluation.metrics import mean_std
from fashionclf.evaluation.paired import compare_seeds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/, for common.py
import common  # noqa: E402


def group_row(name: str, dirs: list[Path]) -> dict:
    metrics = [read_json(d / "metrics.json") for d in dirs]
    seeds = [read_json(d / "meta.json")["config"]["seed"] for d in dirs]
    val, test = mean_std([m["val_accuracy"] * 100 for m in metrics]), mean_std([m["test_accuracy"] * 100 for m in metrics])
    return {
        "name": name,
        "runs": [str(d) for d in dirs],
        "seeds": seeds,
        "val": val,
        "test": test,
        "test_each": [m["test_accuracy"] * 100 for m in metrics],
        "val_each": [m["val_accuracy"] * 100 for m in metrics],
        "train_seconds": [m["train_seconds"] for m in metrics],
        "best_epoch": [m["best_epoch"] for m in metrics],
        # after temperature scaling on validation, scored on test: the share labelled without a person
        "ece": [m["test_calibration"]["ece"] * 100 for m in metrics],
        "ece_uncalibrated": [m["test_calibration"]["ece_uncalibrated"] * 100 for m in metrics],
        "coverage_at_precision": [m["test_calibration"]["coverage_at_precision"] for m in metrics],
    }


def paired(base: dict, other: dict) -> dict:
    """McNemar per seed that both groups ran (the same test photos, two recipes) and its verdict."""
    base_runs, other_runs = dict(zip(base["seeds"], base["runs"])), dict(zip(other["seeds"], other["runs"]))
    ca, cb = {}, {}
    for seed in (s for s in base_runs if s in other_runs):
        (la, ya), (lb, yb) = load_predictions(base_runs[seed]), load_predictions(other_runs[seed])
        if not ya.equal(yb):
            raise SystemExit(
                f"{base_runs[seed]} and {other_runs[seed]} were tested on different photos; compare runs of the same data and split"
            )
        ca[seed], cb[seed] = (la.argmax(1) == ya).numpy(), (lb.argmax(1) == yb).numpy()
    res = compare_seeds(ca, cb, gain=other["test"][0] - base["test"][0])
    pairs = [{k: p[k] for k in ("seed", "b", "c", "p")} for p in res.pairs]
    return {"pairs": pairs, "significant": res.significant, "gain_points": res.gain, "verdict": res.word}


def ensemble_accuracy(runs: list[str]) -> float:
    """Test accuracy of the runs' softmax probabilities averaged: a ceiling for what more seeds could buy."""
    preds = [load_predictions(r) for r in runs]
    if any(not y.equal(preds[0][1]) for _, y in preds):
        raise SystemExit("the runs were tested on different photos; an ensemble needs the same data and split")
    probs = sum(logits.softmax(1) for logits, _ in preds) / len(preds)
    return (probs.argmax(1) == preds[0][1]).float().mean().item() * 100


def main():
    ap = argparse.ArgumentParser()
    common.add_group_argument(ap, "RUN_DIR", "one recipe's runs, one per seed (repeatable; the first group is the baseline)")
    ap.add_argument("--out", default="experiments/photo_recipes/results/photo_recipes.json")
    args = ap.parse_args()
    rows = [group_row(name, [Path(d) for d in dirs]) for name, dirs in common.parse_groups(args.group).items()]
    for row in rows[1:]:
        vs = paired(rows[0], row)
        row["vs_first"], row["vs_first_verdict"] = vs.pop("pairs"), vs
    print(f"{'recipe':40s} {'runs':>4s} {'val %':>14s} {'test %':>14s} {'train s':>10s} {'ECE %':>9s} {'auto %':>9s}  vs first (b/c, p)")
    for row in rows:
        t, ece = row["train_seconds"], row["ece"]
        auto = [next(iter(c.values()))["coverage"] * 100 for c in row["coverage_at_precision"]]
        pairs = "  ".join(f"s{p['seed']} {p['b']}/{p['c']} p={p['p']:.2g}" for p in row.get("vs_first", []))
        print(
            f"{row['name'][:40]:40s} {len(row['runs']):4d} {row['val'][0]:6.2f} ± {row['val'][1]:4.2f} "
            f"{row['test'][0]:6.2f} ± {row['test'][1]:4.2f} {min(t):4.0f}-{max(t):4.0f} {min(ece):3.1f}-{max(ece):3.1f} "
            f"{min(auto):3.0f}-{max(auto):3.0f}  {pairs}"
        )
    print("ECE: after temperature scaling; auto: share of the test photos above the run's threshold for its target precision")
    for row in rows[1:]:
        v = row["vs_first_verdict"]
        if v["verdict"]:
            n = len(row["vs_first"])
            print(
                f"{rows[0]['name']} → {row['name']}: {v['gain_points']:+.2f} test points, "
                f"significant in {v['significant']} of {n} seed pairs: {v['verdict']}."
            )
    for row in rows:
        row["ensemble_test"] = ensemble_accuracy(row["runs"])
    everything = [r for row in rows for r in row["runs"]]
    ensembles = {"each group": {row["name"]: row["ensemble_test"] for row in rows}, "all runs": ensemble_accuracy(everything)}
    print("test % of the probabilities averaged: " + ", ".join(f"{k} {v:.2f}" for k, v in ensembles["each group"].items()))
    print(f"test % of all {len(everything)} runs averaged: {ensembles['all runs']:.2f}")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "groups": rows,
        "all_runs_ensemble_test": ensembles["all runs"],
    }
    atomic_write_text(args.out, json.dumps(report, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
