"""Can a run say "none of these"? Out-of-distribution scores on clothing categories it never saw.

A run is trained on six of clothing-photos' ten folders (dress, longsleeve, outwear, pants, shirt, t-shirt);
hat, shoes, shorts and skirt are left out. This scores, for each candidate score, how well it tells the
left-out categories' photos from held-out photos of the six: the AUROC, and what a shop gets at the run's
99%-precision review threshold: the share of unknown-category photos labelled automatically (not flagged
for review) without the unknown rule and with it, and the known categories' automatic share without and
with it. Every threshold is fitted on the known validation photos alone (95% counted known); the score is
chosen by its AUROC on validation photos (known validation against the left-out categories' validation
photos) and then reported on the held-out test split. The rule, fixed before the bootstrap was computed:
the score with the highest validation AUROC replaces energy (the default built first, on the logits alone)
only if the paired bootstrap 95% interval of its difference from energy's excludes 0.

    .venv/bin/python experiments/unknown_categories/unknown_categories.py prepare /tmp/unk/known6
    .venv/bin/fashionclf train --data /tmp/unk/known6/train --val-data /tmp/unk/known6/validation \\
        --model efficientnet_lite0 --image-size 160 --epochs 8 --batch-size 64 --aug-shift 0.1 --aug-zoom 0.15 --out RUN
    .venv/bin/python experiments/unknown_categories/unknown_categories.py measure RUN --view /tmp/unk/known6 \\
        [--photos ../shared/clothing-photos] [--out experiments/unknown_categories/results/unknown_categories.json]

Scores (higher: less like the six): energy, msp (1 - calibrated confidence) and maxlogit, on the logits
(fashionclf.evaluation.unknown, what `predict` runs); mahalanobis (class means and a tied covariance of the
training photos' penultimate features, Lee et al. 2018) and knn (distance to the 10th nearest training
photo in L2-normalised penultimate features, Sun et al. 2022), fixed before measuring and not tuned here.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from fashionclf.api import load_run
from fashionclf.core.io import atomic_write_text
from fashionclf.data.folders import load_image_folder, load_images
from fashionclf.data.layouts import scan
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE, all_scores, auroc, fit_unknown, threshold_for, view_logits

KNOWN = ("dress", "longsleeve", "outwear", "pants", "shirt", "t-shirt")
LEFT_OUT = ("hat", "shoes", "shorts", "skirt")
KNN_K = 10


def prepare(view: Path, photos: Path) -> None:
    """view/train and view/validation holding links to the six known categories' folders."""
    for split in ("train", "validation"):
        for c in KNOWN:
            link = view / split / c
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((photos / split / c).resolve(), target_is_directory=True)
    print(f"six categories linked under {view}")


def logits_and_features(run, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's logits (its own precision and mirror TTA), the raw logits the energy and maxlogit take (the
    views' mean, evaluation.unknown.view_logits, as `predict` computes them) and the penultimate features: the
    input of its last Linear layer, averaged over the image and its mirror where the run uses TTA."""
    from fashionclf.engine.device import inference_precision

    cfg, dev = run.config, torch.device("cpu")
    p = inference_precision(cfg.precision, dev, run.model, x, channels_last=cfg.channels_last, name=cfg.model)
    head = [m for m in run.model.modules() if isinstance(m, nn.Linear)][-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().float().cpu()))
    try:
        logits, raw = view_logits(run.model, x, cfg.tta, device=dev, amp_dtype=p.dtype, channels_last=p.channels_last)
    finally:
        hook.remove()
    feats = torch.cat(seen)
    if cfg.tta:  # every batch of the images, then every batch of their mirrors
        feats = (feats[: len(x)] + feats[len(x) :]) / 2
    return logits, raw, feats


def feature_scores(train_f: torch.Tensor, train_y: torch.Tensor, f: torch.Tensor) -> dict[str, torch.Tensor]:
    """mahalanobis and knn scores of features f against the training photos' features."""
    classes = train_y.unique()
    means = torch.stack([train_f[train_y == c].mean(0) for c in classes]).double()
    centred = train_f.double() - means[torch.searchsorted(classes, train_y)]
    cov = centred.T @ centred / len(centred)
    cov += 1e-6 * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)  # tiny ridge: 1280 dims, ~2,000 photos
    prec = torch.linalg.inv(cov)
    d = f.double()[:, None, :] - means[None]
    maha = torch.einsum("ncd,de,nce->nc", d, prec, d).min(1).values
    bank = nn.functional.normalize(train_f.double(), dim=1)
    sims = nn.functional.normalize(f.double(), dim=1) @ bank.T
    knn = -sims.topk(KNN_K, dim=1).values[:, -1]  # higher: the 10th neighbour is farther
    return {"mahalanobis": maha.float(), "knn": knn.float()}


