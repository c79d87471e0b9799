"""Build the ready model (fashionclf/weights/default): two trained runs, a review rule fitted on photos, checksums.

The members are a scan run (Fashion-MNIST's ten classes at 28x28, the photo cut out as Zalando cut its shots) and
an RGB photo run (the same ten classes, the photo kept in colour), asked together as `predict --with` asks them.
`make ready-model` trains both and calls this script; the figures it prints are reproduced in
docs/results/ready-model.md.

    .venv/bin/python tools/ready_model.py --scan SCAN_RUN --photo RGB_RUN \\
        --phone ../shared/clothing-photos/validation --phone-map "$MAP" --catalogue /tmp/catshots \\
        --out fashionclf/weights/default --report experiments/ready_model/results/ready.json \\
        --record tests/data/ready

What is fitted where: each run calibrated itself on its own validation split. The review rule of the pair
(a temperature for the averaged probabilities, and the confidence threshold for 99% precision on the items both
runs agree on) is fitted on the held-out photos here, phone photos and catalogue shots pooled, which neither run
trained on. Its realised precision is estimated by 2-fold cross-fitting (fit on one half, count on the other,
and the reverse); the shipped rule is fitted on all of them. Nothing here chooses between recipes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from fashionclf.core.io import atomic_write_text, to_json
from fashionclf.data.fashion_mnist import load_fashion_mnist
from fashionclf.data.folders import map_folders, parse_class_map, scans_as_photos
from fashionclf.engine.runs import load_run
from fashionclf.evaluation.calibrate import ece
from fashionclf.infer import ready
from fashionclf.infer.predict import class_order, load_labelled_photos, predict_scored, review_threshold


def member_probs(runs, folder, class_map):
    """Each run's calibrated probabilities on labelled photos (in runs[0]'s class order), its "none of these"
    scores (None for a run without one), and the labels."""
    probs, scores, labels = [], [], None
    for r in runs:
        x, y, skipped = load_labelled_photos(r, folder, class_map=class_map)
        if skipped:
            raise SystemExit(f"{folder}: {len(skipped)} photos unreadable for {r.path}: {skipped[:3]}")
        p, unknown = predict_scored(r, x)
        order = class_order(runs[0], r)
        probs.append(torch.empty_like(p).index_copy_(1, order, p))
        scores.append(unknown[1] if unknown else None)
        y0 = order[y]
        if labels is not None and not torch.equal(labels, y0):
            raise SystemExit(f"{folder}: the runs read its photos in different orders")
        labels = y0
    return probs, scores, labels


def old_rule(runs, probs, scores, labels):
    """What `predict --with` did before: the average, flagged below the strictest run's own (scan-fitted) threshold
    or where a run's own "none of these" threshold (fitted on its validation split) calls the photo unknown."""
    mean = torch.stack(probs).mean(0)
    conf, pred = mean.max(1)
    strict = max(review_threshold(r) for r in runs)
    own = [((r.metrics.get("unknown") or {}).get("thresholds") or {}).get((r.metrics.get("unknown") or {}).get("score")) for r in runs]
    unknown = ready.unknown_mask(scores, own, len(labels))
    auto = ready.agreement(probs, mean) & ~unknown & (conf >= strict)
    correct = pred == labels
    n = int(auto.sum())
    return {
        "threshold": strict,
        "unknown": int(unknown.sum()),
        "automatic_share": n / len(labels),
        "automatic": n,
        "automatic_errors": int((auto & ~correct).sum()),
        "realised_precision": correct[auto].float().mean().item() if n else None,
        "ece": ece(mean, labels),
    }


def pooled(kinds: dict, pick: dict | None = None):
    """The kinds' photos together (each kind's rows where pick[kind] is True): probs and scores per member, labels, kind."""
    rows = {k: (pick[k] if pick else slice(None)) for k in kinds}
    members = range(len(next(iter(kinds.values()))[0]))
    probs = [torch.cat([p[m][rows[k]] for k, (p, _, _) in kinds.items()]) for m in members]
    scores = [
        None if any(sc[m] is None for _, sc, _ in kinds.values()) else torch.cat([sc[m][rows[k]] for k, (_, sc, _) in kinds.items()])
        for m in members
    ]
    groups = torch.cat([torch.full((len(y[rows[k]]),), i) for i, (k, (_, _, y)) in enumerate(kinds.items())])
    return probs, scores, torch.cat([y[rows[k]] for k, (_, _, y) in kinds.items()]), groups


