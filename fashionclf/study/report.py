"""The study report, derived only from stored outputs (results.json, run folders, test logits).

One function per section returns that section's blocks (fashionclf.study.blocks); build_blocks
puts them in order, and write_report renders them to report.md, report.html and figures/.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from fashionclf.engine.runs import load_predictions
from fashionclf.evaluation.analysis import duplicates, top_losses
from fashionclf.evaluation.metrics import confusion_matrix, mean_std, most_confused
from fashionclf.evaluation.paired import SIGNIFICANCE, STEP_WORDS, compare_seeds
from fashionclf.study.blocks import Block, Figure, Heading, Paragraph, Table, write_blocks
from fashionclf.study.choose import recommend
from fashionclf.study.figures import fig_confusion, fig_curves, fig_examples, fig_gallery, fig_reliability
from fashionclf.study.robust import FIGURES, cell, claim_blocks, figure_note, robustness_blocks


def name(run: dict) -> str:
    """A run's name in the report: its model, and its resolution where not 28 px (results.json's 'name')."""
    return run.get("name") or run["model"]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per model (per name): mean and spread over seeds, in the order they first appear."""
    order = list(dict.fromkeys(name(r) for r in runs))
    rows = []
    for m in order:
        rs = [r for r in runs if name(r) == m]
        acc, acc_sd = mean_std([r["test_accuracy"] for r in rs])
        val, val_sd = mean_std([r["val_accuracy"] for r in rs])
        rows.append(
            {
                "model": m,
                "n": len(rs),
                "acc_mean": acc,
                "acc_std": acc_sd,
                "val_mean": val,
                "val_std": val_sd,
                "test_loss": mean_std([r["test_loss"] for r in rs])[0],
                "params": rs[0]["params"],
                "train_seconds": mean_std([r["train_seconds"] for r in rs])[0],
                "seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in rs])[0],
                "epochs": mean_std([r["epochs_run"] for r in rs])[0],
                "images_per_s": mean_std([r["infer_images_per_s"] for r in rs])[0],
                **_figure(rs, "robustness", "corrupted"),
                **_figure(rs, "photo_accuracy", "photo"),
                **_figure(rs, "val_auto_share", "val_auto"),  # the review rule, cross-fitted on validation (calibrate.py)
                **_figure(rs, "val_auto_precision", "val_auto_precision"),
            }
        )
    return rows


def _figure(rs: list[dict], key: str, as_: str) -> dict:
    """A robustness figure's mean and std over the seeds; None where a seed lacks it (not measured)."""
    if not all(r.get(key) is not None for r in rs):
        return {as_: None, f"{as_}_std": None}
    mean, std = mean_std([r[key] for r in rs])
    return {as_: mean, f"{as_}_std": std}


# --------------------------------------------------------------------------- stored outputs


def _read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_json(out: Path, run: dict, name: str) -> dict | None:
    path = out / run["run_dir"] / name
    return json.loads(path.read_text()) if path.exists() else None


def _runs_of(runs: list[dict], model: str) -> list[dict]:
    """The runs (seeds) of one row of the comparison, in results.json's order."""
    return [x for x in runs if name(x) == model]


# --------------------------------------------------------------------------- the study report, section by section


def intro_blocks(data, study: dict | None = None) -> list[Block]:
    """The title, the data, and which study this is where results.json says (the quick one of `make run`)."""
    kind = []
    if study and study.get("kind") == "quick":
        epochs = ", ".join(f"{m} {e}" for m, e in study["epochs"].items())
        full = ", ".join(f"{m} {e}" for m, e in study["recipe_epochs"].items())
        other = "".join(f" {m} also with {', '.join(f'{k} {v}' for k, v in ch.items())}." for m, ch in study.get("changed", {}).items())
        kind = [
            Paragraph(
                f"This is the quick seed study (`make run`, `compare --quick`): {epochs} epochs, where the full recipes "
                f"train {full}.{other} `make study` trains the full recipes over 3 seeds."
            )
        ]
    return [
        Heading("Fashion-MNIST model comparison", 1),
        *kind,
        Paragraph(
            f"Data: {data.source}. Train {len(data.train_x):,d}, validation {len(data.val_x):,d} "
            f"(stratified, split seed {data.split_seed}), test {len(data.test_x):,d}. "
            "Models are chosen on validation figures; the test set only reports."
        ),
    ]


