"""Score Fashion-MNIST runs on a shop's held-out photos, the test set, corruptions and catalogue shots.

The table of the README's "A shop's own photos in training": for each run, accuracy on labelled
photos (converted as `fashionclf predict` converts them, folder names mapped by --class-map), on the
Fashion-MNIST test set, the mean of the corruption suite on the first --limit test images, and on
catalogue-style shots made by tools/catalogue_shots.py. Then mean and sample standard deviation
per group of runs (--group NAME=RUN,RUN,...).

    .venv/bin/python tools/catalogue_shots.py /tmp/catshots --per-class 50
    .venv/bin/python experiments/shop_photos/shop_photos.py --photos ../shared/clothing-photos/validation --class-map "$MAP" \
        --catalogue /tmp/catshots --group "photos+shop=RUN0,RUN1,RUN2" --group "plain=RUN3" \
        --out experiments/shop_photos/results/shop_photos.json

Nothing here is fitted: the runs were trained before and the photos were never trained or chosen on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashionclf.core.io import atomic_write_text, to_json
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.data.folders import parse_class_map
from fashionclf.engine.runs import load_run
from fashionclf.infer.predict import load_labelled_photos
from fashionclf.study.compare import evaluate_run, robustness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/, for common.py
import common  # noqa: E402

_converted: dict = {}


def photos_for(run, folder: str, class_map: dict | None = None):
    """The folder's photos as the run takes them, converted once per kind of input (GrabCut costs ~40 ms a photo)."""
    key = (folder, json.dumps(run.meta.get("input", {}), sort_keys=True))
    if key not in _converted:
        _converted[key] = load_labelled_photos(run, folder, class_map=class_map)[:2]
    return _converted[key]


def score(run_dir: str, photos: str, class_map: dict, catalogue: str | None, limit: int, data) -> dict:
    run = load_run(run_dir)
    x, y = photos_for(run, photos, class_map)
    row = {"run": run_dir, "photos": evaluate_run(run, x, y)["accuracy"], "photos_n": len(y)}
    test = evaluate_run(run, data.test_x, data.test_y)
    row["test"] = test["accuracy"]
    row["ece"] = test.get("ece")
    row["coverage_99"] = (test.get("coverage_at_precision") or {}).get("0.99")
    row["corrupted_mean"] = robustness(run, data.test_x[:limit], data.test_y[:limit])["mean"] if limit else None
    if catalogue:
        cx, cy = photos_for(run, catalogue)
        row["catalogue"] = evaluate_run(run, cx, cy)["accuracy"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True, help="labelled photos, one subfolder per class")
    ap.add_argument("--class-map", help="folder names to classes, as for `fashionclf evaluate --class-map`")
    ap.add_argument("--catalogue", help="catalogue shots from tools/catalogue_shots.py")
    ap.add_argument("--limit", type=int, default=2000, help="test images for the corruption suite (0 = skip it)")
    common.add_group_argument(ap, "RUN", "one group of runs, e.g. one recipe's seeds (repeatable)")
    ap.add_argument("--out", help="write every row as JSON here (experiments/shop_photos/results/ keeps the study's)")
    args = ap.parse_args()
    class_map = parse_class_map(args.class_map)
    data = load_fashion_mnist(None, allow_download=False)
    groups = {
        name: [score(r, args.photos, class_map, args.catalogue, args.limit, data) for r in runs]
        for name, runs in common.parse_groups(args.group).items()
    }
    print(f"| runs | seeds | photos ({groups[next(iter(groups))][0]['photos_n']}) | test | corrupted mean | catalogue shots |")
    print("|---|---|---|---|---|---|")
    for name, rows in groups.items():
        cols = [common.fmt_mean_std([r.get(k) for r in rows]) for k in ("photos", "test", "corrupted_mean", "catalogue")]
        print(f"| {name} | {len(rows)} | " + " | ".join(cols) + " |")
    if args.out:
        atomic_write_text(Path(args.out), to_json({"photos": args.photos, "class_map": class_map, "groups": groups}))


if __name__ == "__main__":
    main()
