"""Accuracy and review share of `fashionclf predict RUN --with RUN2` on labelled photos, for pairs of runs.

A 28x28 scan run (the photo cut out and shrunk, as Fashion-MNIST was made) and an RGB photo run (the
photo kept, tools/photo_fmnist_folder.py) fail on different photos: the scan route is strong on
clean catalogue shots, the photo route on cluttered phone photos. This scores each run alone and
the pair together, through predict_files, the code `predict` runs, on each labelled folder:
accuracy, and the share not flagged for review with the precision on that share.

    .venv/bin/python experiments/two_routes/two_routes.py --pair SCAN_RUN,RGB_RUN [--pair ...] \
        --folder "phone=../shared/clothing-photos/validation" --class-map phone="$MAP" --folder catalogue=/tmp/catshots \
        [--out experiments/two_routes/results/two_routes.json]

Nothing here is fitted: the equal weights and the review rule were fixed before measuring.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from fashionclf.core.io import atomic_write_text
from fashionclf.data.folders import mapped_items, parse_class_map
from fashionclf.engine.runs import load_run
from fashionclf.infer.predict import class_order, predict_files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/, for common.py
import common  # noqa: E402


def score(rows: list[dict], truth: list[str]) -> dict:
    ok = [r["label"] == t for r, t in zip(rows, truth)]
    auto = [o for r, o in zip(rows, ok) if not r["needs_review"]]
    return {
        "accuracy": sum(ok) / len(ok),
        "n": len(ok),
        "auto_share": len(auto) / len(ok),
        "auto_precision": sum(auto) / len(auto) if auto else None,
    }


def column(rows: list[dict], key: str, field: str = "accuracy") -> str:
    return common.fmt_mean_std([r[key][field] for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", required=True, help="SCAN_RUN,RGB_RUN (the first names the classes)")
    ap.add_argument("--folder", action="append", required=True, help="NAME=FOLDER of labelled photos")
    ap.add_argument("--class-map", action="append", default=[], help="NAME=MAP for a folder whose names need mapping")
    ap.add_argument("--out", default="experiments/two_routes/results/two_routes.json")
    args = ap.parse_args()
    maps = dict(m.split("=", 1) for m in args.class_map)
    results = []
    for pair in args.pair:
        first, second = (load_run(p) for p in pair.split(","))
        for spec in args.folder:
            name, folder = spec.split("=", 1)
            items = mapped_items(folder, first.classes, parse_class_map(maps.get(name)))
            paths, truth = [p for p, _ in items], [first.classes[i] for _, i in items]
            row = {"pair": pair, "folder": name}
            for key, run, also in (("scan", first, []), ("photo", second, []), ("both", first, [second])):
                preds = list(predict_files(run, paths, also=also))
                if key == "photo":  # the photo run names classes by its folders: compare by the first run's names
                    order = class_order(first, second).tolist()
                    for r in preds:
                        r["label"] = first.classes[order[r["index"]]]
                row[key] = score(preds, truth)
            results.append(row)
            print(
                f"{pair} {name}: "
                + ", ".join(
                    f"{k} {row[k]['accuracy'] * 100:.1f}% (auto {row[k]['auto_share'] * 100:.0f}%)" for k in ("scan", "photo", "both")
                ),
                flush=True,
            )
    print("\n| folder | scan run | photo run | both | both: labelled automatically (precision) |\n|---|---|---|---|---|")
    for name in dict.fromkeys(r["folder"] for r in results):
        rows = [r for r in results if r["folder"] == name]
        acc = [column(rows, k) for k in ("scan", "photo", "both")]
        auto = f"{column(rows, 'both', 'auto_share')} ({column(rows, 'both', 'auto_precision')})"
        print(f"| {name} ({rows[0]['scan']['n']}) | " + " | ".join(acc) + f" | {auto} |")
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args), "results": results}
    atomic_write_text(args.out, json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