def data_blocks(data, classes: list[str]) -> list[Block]:
    """Images per class and split, and random training examples."""
    counts = [np.bincount(t.numpy(), minlength=len(classes)) for t in (data.train_y, data.val_y, data.test_y)]
    return [
        Heading("The data"),
        Table(["class", "train", "validation", "test"], [[c, *(int(k[i]) for k in counts)] for i, c in enumerate(classes)]),
        Figure("examples.png", fig_examples(data.train_x.numpy(), data.train_y.numpy(), classes), "random training examples per class"),
    ]


def comparison_blocks(runs: list[dict], rows: list[dict], note: str = "") -> list[Block]:
    """One row per model: clean accuracy over seeds, the robustness figures measured, size, training and inference speed."""
    shown = [k for k in FIGURES if any(r.get(k) is not None for r in rows)]  # a column for each figure measured at all
    titles = {"corrupted": "corrupted mean %", "photo": "photo acc %"}
    head = ["model", "seeds", "test acc % (mean ± std)", "val acc %", *(titles[k] for k in shown), "test loss", "params"]
    head += ["train s", "s/epoch", "epochs", "infer img/s"]
    table = [
        [
            r["model"],
            r["n"],
            f"{r['acc_mean'] * 100:.2f} ± {r['acc_std'] * 100:.2f}",
            f"{r['val_mean'] * 100:.2f} ± {r['val_std'] * 100:.2f}",
            *(cell(r, k) for k in shown),
            f"{r['test_loss']:.4f}",
            f"{r['params']:,d}",
            f"{r['train_seconds']:.0f}",
            f"{r['seconds_per_epoch']:.1f}",
            f"{r['epochs']:.1f}",
            f"{r['images_per_s']:,.0f}",
        ]
        for r in rows
    ]
    devices = sorted({f"{r['precision']} on {r['device']}" for r in runs})
    return [
        Heading("Comparison"),
        Table(head, table),
        Paragraph(
            f"Std is the sample standard deviation over seeds (0 with one seed). Ran in {', '.join(devices)}.{' ' if note else ''}{note}"
        ),
    ]


def recall_blocks(out: Path, runs: list[dict], rows: list[dict], classes: list[str]) -> list[Block]:
    """Test recall per class and model, mean over seeds (from each run's metrics.json)."""
    recall = {}
    for r in rows:
        per = [json.loads((out / x["run_dir"] / "metrics.json").read_text())["test_per_class"] for x in _runs_of(runs, r["model"])]
        recall[r["model"]] = [np.mean([p[i]["recall"] for p in per]) for i in range(len(classes))]
    return [
        Heading("Per-class test recall (mean over seeds)"),
        Table(["class", *recall], [[c, *(f"{recall[m][i] * 100:.1f}" for m in recall)] for i, c in enumerate(classes)]),
    ]


def recommendation_blocks(rows: list[dict], by: str = "accuracy") -> list[Block]:
    _, text = recommend(rows, by=by)
    return [Heading("Recommendation"), Paragraph(text), *claim_blocks(rows)]


def _step(out: Path, runs: list[dict], a: dict, b: dict) -> tuple[list[list], str | None]:
    """McNemar per seed pair between two consecutive rows: the table rows and the verdict (None without pairs)."""
    ra = {x["seed"]: x for x in _runs_of(runs, a["model"])}
    rb = {x["seed"]: x for x in _runs_of(runs, b["model"])}
    rb = {seed: rb[seed] for seed in ra if seed in rb}  # the seeds both models ran, in A's order
    ca, cb = {}, {}
    for seed in rb:  # both scored against A's stored labels (the same test set)
        la, ya = load_predictions(out / ra[seed]["run_dir"])
        lb, _ = load_predictions(out / rb[seed]["run_dir"])
        ca[seed], cb[seed] = (la.argmax(1) == ya).numpy(), (lb.argmax(1) == ya).numpy()
    res = compare_seeds(ca, cb, gain=(b["acc_mean"] - a["acc_mean"]) * 100, words=STEP_WORDS)
    table = []
    for t in res.pairs:
        acc_a, acc_b = ra[t["seed"]]["test_accuracy"] * 100, rb[t["seed"]]["test_accuracy"] * 100
        table.append([f"{a['model']} → {b['model']}", t["seed"], f"{acc_a:.2f}", f"{acc_b:.2f}", t["b"], t["c"], f"{t['p']:.2g}"])
    if not res.pairs:
        return table, None
    verdict = (
        f"{a['model']} → {b['model']}: {res.gain:+.2f} points, significant in {res.significant} of {len(res.pairs)} seed pairs: {res.word}."
    )
    return table, verdict