def cross_fit(kinds: dict, seed: int = 0) -> dict:
    """2-fold cross-fitting over the pooled photos: per kind, the check figures summed over both held-out halves."""
    g = torch.Generator().manual_seed(seed)
    folds = {k: torch.randperm(len(y), generator=g) % 2 for k, (_, _, y) in kinds.items()}
    totals = {k: {"photos": 0, "unknown": 0, "automatic": 0, "automatic_errors": 0, "thresholds": []} for k in kinds}
    for f in (0, 1):
        rule = ready.fit_review(*_fit_args(pooled(kinds, {k: folds[k] != f for k in kinds})))
        for k, (p, sc, y) in kinds.items():
            held = folds[k] == f
            c = ready.check_review([q[held] for q in p], y[held], rule, [None if q is None else q[held] for q in sc])
            t = totals[k]
            for key in ("photos", "unknown", "automatic", "automatic_errors"):
                t[key] += c[key]
            t["thresholds"].append(rule["threshold"])
    for t in totals.values():
        t["automatic_share"] = t["automatic"] / t["photos"]
        t["realised_precision"] = 1 - t["automatic_errors"] / t["automatic"] if t["automatic"] else None
    return totals


def _fit_args(pool):
    probs, scores, labels, groups = pool
    return probs, labels, 0.99, scores, 0.95, groups


CHUNK = 500  # Fashion-MNIST test scans converted and scored at a time


def fashion_mnist_test(runs, rule):
    """The whole test set: the scan run on the scans, the photo run on them as dark-on-white photos, and both."""
    data = load_fashion_mnist(allow_download=False)
    index = map_folders(list(data.classes), runs[0].classes, None, "Fashion-MNIST")
    y = torch.tensor([index[name] for name in data.classes])[data.test_y]
    scan, u_scan = predict_scored(runs[0], data.test_x)
    side, parts = runs[1].meta["input"]["height"], []
    for chunk in data.test_x.split(CHUNK):  # in chunks: 10,000 scans as 260 px photos would take 2 GB, more as floats
        parts.append(predict_scored(runs[1], scans_as_photos(chunk, side)))
    p = torch.cat([q for q, _ in parts])
    u_photo = None if parts[0][1] is None else (parts[0][1][0], torch.cat([u[1] for _, u in parts]))
    photo = torch.empty_like(p).index_copy_(1, class_order(runs[0], runs[1]), p)
    both = ready.check_review([scan, photo], y, rule, [u[1] if u else None for u in (u_scan, u_photo)])
    acc = lambda q: (q.argmax(1) == y).float().mean().item()  # noqa: E731
    return {"scan_run": acc(scan), "photo_run": acc(photo), "both": both}


def end_to_end(bundle: Path, folder: str, class_map) -> dict:
    """The bundle as shipped, through `predict` (decoding, both conversions, the rule, "none of these"), on a
    labelled folder: accuracy (an unknown answer counts wrong), the share labelled with no person, its precision."""
    import fashionclf
    from fashionclf.data.folders import mapped_items

    run = fashionclf.load_run(bundle)
    items = mapped_items(folder, run.classes, class_map)
    rows = run.predict([p for p, _ in items])
    right = [r.get("label") == run.classes[y] for r, (_, y) in zip(rows, items)]
    auto = [not r.get("needs_review", True) for r in rows]
    n_auto = sum(auto)
    return {
        "photos": len(rows),
        "accuracy": sum(right) / len(rows),
        "unknown": sum(bool(r.get("unknown")) for r in rows),
        "automatic_share": n_auto / len(rows),
        "automatic": n_auto,
        "automatic_errors": sum(a and not c for a, c in zip(auto, right)),
        "realised_precision": sum(a and c for a, c in zip(auto, right)) / n_auto if n_auto else None,
    }


def record(bundle: Path, folder: Path, photos: list[Path]) -> list[dict]:
    """Copy a few photos into folder (downscaled to 256 px, JPEG) and record what the bundle says of each."""
    from PIL import Image

    import fashionclf

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for p in photos:
        im = Image.open(p).convert("RGB")
        im.thumbnail((256, 256))
        dest = folder / f"{p.parent.name}-{p.stem}.jpg"
        im.save(dest, quality=90)
        files.append(dest)
    rows = fashionclf.load_run(bundle).predict(files)
    return [
        {"file": f.name, "label": r["label"], "confidence": r["confidence"], "needs_review": r["needs_review"]} for f, r in zip(files, rows)
    ]


