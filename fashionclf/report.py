"""The study report, derived only from stored outputs (results.json, run folders, test logits).

The report is built once as a list of blocks (headings, paragraphs, tables,
figures) and rendered twice: Markdown with PNG files beside it, and one
self-contained HTML file with the same figures inlined.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .analysis import duplicates, label_issues, top_losses  # noqa: E402
from .metrics import confusion_matrix, mcnemar, mean_std, most_confused  # noqa: E402
from .runs import atomic_write_bytes, atomic_write_text, load_predictions  # noqa: E402

SIGNIFICANCE = 0.05  # McNemar p below this counts as a real difference

# Recommendation rule, stated in the report: models within this many points of the best
# mean validation accuracy count as equally accurate; among them the fastest at inference wins.
ACCURACY_TOLERANCE = 0.005


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
                "robustness": mean_std([r["robustness"] for r in rs])[0] if all(r.get("robustness") is not None for r in rs) else None,
            }
        )
    return rows


def recommend(rows: list[dict], tolerance: float = ACCURACY_TOLERANCE) -> tuple[dict, str]:
    """Pick a production model by a stated rule, on validation figures only."""
    best_val = max(r["val_mean"] for r in rows)
    tier = [r for r in rows if r["val_mean"] >= best_val - tolerance]
    if all(r["robustness"] is not None for r in tier):
        pick = max(tier, key=lambda r: (r["robustness"], r["images_per_s"], -r["params"]))
        why = "the highest robustness score, then the fastest inference, then the fewest parameters"
    else:
        pick = max(tier, key=lambda r: (r["images_per_s"], -r["params"]))
        why = "the fastest inference, then the fewest parameters (robustness not measured in this study)"
    names = ", ".join(r["model"] for r in tier)
    text = (
        f"Rule: among the models whose mean validation accuracy is within {tolerance * 100:.1f} points of the best "
        f"({best_val * 100:.2f}%), take the one with {why}. Candidates: {names}. "
        f"Recommended: **{pick['model']}** (test accuracy {pick['acc_mean'] * 100:.2f} ± {pick['acc_std'] * 100:.2f}%, "
        f"{pick['params']:,d} parameters, {pick['images_per_s']:,.0f} images/s)."
    )
    return pick, text


# --------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def fig_examples(x, y, classes, per_class=8, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.8, len(classes) * 0.85))
    for c, name in enumerate(classes):
        members = np.flatnonzero(y == c)
        idx = rng.choice(members, min(per_class, len(members)), replace=False)
        for j, i in enumerate(idx):
            ax = axes[c, j]
            ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    return _png(fig)


def fig_curves(histories: dict[str, list[dict]]) -> bytes:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, h) in enumerate(histories.items()):
        ep = [int(r["epoch"]) for r in h]
        color = f"C{i}"
        a1.plot(ep, [float(r["train_loss"]) for r in h], "--", color=color, alpha=0.6)
        a1.plot(ep, [float(r["val_loss"]) for r in h], "-", color=color, label=name)
        a2.plot(ep, [float(r["train_accuracy"]) for r in h], "--", color=color, alpha=0.6)
        a2.plot(ep, [float(r["val_accuracy"]) for r in h], "-", color=color, label=name)
    a1.set(xlabel="epoch", ylabel="loss", title="loss (dashed: train, solid: validation)")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy (dashed: train, solid: validation)")
    a1.legend()
    a2.legend()
    return _png(fig)


def fig_confusion(cm: np.ndarray, classes, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(cm, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _png(fig)


def fig_gallery(x, items: list[tuple[int, str]], cols=10) -> bytes:
    rows = max(1, (len(items) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, caption) in zip(axes.flat, items):
        ax.imshow(x[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=6)
    return _png(fig)


# --------------------------------------------------------------------------- rendering


def _render_md(blocks) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{b[3]}](figures/{b[1]})\n")
    return "\n".join(out)


def _md_inline(text: str) -> str:
    """The little Markdown the report uses in paragraphs: **bold** only."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _render_html(blocks, title: str) -> str:
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_md_inline(b[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</table>")
        elif kind == "img":
            data = base64.b64encode(b[2]).decode()
            cap = html.escape(b[3])
            out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{cap}'><figcaption>{cap}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_blocks(out: Path, results: dict, data) -> list:
    runs = results["runs"]
    classes = list(data.classes)
    rows = summarize(runs)
    blocks: list = [("h1", "Fashion-MNIST model comparison")]
    blocks.append(
        (
            "p",
            f"Data: {data.source}. Train {len(data.train_x):,d}, validation {len(data.val_x):,d} "
            f"(stratified, split seed {data.split_seed}), test {len(data.test_x):,d}. "
            "Models are chosen on validation figures; the test set only reports.",
        )
    )

    blocks.append(("h2", "The data"))
    counts = [np.bincount(t.numpy(), minlength=len(classes)) for t in (data.train_y, data.val_y, data.test_y)]
    blocks.append(("table", ["class", "train", "validation", "test"], [[c, *(int(k[i]) for k in counts)] for i, c in enumerate(classes)]))
    blocks.append(
        ("img", "examples.png", fig_examples(data.train_x.numpy(), data.train_y.numpy(), classes), "random training examples per class")
    )

    blocks.append(("h2", "Comparison"))
    head = ["model", "seeds", "test acc % (mean ± std)", "val acc %", "test loss", "params", "train s", "s/epoch", "epochs", "infer img/s"]
    table = [
        [
            r["model"],
            r["n"],
            f"{r['acc_mean'] * 100:.2f} ± {r['acc_std'] * 100:.2f}",
            f"{r['val_mean'] * 100:.2f} ± {r['val_std'] * 100:.2f}",
            f"{r['test_loss']:.4f}",
            f"{r['params']:,d}",
            f"{r['train_seconds']:.0f}",
            f"{r['seconds_per_epoch']:.1f}",
            f"{r['epochs']:.1f}",
            f"{r['images_per_s']:,.0f}",
        ]
        for r in rows
    ]
    blocks.append(("table", head, table))
    devices = sorted({f"{r['precision']} on {r['device']}" for r in runs})
    blocks.append(("p", f"Std is the sample standard deviation over seeds (0 with one seed). Ran in {', '.join(devices)}."))

    blocks.append(("h2", "Per-class test recall (mean over seeds)"))
    recall = {}
    for r in rows:
        per = [json.loads((out / x["run_dir"] / "metrics.json").read_text())["test_per_class"] for x in runs if name(x) == r["model"]]
        recall[r["model"]] = [np.mean([p[i]["recall"] for p in per]) for i in range(len(classes))]
    blocks.append(("table", ["class", *recall], [[c, *(f"{recall[m][i] * 100:.1f}" for m in recall)] for i, c in enumerate(classes)]))

    blocks += robustness_blocks(out, runs, rows)
    blocks += calibration_blocks(out, runs, rows)

    blocks.append(("h2", "Recommendation"))
    pick, text = recommend(rows)
    blocks.append(("p", text))

    if len(rows) > 1:
        blocks.append(("h2", "Is each step's gain real?"))
        blocks.append(
            (
                "p",
                "Exact McNemar tests on paired test predictions, model against the next one in the list, same seed against same "
                f"seed. 'only A' / 'only B' count the test images that only that model gets right; p < {SIGNIFICANCE} counts as real.",
            )
        )
        table, verdicts = [], []
        for a, b in zip(rows, rows[1:]):
            ps = []
            for ra in (x for x in runs if name(x) == a["model"]):
                rb = next((x for x in runs if name(x) == b["model"] and x["seed"] == ra["seed"]), None)
                if rb is None:
                    continue
                la, ya = load_predictions(out / ra["run_dir"])
                lb, _ = load_predictions(out / rb["run_dir"])
                t = mcnemar((la.argmax(1) == ya).numpy(), (lb.argmax(1) == ya).numpy())
                ps.append(t["p"])
                table.append(
                    [f"{a['model']} → {b['model']}", ra["seed"], f"{ra['test_accuracy'] * 100:.2f}", f"{rb['test_accuracy'] * 100:.2f}"]
                    + [t["b"], t["c"], f"{t['p']:.2g}"]
                )
            if ps:
                n_sig = sum(p < SIGNIFICANCE for p in ps)
                gain = (b["acc_mean"] - a["acc_mean"]) * 100
                word = "not distinguishable from noise" if n_sig == 0 else "not consistent across seeds"
                if n_sig == len(ps):
                    word = "a real gain" if gain > 0 else "a real loss"
                verdicts.append(f"{a['model']} → {b['model']}: {gain:+.2f} points, significant in {n_sig} of {len(ps)} seed pairs: {word}.")
        blocks.append(("table", ["step", "seed", "acc A %", "acc B %", "only A", "only B", "p"], table))
        blocks += [("p", v) for v in verdicts]

    blocks.append(("h2", "Learning curves (first seed of each model)"))
    histories = {}
    for r in rows:
        first = next(x for x in runs if name(x) == r["model"])
        histories[r["model"]] = _read_history(out / first["run_dir"] / "history.csv")
    blocks.append(("img", "curves.png", fig_curves(histories), "learning curves"))

    # Error analysis on the most accurate single run by validation accuracy.
    best = max(runs, key=lambda x: x["val_accuracy"])
    logits, labels = load_predictions(out / best["run_dir"])
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    cm = confusion_matrix(y, pred, len(classes))
    blocks.append(("h2", f"Errors of the best run: {best['model']} seed {best['seed']}"))
    blocks.append(
        ("img", "confusion.png", fig_confusion(cm, classes, f"{best['model']} seed {best['seed']}, test set"), "confusion matrix")
    )
    pairs = most_confused(cm, classes, top=5)
    blocks.append(
        ("table", ["pair", "a as b", "b as a", "total"], [[f"{p['a']} / {p['b']}", p["a_as_b"], p["b_as_a"], p["total"]] for p in pairs])
    )
    if pairs:
        worst = pairs[0]
        a, b = classes.index(worst["a"]), classes.index(worst["b"])
        wrong = np.flatnonzero(((y == a) & (pred == b)) | ((y == b) & (pred == a)))
        probs = logits.softmax(1).numpy()
        wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:30]  # most confident mistakes first
        items = [(int(i), f"#{i} {classes[y[i]][:8]}→{classes[pred[i]][:8]}") for i in wrong]
        blocks.append(
            (
                "img",
                "worst_pair.png",
                fig_gallery(data.test_x.numpy(), items),
                f"misclassified test images, {worst['a']} vs {worst['b']} (true→predicted)",
            )
        )
    top = top_losses(logits, labels, k=30)
    blocks.append(("h2", f"Top losses of {best['model']} seed {best['seed']}"))
    blocks.append(
        (
            "p",
            "The test images with the highest loss: the model's most confident mistakes. Some are the model's fault, "
            "some are ambiguous items, some look mislabelled.",
        )
    )
    items = [(t["index"], f"#{t['index']} {classes[t['label']][:8]}→{classes[t['predicted']][:8]} {t['p_predicted']:.2f}") for t in top]
    blocks.append(("img", "top_losses.png", fig_gallery(data.test_x.numpy(), items), "top losses (true→predicted, confidence)"))

    blocks += duplicate_blocks(data)
    return blocks


def _run_json(out: Path, run: dict, name: str) -> dict | None:
    path = out / run["run_dir"] / name
    return json.loads(path.read_text()) if path.exists() else None


def fig_severity(curves: dict[str, list[float]], clean: dict[str, float]) -> bytes:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, ys in curves.items():
        ax.plot([0, 1, 2, 3, 4, 5], [clean[m] * 100] + [v * 100 for v in ys], marker="o", label=m)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("accuracy % (mean over corruptions)")
    ax.set_title("accuracy against corruption severity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def robustness_blocks(out: Path, runs: list[dict], rows: list[dict]) -> list:
    """The corruption suite per model (mean over the seeds that have it), where compare --robustness ran it."""
    found = {r["model"]: [x for x in (_run_json(out, y, "robustness.json") for y in runs if name(y) == r["model"]) if x] for r in rows}
    found = {m: v for m, v in found.items() if v}
    if not found:
        return []
    names = list(next(iter(found.values()))[0]["corruptions"])
    blocks: list = [("h2", "Robustness: the corruption suite")]
    first = next(iter(found.values()))[0]
    blocks.append(
        (
            "p",
            f"{len(names)} corruptions at severities 1-5 on the first {first['images']:,d} {first.get('split', 'test')} images "
            "(`fashionclf robustness RUN` runs it on the test set). Accuracy %, mean over severities and seeds.",
        )
    )
    table, curves, clean = [], {}, {}
    for m, reps in found.items():
        per = {c: np.mean([np.mean(rep["corruptions"][c]) for rep in reps]) for c in names}
        clean[m] = float(np.mean([rep["clean"] for rep in reps]))
        curves[m] = [float(np.mean([np.mean([rep["corruptions"][c][s] for c in names]) for rep in reps])) for s in range(5)]
        mean = float(np.mean([rep["mean"] for rep in reps]))
        table.append([m, f"{clean[m] * 100:.1f}", f"{mean * 100:.1f}", *(f"{per[c] * 100:.0f}" for c in names)])
    blocks.append(("table", ["model", "clean", "corrupted (mean)", *names], table))
    blocks.append(("img", "robustness.png", fig_severity(curves, clean), "accuracy against corruption severity"))
    return blocks


def fig_reliability(before: list[dict], after: list[dict], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    for bins, label in ((before, "before"), (after, "after temperature scaling")):
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def calibration_blocks(out: Path, runs: list[dict], rows: list[dict]) -> list:
    """ECE before/after temperature scaling and the share labelled automatically at the target precision (test set)."""
    table, best = [], None
    for r in rows:
        mets = [_run_json(out, x, "metrics.json") for x in runs if name(x) == r["model"]]
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
        if best is None or r["val_mean"] > best[0]["val_mean"]:
            best = (r, cals[0], target)
    if not table:
        return []
    r, cal, target = best
    return [
        ("h2", "Calibrated review: how much labelling goes away"),
        (
            "p",
            "A temperature fitted on the validation split rescales the logits (predictions unchanged); the review threshold is the "
            f"lowest calibrated confidence at which validation items reach {float(target) * 100:.0f}% precision. Below, both applied "
            "to the test set: the expected calibration error (15 bins) before and after, the share of test items labelled "
            "automatically, and their precision. Means over seeds.",
        ),
        ("table", ["model", "seeds", "ECE % before", "ECE % after", "T", f"automatic % at {target}", "their precision %"], table),
        (
            "img",
            "reliability.png",
            fig_reliability(cal["reliability_uncalibrated"], cal["reliability"], f"{r['model']}, test set"),
            "reliability",
        ),
    ]


def duplicate_blocks(data, limit: int = 30) -> list:
    """Test images that also occur in the training data (train + validation): exact and near copies."""
    train_x = np.concatenate([data.train_x.numpy(), data.val_x.numpy()])
    dups = duplicates(torch.from_numpy(train_x), data.test_x)
    n_exact = sum(d["exact"] for d in dups)
    blocks: list = [("h2", "Duplicates across training and test data")]
    blocks.append(
        (
            "p",
            f"{len(dups)} of {len(data.test_x):,d} test images have a copy among the {len(train_x):,d} training images "
            f"({n_exact} exact, {len(dups) - n_exact} near: "
            "cosine similarity of the mean-centred images ≥ 0.995; a lower bar pairs ever more distinct "
            "items of one kind). "
            "Accuracy on them measures memory more than generalisation. Training indices count train then validation.",
        )
    )
    if dups:
        rows = [[d["test"], d["train"], "exact" if d["exact"] else "near", f"{d['similarity']:.4f}"] for d in dups[:limit]]
        blocks.append(("table", ["test index", "training index", "kind", "similarity"], rows))
        pairs = np.stack([np.concatenate([data.test_x.numpy()[d["test"]], train_x[d["train"]]], axis=1) for d in dups[:limit]])
        items = [(i, f"t{d['test']} / tr{d['train']}") for i, d in enumerate(dups[:limit])]
        blocks.append(("img", "duplicates.png", fig_gallery(pairs, items, cols=6), "test image (left) beside its training copy (right)"))
    return blocks


def label_issue_blocks(x_u8, labels, oof_probs, classes, limit: int = 40) -> tuple[list, list[dict]]:
    """Likely label errors in a labelled set from out-of-fold probabilities (confident learning)."""
    issues = label_issues(oof_probs, labels)
    blocks: list = [("h1", "Likely label errors in the training data")]
    blocks.append(
        (
            "p",
            f"{len(issues)} of {len(labels):,d} training images are flagged: the out-of-fold model gives their label less than "
            "that class's mean self-confidence and another class at least its own (confident learning, Northcutt et al. 2021). "
            "Flagged is not proven wrong: many are ambiguous items (Shirt vs T-shirt/top vs Pullover).",
        )
    )
    pairs: dict[tuple[str, str], int] = {}
    for i in issues:
        key = (classes[i["label"]], classes[i["suggested"]])
        pairs[key] = pairs.get(key, 0) + 1
    top_pairs = sorted(pairs.items(), key=lambda kv: -kv[1])[:10]
    blocks.append(("table", ["given label", "suggested", "items"], [[a, b, n] for (a, b), n in top_pairs]))
    rows = [
        [i["index"], classes[i["label"]], classes[i["suggested"]], f"{i['p_label']:.3f}", f"{i['p_suggested']:.3f}"] for i in issues[:limit]
    ]
    blocks.append(("table", ["index", "given label", "suggested", "p(given)", "p(suggested)"], rows))
    items = [(i["index"], f"#{i['index']} {classes[i['label']][:8]}→{classes[i['suggested']][:8]}") for i in issues[:limit]]
    if items:
        blocks.append(("img", "label_issues.png", fig_gallery(np.asarray(x_u8), items), "most likely label errors (given→suggested)"))
    return blocks, issues


def write_blocks(out: str | Path, blocks: list, title: str, stem: str = "report") -> list[Path]:
    out = Path(out)
    for b in blocks:
        if b[0] == "img":
            atomic_write_bytes(out / "figures" / b[1], b[2])
    atomic_write_text(out / f"{stem}.md", _render_md(blocks))
    atomic_write_text(out / f"{stem}.html", _render_html(blocks, title))
    return [out / f"{stem}.md", out / f"{stem}.html"]


def write_report(out: str | Path, results: dict, data) -> list[Path]:
    return write_blocks(out, build_blocks(Path(out), results, data), "fashionclf report")


# --------------------------------------------------------------------------- the resolution study

FOCUS = ("T-shirt/top", "Pullover", "Coat", "Shirt")  # the classes the seed study could not tell apart


def fig_resolution(sizes, overall, per_class: dict[str, list[float]], focus) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, ys in per_class.items():
        if c not in focus:
            ax.plot(sizes, [v * 100 for v in ys], color="0.8", lw=1)
    for c in focus:
        ax.plot(sizes, [v * 100 for v in per_class[c]], marker="o", label=c)
    ax.plot(sizes, [v * 100 for v in overall], marker="s", color="k", lw=2.5, label="all classes")
    ax.set_xticks(sizes)
    ax.set_xlabel("pixels per side the model saw")
    ax.set_ylabel("test accuracy / recall % (mean over seeds)")
    ax.set_title("accuracy against resolution (gray: the other six classes)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def resolution_blocks(out: Path, results: dict, classes: list[str]) -> tuple[list, dict]:
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

    blocks: list = [("h1", f"Resolution study: {model}")]
    blocks.append(
        (
            "p",
            f"The same model and recipe trained and tested on images area-downsampled to each size and upsampled back to 28x28 "
            f"(bilinear), {len(per_size[sizes[0]])} seed(s) per size. Recall per class is that class's accuracy.",
        )
    )
    focus = [c for c in FOCUS if c in classes]
    head = ["px", "test acc % (mean ± std)", *focus, "others (mean)"]
    table = []
    for px in sizes:
        m, sd = overall[px]
        others = np.mean([recall[px][c] for c in classes if c not in focus])
        table.append([px, f"{m * 100:.2f} ± {sd * 100:.2f}", *(f"{recall[px][c] * 100:.1f}" for c in focus), f"{others * 100:.1f}"])
    blocks.append(("table", head, table))
    blocks.append(
        (
            "img",
            "resolution.png",
            fig_resolution(sizes, [overall[px][0] for px in sizes], {c: [recall[px][c] for px in sizes] for c in classes}, focus),
            "accuracy against resolution",
        )
    )

    # Does the last step still pay? McNemar per seed on the test images of each class (and on all of them).
    summary = {"model": model, "sizes": sizes, "overall": {px: overall[px][0] for px in sizes}, "recall": recall, "last_step": {}}
    if len(sizes) > 1:
        lo, hi = sizes[-2], sizes[-1]
        blocks.append(("h2", f"Does going from {lo} to {hi} px still pay?"))
        rows, verdicts = [], []
        for c in ["all classes", *focus]:
            ps, gains = [], []
            for ra in per_size[lo]:
                rb = next((r for r in per_size[hi] if r["seed"] == ra["seed"]), None)
                if rb is None:
                    continue
                la, y = load_predictions(out / ra["run_dir"])
                lb, _ = load_predictions(out / rb["run_dir"])
                keep = np.ones(len(y), bool) if c == "all classes" else (y == classes.index(c)).numpy()
                ca, cb = (la.argmax(1) == y).numpy()[keep], (lb.argmax(1) == y).numpy()[keep]
                t = mcnemar(ca, cb)
                ps.append(t["p"])
                gains.append((cb.mean() - ca.mean()) * 100)
                rows.append([c, ra["seed"], f"{ca.mean() * 100:.1f}", f"{cb.mean() * 100:.1f}", t["b"], t["c"], f"{t['p']:.2g}"])
            if not ps:
                continue
            n_sig = sum(p < SIGNIFICANCE for p in ps)
            gain = float(np.mean(gains))
            climbing = n_sig == len(ps) and gain > 0
            if climbing:
                word = "still climbing: sharper images would pay"
            elif n_sig == 0:
                word = "flat within noise: more pixels would not pay"
            else:
                word = "significant in some seeds only: undecided, more seeds would tell"
            summary["last_step"][c] = {
                "gain_points": gain,
                "significant_pairs": n_sig,
                "pairs": len(ps),
                "climbing": climbing,
                "verdict": word.split(":")[0],
            }
            verdicts.append(f"{c}: {gain:+.2f} points from {lo} to {hi} px, significant in {n_sig} of {len(ps)} seeds: {word}.")
        blocks.append(("table", ["test images", "seed", f"{lo} px %", f"{hi} px %", f"only {lo}", f"only {hi}", "p"], rows))
        blocks += [("p", v) for v in verdicts]
    return blocks, summary


def write_resolution_report(out: str | Path, results: dict, classes: list[str]) -> tuple[list[Path], dict]:
    out = Path(out)
    blocks, summary = resolution_blocks(out, results, classes)
    paths = write_blocks(out, blocks, "fashionclf resolution study")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return [*paths, out / "summary.json"], summary