def unknown_photos(photos: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The left-out categories' photos of a split, and each one's category (its index in LEFT_OUT)."""
    items = [(f, i) for i, c in enumerate(LEFT_OUT) for f in sorted(p for p in (photos / split / c).rglob("*") if p.is_file())]
    x, cat, skipped = load_images(items, size)
    for s in skipped:
        print(f"left out {s}", file=sys.stderr)
    return x, cat


def bootstrap_diff(a: dict, b: dict, known: str, unknown: str, n: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of AUROC(a) - AUROC(b) on the same items (known and unknown resampled with replacement)."""
    g = torch.Generator().manual_seed(seed)
    nk, nu = len(a[known]), len(a[unknown])
    diffs = []
    for _ in range(n):
        k, u = torch.randint(0, nk, (nk,), generator=g), torch.randint(0, nu, (nu,), generator=g)
        diffs.append(auroc(a[known][k], a[unknown][u]) - auroc(b[known][k], b[unknown][u]))
    d = torch.tensor(diffs).sort().values
    return [float(d[int(0.025 * n)]), float(d[int(0.975 * n) - 1])]


def measure(run_dir: Path, view: Path, photos: Path) -> dict:
    run = load_run(run_dir)
    size = run.meta["input"]["height"]
    ds, _ = load_image_folder(view / "train", view / "validation", size, split_seed=run.config.split_seed)
    assert list(ds.classes) == list(run.classes) == list(KNOWN), (ds.classes, run.classes)
    assert len(ds.test_y) == run.meta["data"]["test"], "not the run's test split"
    assert scan(photos / "validation")[0] == sorted(KNOWN + LEFT_OUT)
    sets = {"train": ds.train_x, "val": ds.val_x, "test": ds.test_x}
    (uv, uv_cat), (ut, ut_cat) = unknown_photos(photos, "validation", size), unknown_photos(photos, "train", size)
    sets |= {"unknown_val": uv, "unknown_train": ut}
    cal = run.metrics["calibration"]
    out = {}
    for name, x in sets.items():
        logits, raw, feats = logits_and_features(run, x)
        out[name] = {"logits": logits, "raw": raw, "features": feats, "probs": (logits / cal["temperature"]).softmax(1)}
    check = run.logits(sets["val"])  # the logits as `predict` computes them (Run.logits)
    assert torch.allclose(check, out["val"]["logits"], atol=1e-4), (check - out["val"]["logits"]).abs().max()
    scores = {n: all_scores(v["logits"], cal["temperature"], v["raw"]) for n, v in out.items() if n != "train"}
    for n, v in out.items():
        if n != "train":
            scores[n] |= feature_scores(out["train"]["features"], ds.train_y, v["features"])
    res = table(run, ds, out, scores, cal["threshold"]) | {"run": str(run_dir), "config": run.meta["config"]}
    res |= extras(out, scores, cal["threshold"], {"unknown_val": uv_cat, "unknown_train": ut_cat})
    # what this version of `train` records for the run (its own was fitted before the TTA fix: energy on log-probabilities)
    res["unknown_record"] = fit_unknown(out["val"]["logits"], cal["temperature"], list(run.classes), raw=out["val"]["raw"])
    res["train_seconds"], res["test_accuracy_recorded"] = run.metrics["train_seconds"], run.metrics["test_accuracy"]
    return res


def table(run, ds, out: dict, scores: dict, review_t: float) -> dict:
    def auto(name: str) -> torch.Tensor:  # confidence at or above the 99%-precision threshold: labelled automatically
        return out[name]["probs"].max(1).values >= review_t

    rows = {}
    for s in scores["val"]:
        t = threshold_for(scores["val"][s], DEFAULT_KNOWN_SHARE)
        known = {n: scores[n][s] <= t for n in scores}
        rows[s] = {
            "threshold": t,
            "auroc_val": auroc(scores["val"][s], scores["unknown_val"][s]),  # chooses the score
            "auroc_test_vs_unknown_val": auroc(scores["test"][s], scores["unknown_val"][s]),
            "auroc_test_vs_unknown_train": auroc(scores["test"][s], scores["unknown_train"][s]),
            "known_share_val": known["val"].float().mean().item(),
            "known_share_test": known["test"].float().mean().item(),
        }
        for n in ("test", "unknown_val", "unknown_train"):
            rows[s][f"auto_{n}_without"] = auto(n).float().mean().item()
            rows[s][f"auto_{n}_with"] = (auto(n) & known[n]).float().mean().item()
    acc = (out["test"]["probs"].argmax(1) == ds.test_y).float().mean().item()
    sizes = {n: len(v["logits"]) for n, v in out.items()}
    return {"review_threshold": review_t, "test_accuracy": acc, "n": sizes, "known_share": DEFAULT_KNOWN_SHARE, "scores": rows}


SHARES = (0.8, 0.9, 0.95, 0.99)  # the --unknown-share setting, swept to show its trade-off (the default stays 0.95)


def extras(out: dict, scores: dict, review_t: float, cats: dict) -> dict:
    """The choice's noise (paired bootstrap against energy), each left-out category alone, and the share setting."""
    per = {}
    for s in scores["val"]:
        sc = {n: scores[n][s] for n in scores}
        d = {"val_diff_vs_energy_95": bootstrap_diff(sc, {n: scores[n]["energy"] for n in scores}, "val", "unknown_val")}
        for i, c in enumerate(LEFT_OUT):
            m = cats["unknown_train"] == i
            auto = out["unknown_train"]["probs"][m].max(1).values >= review_t
            t = threshold_for(sc["val"], DEFAULT_KNOWN_SHARE)
            d[c] = {"n": int(m.sum()), "auroc_test_vs_train": auroc(sc["test"], sc["unknown_train"][m])}
            d[c] |= {"auto_without": auto.float().mean().item(), "auto_with": (auto & (sc["unknown_train"][m] <= t)).float().mean().item()}
        d["shares"] = {}
        for share in SHARES:
            t = threshold_for(sc["val"], share)
            row = {}
            for n in ("test", "unknown_val", "unknown_train"):
                auto = out[n]["probs"].max(1).values >= review_t
                row[f"auto_{n}_with"] = (auto & (sc[n] <= t)).float().mean().item()
            d["shares"][str(share)] = row
        per[s] = d
    return {"details": per}


def markdown(res: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        "| score | AUROC, validation (chooses) | AUROC, test vs left-out val | AUROC, test vs left-out train | "
        "left-out val auto: without → with | left-out train auto: without → with | "
        "known test auto: without → with (drop) | known test counted known |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in res["scores"].items():
        drop = 100 * (r["auto_test_without"] - r["auto_test_with"])
        lines.append(
            f"| {s} | {r['auroc_val']:.3f} | {r['auroc_test_vs_unknown_val']:.3f} | {r['auroc_test_vs_unknown_train']:.3f} | "
            f"{pct(r['auto_unknown_val_without'])} → {pct(r['auto_unknown_val_with'])} | "
            f"{pct(r['auto_unknown_train_without'])} → {pct(r['auto_unknown_train_with'])} | "
            f"{pct(r['auto_test_without'])} → {pct(r['auto_test_with'])} ({drop:.1f} points) | {pct(r['known_share_test'])} |"
        )
    lines += [
        "",
        "| score | val AUROC − energy's (95% bootstrap) | " + " | ".join(f"{c}: AUROC, auto without → with" for c in LEFT_OUT) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(LEFT_OUT))
    for s, d in res["details"].items():
        lo, hi = d["val_diff_vs_energy_95"]
        cells = [f"{d[c]['auroc_test_vs_train']:.3f}, {pct(d[c]['auto_without'])} → {pct(d[c]['auto_with'])}" for c in LEFT_OUT]
        diff = res["scores"][s]["auroc_val"] - res["scores"]["energy"]["auroc_val"]
        lines.append(f"| {s} | {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] | " + " | ".join(cells) + " |")
    lines += ["", "| score | share counted known | left-out val auto | left-out train auto | known test auto |", "|---|---|---|---|---|"]
    for s, d in res["details"].items():
        for share, r in d["shares"].items():
            lines.append(
                f"| {s} | {share} | {pct(r['auto_unknown_val_with'])} | {pct(r['auto_unknown_train_with'])} | {pct(r['auto_test_with'])} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="link the six known categories into VIEW/train and VIEW/validation")
    p.add_argument("view", type=Path)
    p.add_argument("--photos", type=Path, default=Path("../shared/clothing-photos"))
    m = sub.add_parser("measure", help="score a run trained on the view")
    m.add_argument("run", type=Path)
    m.add_argument("--view", type=Path, required=True)
    m.add_argument("--photos", type=Path, default=Path("../shared/clothing-photos"))
    m.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "unknown_categories.json")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.view, args.photos)
        return 0
    res = measure(args.run, args.view, args.photos)
    res["measured"] = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    print(markdown(res))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