def step_blocks(out: Path, runs: list[dict], rows: list[dict]) -> list[Block]:
    """Is each model's gain over the previous one real? Exact McNemar tests on paired test predictions."""
    if len(rows) < 2:
        return []
    table, verdicts = [], []
    for a, b in zip(rows, rows[1:]):
        step_rows, verdict = _step(out, runs, a, b)
        table += step_rows
        if verdict is not None:
            verdicts.append(verdict)
    return [
        Heading("Is each step's gain real?"),
        Paragraph(
            "Exact McNemar tests on paired test predictions, model against the next one in the list, same seed against same "
            f"seed. 'only A' / 'only B' count the test images that only that model gets right; p < {SIGNIFICANCE} counts as real."
        ),
        Table(["step", "seed", "acc A %", "acc B %", "only A", "only B", "p"], table),
        *(Paragraph(v) for v in verdicts),
    ]


def curve_blocks(out: Path, runs: list[dict], rows: list[dict]) -> list[Block]:
    """Training and validation curves of each model's first seed (from history.csv)."""
    histories = {r["model"]: _read_history(out / _runs_of(runs, r["model"])[0]["run_dir"] / "history.csv") for r in rows}
    return [Heading("Learning curves (first seed of each model)"), Figure("curves.png", fig_curves(histories), "learning curves")]


def _best_run(runs: list[dict]) -> dict:
    """The run the error analysis looks at: the most accurate single run by validation accuracy."""
    return max(runs, key=lambda x: x["val_accuracy"])


def error_blocks(out: Path, best: dict, classes: list[str], test_x: np.ndarray) -> list[Block]:
    """The best run's confusion matrix, its most confused pairs, and the worst pair's most confident mistakes."""
    logits, labels = load_predictions(out / best["run_dir"])
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    cm = confusion_matrix(y, pred, len(classes))
    pairs = most_confused(cm, classes, top=5)
    blocks: list[Block] = [
        Heading(f"Errors of the best run: {best['model']} seed {best['seed']}"),
        Figure("confusion.png", fig_confusion(cm, classes, f"{best['model']} seed {best['seed']}, test set"), "confusion matrix"),
        Table(["pair", "a as b", "b as a", "total"], [[f"{p['a']} / {p['b']}", p["a_as_b"], p["b_as_a"], p["total"]] for p in pairs]),
    ]
    if pairs:
        worst = pairs[0]
        a, b = classes.index(worst["a"]), classes.index(worst["b"])
        wrong = np.flatnonzero(((y == a) & (pred == b)) | ((y == b) & (pred == a)))
        probs = logits.softmax(1).numpy()
        wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:30]  # most confident mistakes first
        items = [(int(i), f"#{i} {classes[y[i]][:8]}→{classes[pred[i]][:8]}") for i in wrong]
        caption = f"misclassified test images, {worst['a']} vs {worst['b']} (true→predicted)"
        blocks.append(Figure("worst_pair.png", fig_gallery(test_x, items), caption))
    return blocks


def top_loss_blocks(out: Path, best: dict, classes: list[str], test_x: np.ndarray) -> list[Block]:
    """The best run's test images with the highest loss."""
    logits, labels = load_predictions(out / best["run_dir"])
    top = top_losses(logits, labels, k=30)
    items = [(t["index"], f"#{t['index']} {classes[t['label']][:8]}→{classes[t['predicted']][:8]} {t['p_predicted']:.2f}") for t in top]
    return [
        Heading(f"Top losses of {best['model']} seed {best['seed']}"),
        Paragraph(
            "The test images with the highest loss: the model's most confident mistakes. Some are the model's fault, "
            "some are ambiguous items, some look mislabelled."
        ),
        Figure("top_losses.png", fig_gallery(test_x, items), "top losses (true→predicted, confidence)"),
    ]


def build_blocks(out: Path, results: dict, data) -> list[Block]:
    runs = results["runs"]
    classes = list(data.classes)
    rows = summarize(runs)
    best = _best_run(runs)
    suites = {r["model"]: [x for x in (_run_json(out, y, "robustness.json") for y in _runs_of(runs, r["model"])) if x] for r in rows}
    return [
        *intro_blocks(data, results.get("study")),
        *data_blocks(data, classes),
        *comparison_blocks(runs, rows, figure_note(rows, suites, results.get("photos"))),
        *recall_blocks(out, runs, rows, classes),
        *robustness_blocks(suites),
        *calibration_blocks(out, runs, rows),
        *recommendation_blocks(rows, results.get("choose_by", "accuracy")),
        *step_blocks(out, runs, rows),
        *curve_blocks(out, runs, rows),
        *error_blocks(out, best, classes, data.test_x.numpy()),
        *top_loss_blocks(out, best, classes, data.test_x.numpy()),
        *duplicate_blocks(data),
    ]


