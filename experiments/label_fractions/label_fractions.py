"""How many labels does self-training save? Train with 25% / 50% / 100% of the labels, the rest unlabelled (issue 20).

Issue 20: "measure it with part of the labelled set's labels hidden (e.g. train with the labels of 25% / 50% / 100%
of clothing-photos/train, the rest as unlabelled)", and "with only 25% of the labels plus the rest unlabelled, within
2 points of the all-labels top-1". Everything through the commands a shop runs:

1. `clothing-photos/train` is split once per fraction (seed 0, per class): that fraction of each class is labelled
   (of those, 10% validation), the rest goes into `unlabelled-<pct>/` without labels (links).
   `clothing-photos/validation` is every run's held-out test split: never trained or chosen on.
2. `fashionclf train --data labelled-<pct>.csv --unlabelled unlabelled-<pct>/` trains the teacher (labels only, into
   `<pct>/s<seed>/student-teacher`) and the self-trained student (`<pct>/s<seed>/student`). At 100% there is nothing
   unlabelled: the run is `fashionclf train --data labelled-100.csv` alone.

The recipe is the loop study's (experiments/loop_pays/loop_pays.py: Lite0, 96 px, 8 epochs), so the 50% teacher
is trained the same way as that study's first runs.

    .venv/bin/python experiments/label_fractions/label_fractions.py /tmp/fractions --photos ../shared/clothing-photos \\
        --fractions 25,100 --seeds 0 --out experiments/label_fractions/results/label_fractions.json

Resumable: a finished run (metrics.json present) is not trained again.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loop_pays.loop_pays import FCLF, TRAIN, write_manifest  # noqa: E402  (the loop study's recipe)


def split(photos: Path, work: Path, pct: int) -> tuple[Path, Path | None]:
    """labelled-<pct>.csv (train, val and the held-out test rows) and unlabelled-<pct>/ (None at 100%)."""
    rng = random.Random(0)
    rows, unlabelled = [], work / f"unlabelled-{pct}"
    for folder in sorted(p for p in (photos / "train").iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        rng.shuffle(files)
        k = round(len(files) * pct / 100)
        n_val = max(1, round(0.1 * k))
        rows += [(f, folder.name, "val" if i < n_val else "train") for i, f in enumerate(files[:k])]
        for f in files[k:]:
            unlabelled.mkdir(parents=True, exist_ok=True)
            link = unlabelled / f"{folder.name}-{f.name}"
            if not link.exists():
                link.symlink_to(f.resolve())
    rows += [(f, p.name, "test") for p in sorted((photos / "validation").iterdir()) if p.is_dir() for f in sorted(p.iterdir())]
    return write_manifest(work / f"labelled-{pct}.csv", rows), (unlabelled if unlabelled.exists() else None)


def figures(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    at = m.get("test_calibration", {}).get("coverage_at_precision", {}).get("0.99", {})
    meta = json.loads((run / "meta.json").read_text())
    return {
        "run": str(run),
        "test_accuracy": m["test_accuracy"],
        "auto_share": at.get("coverage"),
        "auto_precision": at.get("precision"),
        "train_seconds": m["train_seconds"],
        "train_images": meta["data"]["train"],
    }


def one(work: Path, pct: int, seed: int, manifest: Path, unlabelled: Path | None) -> dict:
    d = work / str(pct) / f"s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    out = d / ("student" if unlabelled else "run")
    if not (out / "metrics.json").exists():
        args = ["train", "--data", str(manifest), "--seed", str(seed), "--out", str(out), "--overwrite"]
        args += ["--unlabelled", str(unlabelled)] if unlabelled else []
        subprocess.run(FCLF + args + TRAIN, check=True)
    row = {"fraction": pct, "seed": seed, "final": figures(out)}
    if unlabelled:
        row["teacher"] = figures(d / "student-teacher")
        st = json.loads((out / "meta.json").read_text())["self_training"]
        row["self_training"] = {k: st[k] for k in ("considered", "kept", "review", "unknown", "unreadable")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--photos", type=Path, default=Path("../shared/clothing-photos"))
    ap.add_argument("--fractions", default="25,50,100", help="percentages of clothing-photos/train labelled")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for pct in (int(p) for p in args.fractions.split(",")):
        manifest, unlabelled = split(args.photos, args.work, pct)
        rows += [one(args.work, pct, int(s), manifest, unlabelled) for s in args.seeds.split(",")]
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "photos": str(args.photos), "recipe": TRAIN, "runs": rows}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
