"""Distillation: do three runs' soft labels on a shop's unlabelled photos make one small run better? (issue 20 item 3)

Built on the loop study's work folder (experiments/loop_pays/loop_pays.py made it: the same split of
`clothing-photos/train` into a labelled half and 1,536 incoming unlabelled photos, `clothing-photos/validation`
held out as every run's test split, and three "first" runs, Lite0 96 px, seeds 0, 1, 2, on the labelled half).

- **teacher**: the three first runs asked together (their calibrated probabilities averaged, `predict --with`'s
  rule), scored here on the held-out split from their stored test logits; its review rule is predict's joint one
  (flagged where the runs disagree or the average is below the strictest run's 99%-precision threshold).
- **student** (per seed): `fashionclf train --data first.csv --unlabelled incoming/ --teacher seed0/first
  --teacher seed1/first --teacher seed2/first`, the first runs' recipe and seed: a single Lite0 that serves as fast
  as a first run. Compared with the first run of its seed (McNemar on the held-out photos).

For each: top-1 on the held-out split, and its automatic share at the 99%-precision threshold fitted on validation
with the precision realised there. The teachers include the student's own seed's first run (the ensemble is the
three); none of them saw the held-out photos.

    .venv/bin/python experiments/distill/distill.py /tmp/loop --seeds 0,1,2 --out experiments/distill/results/distill.json

Resumable: a finished student (metrics.json present) is not trained again.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loop_pays.loop_pays import FCLF, TRAIN  # noqa: E402  (the loop study's recipe, written out there)

from fashionclf.engine.runs import load_predictions  # noqa: E402
from fashionclf.evaluation.metrics import mcnemar, mean_std  # noqa: E402


def scored(run: Path) -> dict:
    """A run's held-out figures as its metrics.json has them."""
    m = json.loads((run / "metrics.json").read_text())
    at = m["test_calibration"]["coverage_at_precision"]["0.99"]
    figures = {"test_accuracy": m["test_accuracy"], "auto_share": at["coverage"], "auto_precision": at["precision"]}
    return {"run": str(run), **figures, "train_seconds": m["train_seconds"]}


def correct(run: Path) -> torch.Tensor:
    logits, labels = load_predictions(run)
    return logits.argmax(1) == labels


def ensemble(runs: list[Path]) -> dict:
    """The runs asked together on the held-out split: calibrated probabilities averaged; flagged where they disagree
    or the average is below the strictest run's threshold, as predict.joint_results flags them. Its "none of these"
    flag is left out: the stored test predictions are normalised log-probabilities (their energy is 0 for every
    item), not the raw logits the score needs, so joint_results on them calls all 341 photos unknown."""
    probs, tops, strictest = [], [], 0.0
    for r in runs:
        logits, labels = load_predictions(r)
        cal = json.loads((r / "metrics.json").read_text())["calibration"]
        p = torch.softmax(logits / cal["temperature"], 1)
        probs.append(p)
        tops.append(p.argmax(1))
        strictest = max(strictest, cal["threshold"] if cal.get("threshold") is not None else float("inf"))
    mean = torch.stack(probs).mean(0)
    conf, pred = mean.max(1)
    agree = torch.stack(tops).eq(pred).all(0)
    auto = agree & (conf >= strictest)
    right = pred == labels
    return {
        "runs": [str(r) for r in runs],
        "test_accuracy": right.float().mean().item(),
        "auto_share": auto.float().mean().item(),
        "auto_precision": right[auto].float().mean().item() if auto.any() else None,
    }


def student(work: Path, seed: int, teachers: list[Path]) -> dict:
    d = work / f"seed{seed}"
    out = d / "distilled"
    if not (out / "metrics.json").exists():
        args = ["train", "--data", str(d / "first.csv"), "--unlabelled", str(work / "incoming"), "--seed", str(seed)]
        args += [a for t in teachers for a in ("--teacher", str(t))]
        subprocess.run(FCLF + args + ["--out", str(out), "--overwrite"] + TRAIN, check=True)
    info = json.loads((out / "meta.json").read_text())["distillation"]
    first = d / "first"
    res = scored(out) | {k: info[k] for k in ("considered", "kept", "unknown", "unreadable")}
    return {"seed": seed, "first": scored(first), "student": res, "mcnemar_vs_first": mcnemar(correct(first), correct(out))}


def summary(rows: list[dict], key: str) -> dict:
    out = {}
    for f in ("test_accuracy", "auto_share", "auto_precision"):
        m, s = mean_std([r[key][f] for r in rows])
        out[f] = {"mean": m, "std": s}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path, help="the loop study's work folder (experiments/loop_pays/loop_pays.py)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    teachers = [args.work / f"seed{s}" / "first" for s in seeds]
    rows = [student(args.work, s, teachers) for s in seeds]
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "recipe": TRAIN,
        "teacher": ensemble(teachers),
        "seeds": rows,
        "first": summary(rows, "first"),
        "student": summary(rows, "student"),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
