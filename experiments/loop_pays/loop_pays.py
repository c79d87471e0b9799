"""Does the shop's loop pay? A run, its own flagged queue reviewed for 200 photos, and the run trained again.

Issue 17: "a run retrained with 200 reviewed photos from its own flagged queue beats the first run on the
held-out split, measured over 3 seeds". Everything goes through the commands a shop runs:

1. The photos of `clothing-photos/train` are split once (seed 0, per class): half are the shop's labelled
   photos (of those, 90% train and 10% validation), half arrive as new, unlabelled products.
   `clothing-photos/validation` is the held-out test split: never trained on, never chosen on.
2. `fashionclf train` on the labelled half: the first run ("first").
3. `fashionclf label FIRST incoming/ --db catalogue.db`: the new products into a catalogue; the run labels
   some automatically (its calibrated 99%-precision rule) and flags the rest.
4. `fashionclf labels export` before any review: the labelled half plus the automatic labels trains
   "+auto" (what the loop gives with no person).
5. A reviewer takes the queue as the review page serves it (db.claim_next: least certain first) for 200
   photos and answers with the photo's true folder (accept when the run was right, correct otherwise);
   `labels export` again: the labelled half plus automatic and reviewed labels trains "+auto+200 reviewed".
6. `fashionclf train --data labelled --unlabelled incoming/` (issue 20, self-training): the first run as
   teacher, its confident labels, and a student with stronger augmentation ("self-training").

Each of the three runs is trained with the same seed; the seeds differ in training only (same split).

    .venv/bin/python experiments/loop_pays/loop_pays.py /tmp/loop --photos ../shared/clothing-photos --seeds 0,1,2 \\
        [--self-training-seeds 0,1,2] [--out experiments/loop_pays/results/loop_pays.json]

Resumable: a finished run folder (metrics.json present) is not trained again. The training recipe is
written out below (TRAIN); it is a cheaper stand-in (96 px, 8 epochs) for the 192 px recipe of
docs/results/clothing-photos.md, so that 9 trainings fit in a session on two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REVIEWS = 200
TRAIN = ["--model", "efficientnet_lite0", "--image-size", "96", "--epochs", "8", "--batch-size", "64", "--quiet"]
FCLF = [sys.executable, "-m", "fashionclf"]


def split_photos(photos: Path, work: Path) -> dict:
    """labelled.csv (train + val rows), incoming/ (links to the other half) and truth.json (incoming file -> class)."""
    rng = random.Random(0)
    labelled, truth = [], {}
    incoming = work / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    for folder in sorted(p for p in (photos / "train").iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        rng.shuffle(files)
        half = len(files) // 2
        n_val = max(1, round(0.1 * half))
        labelled += [(f, folder.name, "val" if i < n_val else "train") for i, f in enumerate(files[:half])]
        for f in files[half:]:
            link = incoming / f"{folder.name}-{f.name}"  # the name is for the oracle's bookkeeping only
            if not link.exists():
                link.symlink_to(f.resolve())
            truth[_key(link)] = folder.name
    test = [(f, p.name, "test") for p in sorted((photos / "validation").iterdir()) if p.is_dir() for f in sorted(p.iterdir())]
    (work / "truth.json").write_text(json.dumps(truth, indent=0))
    return {"labelled": labelled, "test": test, "truth": truth}


def _key(path) -> str:
    """The oracle's key for a photo: the real file's path (the catalogue keeps the link, the export the file)."""
    return os.path.realpath(path)


def write_manifest(path: Path, rows: list[tuple[Path, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([str(Path(p).absolute()), label, split] for p, label, split in rows)
    return path


def exported_rows(export_csv: Path) -> list[tuple[Path, str, str]]:
    with export_csv.open() as f:
        return [(export_csv.parent / r["path"], r["label"], "train") for r in csv.DictReader(f)]


def train(manifest: Path, out: Path, seed: int) -> dict:
    if not (out / "metrics.json").exists():
        subprocess.run(FCLF + ["train", "--data", str(manifest), "--seed", str(seed), "--out", str(out), "--overwrite"] + TRAIN, check=True)
    m = json.loads((out / "metrics.json").read_text())
    return {"run": str(out), "test_accuracy": m["test_accuracy"], "train_seconds": m["train_seconds"]}


def review(catalogue: Path, truth: dict, n: int) -> dict:
    """n decisions as the page makes them: the next least certain item, answered with its true class."""
    from fashionclf.review import db

    conn = db.connect(catalogue)
    counts = {"accept": 0, "correct": 0}
    try:
        for _ in range(n):
            item = db.claim_next(conn, "oracle")
            if item is None:
                break
            true = truth[_key(item["path"])]
            action = "accept" if item["label"] == true and not item["predicted_unknown"] else "correct"
            db.decide(conn, item["id"], item["version"], action, "oracle", None if action == "accept" else true)
            counts[action] += 1
        counts["stats_after"] = db.stats(conn)
    finally:
        conn.close()
    return counts


def one_seed(work: Path, seed: int, split: dict, with_self_training: bool = True) -> dict:
    d = work / f"seed{seed}"
    d.mkdir(exist_ok=True)
    first = train(write_manifest(d / "first.csv", split["labelled"] + split["test"]), d / "first", seed)
    cat = d / "catalogue.db"
    if not (d / "auto.csv").exists():
        cat.unlink(missing_ok=True)
        subprocess.run(FCLF + ["label", first["run"], str(work / "incoming"), "--db", str(cat), "--quiet"], check=True)
        subprocess.run(FCLF + ["labels", "export", str(cat), "--out", str(d / "auto.csv")], check=True)
    auto_rows = exported_rows(d / "auto.csv")
    auto_right = sum(split["truth"][_key(p)] == label for p, label, _ in auto_rows)
    plus_auto = train(write_manifest(d / "auto-train.csv", split["labelled"] + auto_rows + split["test"]), d / "plus_auto", seed)
    if not (d / "reviewed.csv").exists():
        (d / "review.json").write_text(json.dumps(review(cat, split["truth"], REVIEWS)))
        subprocess.run(FCLF + ["labels", "export", str(cat), "--out", str(d / "reviewed.csv")], check=True)
    rows = exported_rows(d / "reviewed.csv")
    reviewed = train(write_manifest(d / "reviewed-train.csv", split["labelled"] + rows + split["test"]), d / "plus_reviewed", seed)
    return {
        "seed": seed,
        "first": first,
        "plus_auto": {**plus_auto, "added": len(auto_rows), "added_right": auto_right},
        "plus_reviewed": {**reviewed, "added": len(rows), "review": json.loads((d / "review.json").read_text())},
        "self_training": self_training(work, d, seed) if with_self_training else None,
    }


def self_training(work: Path, d: Path, seed: int) -> dict:
    """`train --unlabelled incoming/`: the student of the first run. The teacher it would train is the first run
    (same recipe, seed and data), so that run is copied to where train looks for a finished teacher."""
    out = d / "student"
    if not (out / "metrics.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        if not (d / "student-teacher").exists():
            shutil.copytree(d / "first", d / "student-teacher")
        args = ["train", "--data", str(d / "first.csv"), "--unlabelled", str(work / "incoming"), "--seed", str(seed)]
        subprocess.run(FCLF + args + ["--out", str(out)] + TRAIN, check=True)
    st = json.loads((out / "meta.json").read_text())["self_training"]
    m = json.loads((out / "metrics.json").read_text())
    return {"run": str(out), "test_accuracy": m["test_accuracy"], "train_seconds": m["train_seconds"], **st}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--photos", type=Path, default=Path("../shared/clothing-photos"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--self-training-seeds", help="the seeds that also train the self-training arm (default: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    st_seeds = args.seeds if args.self_training_seeds is None else args.self_training_seeds
    args.work.mkdir(parents=True, exist_ok=True)
    split = split_photos(args.photos, args.work)
    seeds = [one_seed(args.work, int(s), split, s in st_seeds.split(",")) for s in args.seeds.split(",")]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "photos": str(args.photos),
        "labelled": len(split["labelled"]),
        "incoming": len(split["truth"]),
        "held_out": len(split["test"]),
        "recipe": TRAIN,
        "reviews": REVIEWS,
        "seeds": seeds,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
