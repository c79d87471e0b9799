""""None of these" beyond post-hoc scores: a negatives class, trained with outlier exposure, on stored embeddings.

The six-class protocol of unknowns.py (the same splits, head, review rule and 95%-known cut on validation): a head
on dress, longsleeve, outwear, pants, shirt and t-shirt; hat, shoes, shorts and skirt never seen. Here the head gets
a seventh class, "other", fitted on negatives, and its probability of "other" becomes a score of its own (alone, and
as a z-score summed with the distances the library keeps: kNN + Mahalanobis + energy, the chosen post-hoc score).
The negatives tried, none of them a photo of the four unseen categories:

- mix: each a mixture of two training photos of different known classes (weights 0.35-0.65): points between the
  classes, where a near category (shorts between pants and the rest) would fall;
- bags: photos of another kind of product, the store's vectors of --negatives (the experiment used Fashion-MNIST's
  bag class as catalogue shots and as negated scans, tools/catalogue_shots.py and tools/photo_fmnist_folder.py:
  not one of the unseen four);
- both.

The share of the known validation photos the unknown rule counts known (95%, `--unknown-share`'s default) is a
lever of its own: --known-shares reports others, with the validation split's figures that would choose one.

Chosen on validation (AUROC of the known validation photos against validation/'s photos of the four unseen
folders); reported on the held-out unseen photos (train/'s four folders) and the known test split.

    .venv/bin/python experiments/embed_once/negatives.py --store STORE --photos ../shared/clothing-photos \
        --negatives /tmp/bags --seeds 0 1 2 --out experiments/embed_once/results/negatives.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from unknowns import KNOWN, UNSEEN, auroc, load  # the same protocol's pieces (this folder is sys.path[0])

from fashionclf.data.images import find_images
from fashionclf.engine.autotune import cpu_info
from fashionclf.engine.inference import head_view_logits
from fashionclf.evaluation.calibrate import calibrate
from fashionclf.evaluation.novelty import fit_novelty, part_scores
from fashionclf.training.embedded import _open, fit_head, out_of_fold

BASE = ("knn", "mahalanobis", "energy")  # the score store runs keep (evaluation/novelty.py)


def mixtures(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n mixtures of two photos of different classes, view by view."""
    i = torch.randint(len(y), (n * 2,), generator=g)
    j = torch.randint(len(y), (n * 2,), generator=g)
    keep = (y[i] != y[j]).nonzero().flatten()[:n]
    lam = (0.35 + 0.3 * torch.rand(len(keep), generator=g))[:, None, None]
    return lam * x[i[keep]] + (1 - lam) * x[j[keep]]


def split(st, root: Path, seed: int):
    x, y = load(st, root, "train", KNOWN)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique():  # 15% of each known class held out, as unknowns.py
        idx = (y == c).nonzero().flatten()
        test[idx[torch.randperm(len(idx), generator=g)[: round(0.15 * len(idx))]]] = True
    va_x, va_y = load(st, root, "validation", KNOWN)
    return x[~test], y[~test], x[test], y[test], va_x, va_y, load(st, root, "validation", UNSEEN)[0], load(st, root, "train", UNSEEN)[0]


def one(st, root: Path, negatives: torch.Tensor | None, seed: int, known_shares=(0.95,)) -> dict:
    tr_x, tr_y, te_x, te_y, va_x, va_y, unk_val, unk_test = split(st, root, seed)
    k = len(KNOWN)
    head, chosen = fit_head(tr_x, tr_y, va_x, va_y, k)
    oof = out_of_fold(tr_x, tr_y, k, chosen["decay"], seed=seed)
    rule = calibrate(torch.cat([oof[0], head_view_logits(head, va_x)[0]]), torch.cat([tr_y, va_y]))
    t, thr = rule["temperature"], rule["threshold"]
    nov = fit_novelty(tr_x, tr_y, va_x, head_view_logits(head, va_x)[1], seed=seed)
    sets = {"val": va_x, "test": te_x, "unk_val": unk_val, "unk_test": unk_test}
    conf = {n: (head_view_logits(head, v)[0] / t).softmax(1).max(1).values for n, v in sets.items()}
    auto = {n: conf[n] >= thr if thr is not None else torch.zeros(len(c), dtype=torch.bool) for n, c in conf.items()}
    raw = {n: part_scores(nov, v, head_view_logits(head, v)[1]) for n, v in sets.items()}
    scores = {n: {"base": sum((raw[n][p] - raw["val"][p].mean()) / raw["val"][p].std() for p in BASE)} for n in sets}
    g = torch.Generator().manual_seed(seed)
    pools = {"mix": mixtures(tr_x, tr_y, len(tr_y) // 2, g)}
    if negatives is not None:
        pools["bags"] = negatives
        pools["both"] = torch.cat([pools["mix"], negatives])
    for name, neg in pools.items():
        x7 = torch.cat([tr_x, neg])
        y7 = torch.cat([tr_y, torch.full((len(neg),), k)])
        h7, _ = fit_head(x7, y7, va_x, va_y, k + 1)  # "other" never appears in validation: the decay is chosen on the known
        for n, v in sets.items():
            scores[n][f"other:{name}"] = head_view_logits(h7, v)[0].softmax(1)[:, k]
    z = {s: (scores["val"][s].mean(), scores["val"][s].std()) for s in scores["val"]}
    for s in [s for s in z if s != "base"]:
        for n in sets:
            scores[n][f"base+{s}"] = scores[n]["base"] + (scores[n][s] - z[s][0]) / z[s][1]
    out = {"seed": seed, "negatives": {n: len(v) for n, v in pools.items()}, "scores": {}}
    out["known_auto_no_rule"] = auto["test"].float().mean().item()
    for s in scores["val"]:
        out["scores"][s] = {
            "val_auroc": auroc(scores["val"][s], scores["unk_val"][s]),
            "test_auroc": auroc(scores["test"][s], scores["unk_test"][s]),
        }
        for share in known_shares:  # this share of the known validation photos counts known (--unknown-share)
            cut, tag = scores["val"][s].quantile(share), "" if share == 0.95 else f"@{share:g}"
            for part, unk in (("test", "unk_test"), ("val", "unk_val")):
                pre = "" if part == "test" else "val_"
                out["scores"][s][f"{pre}unknown_auto{tag}"] = (auto[unk] & (scores[unk][s] <= cut)).float().mean().item()
                out["scores"][s][f"{pre}known_auto{tag}"] = (auto[part] & (scores[part][s] <= cut)).float().mean().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--photos", required=True)
    p.add_argument("--negatives", help="a folder of photos of other things (embedded into the store first if missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--known-shares", type=float, nargs="+", default=[0.95], help="the unknown rule's known shares to report")
    p.add_argument("--out")
    args = p.parse_args()
    st, model = _open(args.store)
    negatives = None
    if args.negatives:
        from fashionclf.embed.extract import embed_files

        files = find_images([Path(args.negatives)])
        embed_files(st, model, files)
        negatives = torch.from_numpy(st.vectors(st.hashes(files)))
    runs = [one(st, Path(args.photos), negatives, s, tuple(args.known_shares)) for s in args.seeds]
    summary = {
        n: {k: (statistics.mean(r["scores"][n][k] for r in runs), statistics.pstdev(r["scores"][n][k] for r in runs)) for k in v}
        for n, v in runs[0]["scores"].items()
    }
    result = {"command": "experiments/embed_once/negatives.py", "date": time.strftime("%Y-%m-%d"), "cpu": cpu_info()["model"]}
    result |= {"summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
