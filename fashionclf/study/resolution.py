"""The resolution study's report: one model trained at several image sizes, and whether the last step still pays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fashionclf.core.io import atomic_write_text
from fashionclf.engine.runs import load_predictions
from fashionclf.evaluation.metrics import mean_std
from fashionclf.evaluation.paired import RESOLUTION_WORDS, compare_seeds
from fashionclf.study.blocks import Block, Figure, Heading, Paragraph, Table, write_blocks
from fashionclf.study.figures import fig_resolution

FOCUS = ("T-shirt/top", "Pullover", "Coat", "Shirt")  # the classes the seed study could not tell apart


def _last_step(
    out: Path, lo_runs: list[dict], hi_runs: list[dict], classes: list[str], focus: list[str]
) -> tuple[list[list], dict, list[str]]:
    """McNemar per seed on the test images of each focus class (and on all of them) between the two largest sizes.

    Returns the table rows, the summary's 'last_step' and one verdict sentence per class tested.
    """
    lo, hi = lo_runs[0]["resolution"], hi_runs[0]["resolution"]
    ra = {r["seed"]: r for r in lo_runs}
    rb = {r["seed"]: r for r in hi_runs}
    paired_seeds = [seed for seed in ra if seed in rb]
    preds = {seed: (load_predictions(out / ra[seed]["run_dir"]), load_predictions(out / rb[seed]["run_dir"])) for seed in paired_seeds}
    rows, last_step, verdicts = [], {}, []
    for c in ["all classes", *focus]:
        ca, cb = {}, {}
        for seed, ((la, y), (lb, _)) in preds.items():
            keep = np.ones(len(y), bool) if c == "all classes" else (y == classes.index(c)).numpy()
            ca[seed], cb[seed] = (la.argmax(1) == y).numpy()[keep], (lb.argmax(1) == y).numpy()[keep]
        res = compare_seeds(ca, cb, words=RESOLUTION_WORDS)
        if not res.pairs:
            continue
        for t in res.pairs:
            rows.append([c, t["seed"], f"{t['accuracy_a'] * 100:.1f}", f"{t['accuracy_b'] * 100:.1f}", t["b"], t["c"], f"{t['p']:.2g}"])
        last_step[c] = {
            "gain_points": res.gain,
            "significant_pairs": res.significant,
            "pairs": len(res.pairs),
            "climbing": res.kind == "gain",
            "verdict": res.word.split(":")[0],
        }
        verdicts.append(
            f"{c}: {res.gain:+.2f} points from {lo} to {hi} px, significant in {res.significant} of {len(res.pairs)} seeds: {res.word}."
        )
    return rows, last_step, verdicts


def resolution_blocks(out: Path, results: dict, classes: list[str]) -> tuple[list[Block], dict]:
    """Blocks and a summary: accuracy per resolution, per class, and whether the last step (to 28 px) still pays."""
    runs = results["runs"]
    sizes = sorted({r["resolution"] for r in runs})
    model = runs[0]["model"]
    per_size = {px: [r for r in runs if r["resolution"] == px] for px in sizes}
    recall = {}  # px -> class -> mean recall over seeds
    for px, rs in per_size.items():
        per = [json.loads((out / r["run_dir"] / "metrics.json").read_text())["test_per_class"] for r in rs]
        recall[px] = {c: float(np.mean([p[i]["recall"] for p in per])) for i, c in enumerate(classes)}
    overall = {px: mean_std([r["test_accuracy"] for r in rs]) for px, rs in per_size.items()}

    focus = [c for c in FOCUS if c in classes]
    table = []
    for px in sizes:
        m, sd = overall[px]
        others = np.mean([recall[px][c] for c in classes if c not in focus])
        table.append([px, f"{m * 100:.2f} ± {sd * 100:.2f}", *(f"{recall[px][c] * 100:.1f}" for c in focus), f"{others * 100:.1f}"])
    figure = fig_resolution(sizes, [overall[px][0] for px in sizes], {c: [recall[px][c] for px in sizes] for c in classes}, focus)
    blocks: list[Block] = [
        Heading(f"Resolution study: {model}", 1),
        Paragraph(
            f"The same model and recipe trained and tested on images area-downsampled to each size and upsampled back to 28x28 "
            f"(bilinear), {len(per_size[sizes[0]])} seed(s) per size. Recall per class is that class's accuracy."
        ),
        Table(["px", "test acc % (mean ± std)", *focus, "others (mean)"], table),
        Figure("resolution.png", figure, "accuracy against resolution"),
    ]

    summary = {"model": model, "sizes": sizes, "overall": {px: overall[px][0] for px in sizes}, "recall": recall, "last_step": {}}
    if len(sizes) > 1:  # does the last step still pay?
        lo, hi = sizes[-2], sizes[-1]
        rows, summary["last_step"], verdicts = _last_step(out, per_size[lo], per_size[hi], classes, focus)
        blocks.append(Heading(f"Does going from {lo} to {hi} px still pay?"))
        blocks.append(Table(["test images", "seed", f"{lo} px %", f"{hi} px %", f"only {lo}", f"only {hi}", "p"], rows))
        blocks += [Paragraph(v) for v in verdicts]
    return blocks, summary


def write_resolution_report(out: str | Path, results: dict, classes: list[str]) -> tuple[list[Path], dict]:
    out = Path(out)
    blocks, summary = resolution_blocks(out, results, classes)
    paths = write_blocks(out, blocks, "fashionclf resolution study")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return [*paths, out / "summary.json"], summary