CROSSFIT_NOTE = (
    " The last two columns estimate the same from validation alone (each fifth of it decided by the rule fitted on the "
    "other four: what `compare --choose-by auto-share` ranks by)."
)


def _pct(v: float | None, digits: int) -> str:
    return f"{v * 100:.{digits}f}" if v is not None else "-"


def calibration_blocks(out: Path, runs: list[dict], rows: list[dict]) -> list[Block]:
    """ECE before/after temperature scaling and the share labelled automatically at the target precision (test set)."""
    table, best = [], None
    crossfit = any(r.get("val_auto") is not None for r in rows)  # columns only where measured: older studies rebuild as they were
    for r in rows:
        mets = [_run_json(out, x, "metrics.json") for x in _runs_of(runs, r["model"])]
        cals = [m["test_calibration"] for m in mets if m and m.get("test_calibration")]
        if not cals:
            continue
        target = next(iter(cals[0]["coverage_at_precision"]))
        cov = [c["coverage_at_precision"][target] for c in cals]
        precisions = [c["precision"] for c in cov if c["precision"] is not None]
        table.append(
            [
                r["model"],
                len(cals),
                f"{np.mean([c['ece_uncalibrated'] for c in cals]) * 100:.2f}",
                f"{np.mean([c['ece'] for c in cals]) * 100:.2f}",
                f"{np.mean([c['temperature'] for c in cals]):.2f}",
                f"{np.mean([c['coverage'] for c in cov]) * 100:.1f}",
                f"{np.mean(precisions) * 100:.2f}" if precisions else "-",
            ]
        )
        if crossfit:
            table[-1] += [_pct(r.get("val_auto"), 1), _pct(r.get("val_auto_precision"), 2)]
        if best is None or r["val_mean"] > best[0]["val_mean"]:
            best = (r, cals[0], target)
    if not table:
        return []
    r, cal, target = best
    return [
        Heading("Calibrated review: how much labelling goes away"),
        Paragraph(
            "A temperature fitted on the validation split rescales the logits (predictions unchanged); the review threshold is the "
            f"lowest calibrated confidence at which validation items reach {float(target) * 100:.0f}% precision. Below, both applied "
            "to the test set: the expected calibration error (15 bins) before and after, the share of test items labelled "
            "automatically, and their precision." + (CROSSFIT_NOTE if crossfit else "") + " Means over seeds."
        ),
        Table(
            [
                "model",
                "seeds",
                "ECE % before",
                "ECE % after",
                "T",
                f"automatic % at {target}",
                "their precision %",
                *(["val automatic % (cross-fitted)", "its precision % (val)"] if crossfit else []),
            ],
            table,
        ),
        Figure(
            "reliability.png",
            fig_reliability(cal["reliability_uncalibrated"], cal["reliability"], f"{r['model']}, test set"),
            "reliability",
        ),
    ]


def duplicate_blocks(data, limit: int = 30) -> list[Block]:
    """Test images that also occur in the training data (train + validation): exact and near copies."""
    train_x = np.concatenate([data.train_x.numpy(), data.val_x.numpy()])
    dups = duplicates(torch.from_numpy(train_x), data.test_x)
    n_exact = sum(d["exact"] for d in dups)
    blocks: list[Block] = [
        Heading("Duplicates across training and test data"),
        Paragraph(
            f"{len(dups)} of {len(data.test_x):,d} test images have a copy among the {len(train_x):,d} training images "
            f"({n_exact} exact, {len(dups) - n_exact} near: "
            "cosine similarity of the mean-centred images ≥ 0.995; a lower bar pairs ever more distinct "
            "items of one kind). "
            "Accuracy on them measures memory more than generalisation. Training indices count train then validation."
        ),
    ]
    if dups:
        rows = [[d["test"], d["train"], "exact" if d["exact"] else "near", f"{d['similarity']:.4f}"] for d in dups[:limit]]
        blocks.append(Table(["test index", "training index", "kind", "similarity"], rows))
        pairs = np.stack([np.concatenate([data.test_x.numpy()[d["test"]], train_x[d["train"]]], axis=1) for d in dups[:limit]])
        items = [(i, f"t{d['test']} / tr{d['train']}") for i, d in enumerate(dups[:limit])]
        blocks.append(Figure("duplicates.png", fig_gallery(pairs, items, cols=6), "test image (left) beside its training copy (right)"))
    return blocks


def write_report(out: str | Path, results: dict, data) -> list[Path]:
    return write_blocks(out, build_blocks(Path(out), results, data), "fashionclf report")
