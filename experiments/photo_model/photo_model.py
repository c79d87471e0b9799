"""Score RGB photo runs with Fashion-MNIST's ten classes (made with photo_fmnist_folder.py) on unseen data.

For each run: held-out phone photos (a shop folder the run never trained on, mapped by --class-map),
catalogue-style shots (tools/catalogue_shots.py, made from Fashion-MNIST test images), and the
whole Fashion-MNIST test set as the run sees scans (negated to a dark item on white, letterboxed),
each through the run's own decoding; then mean and sample standard deviation per group of runs.
Calibrated ECE and the share labelled automatically at 99% precision come from the run's own
temperature and threshold, fitted on its validation split.

    .venv/bin/python experiments/photo_model/photo_model.py --photos ../shared/clothing-photos/validation --class-map "$MAP" \
        --catalogue /tmp/catshots --group "photo model=RUN0,RUN1,RUN2" [--out experiments/photo_model/results/photo_model.json]

Nothing here is fitted: the runs were trained and chosen before, on their own splits.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from fashionclf.core.io import atomic_write_text, to_json
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.data.folders import map_folders, parse_class_map, scans_as_photos
from fashionclf.engine.runs import load_run
from fashionclf.infer.predict import load_labelled_photos
from fashionclf.study.compare import evaluate_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/, for common.py
import common  # noqa: E402


def score(run_dir: str, args, data) -> dict:
    run = load_run(run_dir)
    size = run.meta["input"]["height"]
    x, y = load_labelled_photos(run, args.photos, class_map=parse_class_map(args.class_map))[:2]
    photos = evaluate_run(run, x, y)
    row = {"run": run_dir, "photos": photos["accuracy"], "photos_n": len(y), "photos_ece": photos.get("ece")}
    row["photos_coverage_99"] = (photos.get("coverage_at_precision") or {}).get("0.99")
    row["train_seconds"] = run.metrics.get("train_seconds")
    if args.catalogue:
        cx, cy = load_labelled_photos(run, args.catalogue)[:2]
        row["catalogue"] = evaluate_run(run, cx, cy)["accuracy"]
    n = args.test_limit or len(data.test_y)
    # The run's classes are its folders in sorted order, not Fashion-MNIST's label order.
    index = map_folders(list(data.classes), run.classes, None, "Fashion-MNIST")
    to_run = torch.tensor([index[name] for name in data.classes])
    test = evaluate_run(run, scans_as_photos(data.test_x[:n], size), to_run[data.test_y[:n]])
    row["test"], row["test_n"] = test["accuracy"], n
    row["test_ece"] = test.get("ece")
    row["test_coverage_99"] = (test.get("coverage_at_precision") or {}).get("0.99")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="held-out labelled photos, one subfolder per category")
    ap.add_argument("--class-map", required=True)
    ap.add_argument("--catalogue", help="tools/catalogue_shots.py output")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N Fashion-MNIST test images")
    common.add_group_argument(ap, "RUN", "one group of photo runs, e.g. one recipe's seeds (repeatable)")
    ap.add_argument("--out", default="experiments/photo_model/results/photo_model.json")
    args = ap.parse_args()
    data = load_fashion_mnist(allow_download=False)
    groups = {name: [score(r, args, data) for r in runs] for name, runs in common.parse_groups(args.group).items()}
    print("| runs | seeds | held-out photos | catalogue shots | Fashion-MNIST test | ECE photos | auto at 99% (photos) |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        cols = [common.fmt_mean_std([r[k] for r in rows]) for k in ("photos", "catalogue", "test", "photos_ece")]
        cov = [r["photos_coverage_99"]["coverage"] for r in rows if r.get("photos_coverage_99")]
        print(f"| {name} | {len(rows)} | " + " | ".join(cols) + f" | {common.fmt_mean_std(cov)} |")
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args), "groups": groups}
    atomic_write_text(args.out, to_json(doc))


if __name__ == "__main__":
    main()
