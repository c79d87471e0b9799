"""What distilling the store route into one fine-tuned Lite0 keeps, and what it buys in serving time.

A shop's situation, simulated on a photo folder with labels (`clothing-photos/train`): the test split is carved as
every run carves it (15% per class, split seed S); the rest is cut in two halves per class, one labelled, one
whose labels are hidden (the shop's new, unlabelled photos); `validation/` is the validation split. Three runs,
through the command line, on the same test photos:

- teacher: the store route (`train --data LABELLED --store STORE`: a head on frozen Lite0/1/2 features);
- baseline: `efficientnet_lite0` fine-tuned on the labelled half alone (`--model efficientnet_lite0`);
- student: the same Lite0 fine-tuned on the labelled half plus the teacher's soft labels on the unlabelled half
  (`--unlabelled HALF --teacher TEACHER`, training/distill.py).

Then, unless --repeats 0, the time `run.predict([photo])` takes for one phone photo (the median of --repeats calls after two warm-ups,
the model loaded once; what `serve` does per request, without HTTP), for the teacher and the student.

    .venv/bin/python experiments/embed_once/distill.py --photos ../shared/clothing-photos --store STORE \\
        --work /tmp/distill --seeds 0 1 2 --out experiments/embed_once/results/distill.json

Photos are hard-linked into --work (same content: the store embeds nothing again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fashionclf import load_run
from fashionclf.data.folders import _split
from fashionclf.data.layouts import read_layout

CLI = [sys.executable, "-m", "fashionclf"]


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.link(src, dst)


def make_split(photos: Path, work: Path, seed: int) -> tuple[Path, Path, int, int]:
    """work/labelled/{train,val,test}/CLASS and work/unlabelled: the folders of one split seed."""
    layout = read_layout(photos / "train")
    items = layout.splits.get("all") or layout.splits["train"]
    y = torch.tensor([c for _, c in items])
    rest, test = _split(y, 0.15, seed)
    keep, hide = _split(y[rest], 0.5, seed + 7)
    lab, unl = work / "labelled", work / "unlabelled"
    for split, idx in (("train", rest[keep]), ("test", test)):
        for i in idx.tolist():
            path, c = items[i]
            link(path, lab / split / layout.classes[c] / path.name)
    for i in rest[hide].tolist():
        path, c = items[i]
        link(path, unl / f"{layout.classes[c]}-{path.name}")
    vclasses, vitems = read_layout(photos / "validation").classes, read_layout(photos / "validation").splits
    for path, c in vitems.get("all") or vitems["train"]:
        link(path, lab / "val" / vclasses[c] / path.name)
    return lab, unl, len(keep), len(hide)


def train(args: list[str], out: Path) -> float:
    if not (out / "metrics.json").exists():
        start = time.perf_counter()
        subprocess.run([*CLI, "train", *args, "--out", str(out), "--quiet"], check=True)
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
    return float((out / "wall_seconds.txt").read_text())


def latency(run_dir: Path, photo: Path, repeats: int) -> float:
    run = load_run(run_dir)
    for _ in range(2):
        run.predict([photo])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run.predict([photo])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def figures(run_dir: Path, wall: float) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    at = next(iter(((m.get("test_calibration") or {}).get("coverage_at_precision") or {None: {}}).values()))
    return {
        "test_accuracy": m["test_accuracy"],
        "automatic_share": at.get("coverage"),  # test photos the run's review rule labels alone, and their precision
        "realised_precision": at.get("precision"),
        "calibration_items": (m.get("calibration") or {}).get("calibration_items"),
        "wall_seconds": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", type=Path, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--phone-photo", type=Path, help="the photo timed (default: the first validation photo)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per run (0: no timing; time only on an idle machine)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    rows = []
    for s in args.seeds:
        w = args.work / f"s{s}"
        lab, unl, n_lab, n_unl = make_split(args.photos, w, s)
        row = {"seed": s, "labelled": n_lab, "unlabelled": n_unl}
        row["teacher"] = figures(w / "teacher", train(["--data", str(lab), "--store", args.store], w / "teacher"))
        lite = ["--data", str(lab), "--model", "efficientnet_lite0", "--seed", str(s)]
        row["baseline"] = figures(w / "baseline", train(lite, w / "baseline"))
        row["student"] = figures(w / "student", train([*lite, "--unlabelled", str(unl), "--teacher", str(w / "teacher")], w / "student"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    photo = args.phone_photo or sorted((args.photos / "validation").rglob("*.jpg"))[0]
    speed = {k: latency(args.work / f"s{args.seeds[0]}" / k, photo, args.repeats) for k in ("teacher", "student")} if args.repeats else None
    out = {"photo": str(photo), "seconds_per_photo": speed, "seeds": rows}
    for k in ("teacher", "baseline", "student"):
        accs = [r[k]["test_accuracy"] for r in rows]
        out[k] = {"test_accuracy_mean": statistics.mean(accs), "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0}
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
