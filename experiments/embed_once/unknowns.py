""""None of these" on stored embeddings: kNN and Mahalanobis distances against the head's energy and confidence.

The distances are the library's (fashionclf/evaluation/novelty.py, what a store run keeps and predict computes); the
combinations are z-scores against the known validation photos, summed, as its embedding_score sums its three parts.

The protocol of docs/results/unknown-categories.md, on the store's vectors instead of a fine-tuned run: a head
is fitted on six of clothing-photos' folders (dress, longsleeve, outwear, pants, shirt, t-shirt); hat, shoes, shorts
and skirt are never seen. validation/'s photos of the four choose the score (AUROC against the known validation
photos); train/'s photos of the four are the held-out unknown set, against the known test split (15% of train/'s
six folders, carved by the split seed). The unknown rule counts 95% of the known validation photos known; the
review rule is the guaranteed one (99%, delta 0.05) on validation plus out-of-fold training photos.

    .venv/bin/python experiments/embed_once/unknowns.py --store STORE --photos ../shared/clothing-photos --seeds 0 1 2 \
        --out experiments/embed_once/results/unknowns.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fashionclf.data.images import find_images
from fashionclf.engine.autotune import cpu_info
from fashionclf.engine.inference import head_view_logits
from fashionclf.evaluation.calibrate import calibrate
from fashionclf.evaluation.novelty import PARTS, fit_novelty, part_scores
from fashionclf.training.embedded import _open, fit_head, out_of_fold

BACKBONE_DIM = 1280  # each EfficientNet-Lite's pooled features: the store's vectors are three of them side by side
KNOWN = ("dress", "longsleeve", "outwear", "pants", "shirt", "t-shirt")
UNSEEN = ("hat", "shoes", "shorts", "skirt")


def load(st, root: Path, split: str, classes) -> tuple[torch.Tensor, torch.Tensor]:
    files, labels = [], []
    for i, c in enumerate(classes):
        f = find_images([root / split / c])
        files += f
        labels += [i] * len(f)
    return torch.from_numpy(st.vectors(st.hashes(files))), torch.tensor(labels)


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """P(an unknown photo scores above a known one), ties half."""
    diff = unknown[:, None] - known[None, :]
    return ((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()).item()


def one(st, root: Path, seed: int) -> dict:
    x, y = load(st, root, "train", KNOWN)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():  # 15% of each known class held out
        idx = (y == c).nonzero().flatten()
        test[idx[torch.randperm(len(idx), generator=g)[: round(0.15 * len(idx))]]] = True
    tr_x, tr_y, te_x, te_y = x[~test], y[~test], x[test], y[test]
    va_x, va_y = load(st, root, "validation", KNOWN)
    unk_val, _ = load(st, root, "validation", UNSEEN)
    unk_test, _ = load(st, root, "train", UNSEEN)
    head, chosen = fit_head(tr_x, tr_y, va_x, va_y, len(KNOWN))
    oof = out_of_fold(tr_x, tr_y, len(KNOWN), chosen["decay"], seed=seed)
    cal_logits = torch.cat([oof[0], head_view_logits(head, va_x)[0]])
    rule = calibrate(cal_logits, torch.cat([tr_y, va_y]))
    t, thr = rule["temperature"], rule["threshold"]
    val_raw = head_view_logits(head, va_x)[1]
    nov = fit_novelty(tr_x, tr_y, va_x, val_raw, seed=seed)  # what a store run keeps (novelty.safetensors)
    # the same distances on each backbone's own features (1,280 numbers each), scaled on validation and summed
    slices = [slice(i, i + BACKBONE_DIM) for i in range(0, tr_x.shape[2], BACKBONE_DIM)]
    per = [fit_novelty(tr_x[..., sl], tr_y, va_x[..., sl], val_raw, seed=seed) for sl in slices]

    def summed(v, raw, part):
        i = PARTS.index(part)
        return sum((part_scores(n, v[..., sl], raw)[part] - n["scale"][i, 0]) / n["scale"][i, 1] for n, sl in zip(per, slices))

    def raw_scores(v):
        logits, raw = head_view_logits(head, v)
        parts = part_scores(nov, v, raw)
        out = {"msp": -(logits / t).softmax(1).max(1).values, "energy": parts["energy"], "knn": parts["knn"], "maha": parts["mahalanobis"]}
        return out | {"knn/backbone": summed(v, raw, "knn"), "maha/backbone": summed(v, raw, "mahalanobis")}

    sv, st_, su_v, su_t = (raw_scores(v) for v in (va_x, te_x, unk_val, unk_test))
    # combinations: each score as a z-score against the known validation photos, summed
    z = {n: (sv[n].mean(), sv[n].std()) for n in sv}
    combos = (("knn", "energy"), ("maha", "energy"), ("knn", "maha", "energy"), ("knn", "maha"))
    combos += (("knn/backbone", "maha/backbone", "energy"), ("knn", "maha", "energy", "knn/backbone", "maha/backbone"))
    for combo in combos:
        name = "+".join(combo)
        for s in (sv, st_, su_v, su_t):
            s[name] = sum((s[n] - z[n][0]) / z[n][1] for n in combo)
    out = {"seed": seed, "test_accuracy": (head_view_logits(head, te_x)[0].argmax(1) == te_y).float().mean().item(), "threshold": thr}
    conf = {k: (head_view_logits(head, v)[0] / t).softmax(1).max(1).values for k, v in (("test", te_x), ("unk", unk_test))}
    auto = {k: conf[k] >= thr if thr is not None else torch.zeros(len(conf[k]), dtype=torch.bool) for k in conf}
    out["known_auto_no_rule"] = auto["test"].float().mean().item()
    out["unknown_auto_no_rule"] = auto["unk"].float().mean().item()
    out["scores"] = {}
    for n in sv:
        cut = sv[n].quantile(0.95)  # 95% of the known validation photos count known
        out["scores"][n] = {
            "val_auroc": auroc(sv[n], su_v[n]),
            "test_auroc": auroc(st_[n], su_t[n]),
            "unknown_auto": (auto["unk"] & (su_t[n] <= cut)).float().mean().item(),
            "known_auto": (auto["test"] & (st_[n] <= cut)).float().mean().item(),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--photos", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out")
    args = p.parse_args()
    st, _ = _open(args.store)
    runs = [one(st, Path(args.photos), s) for s in args.seeds]
    names = list(runs[0]["scores"])
    summary = {
        n: {
            k: (statistics.mean(r["scores"][n][k] for r in runs), statistics.pstdev(r["scores"][n][k] for r in runs))
            for k in runs[0]["scores"][n]
        }
        for n in names
    }
    for k in ("test_accuracy", "known_auto_no_rule", "unknown_auto_no_rule"):
        summary[k] = (statistics.mean(r[k] for r in runs), statistics.pstdev(r[k] for r in runs))
    result = {
        "command": "experiments/embed_once/unknowns.py",
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_info()["model"],
        "summary": summary,
        "runs": runs,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