def card(extra: dict, rule: dict) -> str:
    """The bundle's model card: what it is, its classes, its figures and its limits, from the figures measured here."""
    f = extra["figures"]
    pct = lambda v: "n/a" if v is None else f"{v * 100:.1f}%"  # noqa: E731
    rows = []
    for kind, e in f["shipped_through_predict"].items():
        rows.append(
            f"| {kind} | {e['photos']} | {pct(e['accuracy'])} | {pct(e['automatic_share'])} | {pct(e['realised_precision'])} "
            f"| {pct(f['cross_fitted'][kind]['realised_precision'])} |"
        )
    t = f["fashion_mnist_test"]
    members = ", ".join(f"{k}: `{m['model']}` (seed {m['seed']}, {m['train_seconds'] or 0:.0f} s)" for k, m in f["members"].items())
    return "\n".join(
        [
            "# fashionclf ready model `default`",
            "",
            f"Built {extra['created']} by `{extra['command']}`.",
            "",
            f"Classes (Fashion-MNIST's ten): {', '.join(extra['classes'])}.",
            f"Members, asked together on every photo: {members}.",
            f"Review rule, fitted on {rule.get('fitted_on_photos')} held-out photos (temperature {rule['temperature']:.3f}; an item is "
            f"labelled with no person only where both runs agree): {rule.get('promise', 'the old point estimate, no guarantee')}.",
            "",
            "| photos | n | accuracy | labelled with no person | its precision | precision, cross-fitted |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Fashion-MNIST test (10,000 scans): scan run {pct(t['scan_run'])}, photo run {pct(t['photo_run'])}, "
            f"both {pct(t['both']['accuracy'])} (ECE {pct(t['both']['ece'])}).",
            "",
            "Limits: ten Fashion-MNIST categories only (a hat, a skirt or shorts get one of them, or `unknown`); phone photos of",
            "six of them were its only real photos (clothing-photos, CC0); the catalogue shots are made from Fashion-MNIST test",
            "images by tools/catalogue_shots.py; one seed; the figures above are in-sample for the review rule except the",
            "cross-fitted column. See docs/results/ready-model.md.",
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", required=True, help="the scan run (28x28, Fashion-MNIST's classes)")
    ap.add_argument("--photo", required=True, help="the RGB photo run (the same classes, named alike)")
    ap.add_argument("--phone", required=True, help="held-out labelled phone photos, one folder per category")
    ap.add_argument("--phone-map", required=True, help="their folders onto Fashion-MNIST's classes ('-' leaves one out)")
    ap.add_argument("--catalogue", required=True, help="catalogue-style shots (tools/catalogue_shots.py), one folder per class")
    ap.add_argument("--out", required=True, help="the bundle folder to write (never overwritten)")
    ap.add_argument("--report", required=True, help="the figures, as JSON")
    ap.add_argument("--record", help="copy a few phone photos here and record the bundle's answers (tests/data/ready)")
    args = ap.parse_args()
    t0 = time.time()
    runs = [load_run(args.scan), load_run(args.photo)]
    kinds = {
        "phone": member_probs(runs, args.phone, parse_class_map(args.phone_map)),
        "catalogue": member_probs(runs, args.catalogue, None),
    }
    rule = ready.fit_review(*_fit_args(pooled(kinds)))
    figures = {
        "per_kind": {
            k: {
                "scan_run": (p[0].argmax(1) == y).float().mean().item(),
                "photo_run": (p[1].argmax(1) == y).float().mean().item(),
                "both_fitted_on_all": ready.check_review(p, y, rule, sc),
                "old_rule": old_rule(runs, p, sc, y),
            }
            for k, (p, sc, y) in kinds.items()
        },
        "cross_fitted": cross_fit(kinds),
        "fashion_mnist_test": fashion_mnist_test(runs, rule),
        "members": {
            name: {
                "model": r.meta["model"],
                "train_seconds": r.metrics.get("train_seconds"),
                "seed": r.config.seed,
                "test_accuracy": r.metrics.get("test_accuracy"),
            }
            for name, r in zip(("scan", "photo"), runs)
        },
    }
    command = " ".join(["python", *sys.argv])
    extra = {
        "name": "default",
        "classes": runs[0].classes,
        "command": command,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "figures": figures,
    }
    draft = ready.write_bundle(f"{args.out}.draft", {"scan": args.scan, "photo": args.photo}, rule, extra)
    try:  # the draft answers through `predict` exactly as the bundle will; its figures go into the bundle
        figures["shipped_through_predict"] = {
            "phone": end_to_end(draft, args.phone, parse_class_map(args.phone_map)),
            "catalogue": end_to_end(draft, args.catalogue, None),
        }
        recorded = None
        if args.record:
            photos = sorted(p for p in Path(args.phone).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[::40][:6]
            rec = Path(args.record)
            if rec.exists():
                shutil.rmtree(rec)
            recorded = record(draft, rec, photos)
            atomic_write_text(rec / "expected.json", to_json(recorded))
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    bundle = ready.write_bundle(args.out, {"scan": args.scan, "photo": args.photo}, rule, extra)
    atomic_write_text(bundle / "README.md", card(extra, rule))
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    doc = {"command": command, "date": extra["created"], "bundle_bytes": size, "review": rule, "figures": figures}
    doc.update(seconds=time.time() - t0, recorded=recorded)
    atomic_write_text(args.report, to_json(doc))
    print(to_json({k: doc[k] for k in ("bundle_bytes", "review", "figures")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
