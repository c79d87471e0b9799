"""The review loop on stored embeddings: what a person's decisions buy, and how long the next model takes.

Every photo of clothing-photos (train/ and validation/ pooled, 10 classes, 3,409) is dealt per seed into 700 held
out as the test set, 1,200 a shop has labelled, and the rest (1,509) its new photos, the desk's queue. The head and
its guaranteed review rule (99%, delta 0.05, out-of-fold calibration) are fitted on the labelled photos (the L2
weight chosen once, by 5-fold log-loss on them). Then a person (simulated: the folder's label is the decision)
decides the queue's photos that the current rule sends to review, in the desk's order (least confident first:
review/db.py) or, for comparison, at random; every 20 decisions (10 to land on 50) the head and rule refit
(training/refit.py: ReviewHead.add; decided photos train, the rule stays calibrated on the labelled photos) and the
queue re-ranks. After 0, 50, 100, 200 and 400 decisions: held-out top-1, the share labelled with no person and its
realised precision (auto_precision: averaged over the seeds that labelled any). Last, one refit is timed with
10,000 photos labelled (the store's photos drawn again with a small jitter): 20 decisions added to a ReviewHead
over 9,980 (head_s: the head and the five fold heads, fitted together, what re-ranking waits for; seconds: with the
rule; start_s: the first fit, from zeros, which runs to convergence).

    .venv/bin/python experiments/review_loop/refit.py --store STORE --photos ../shared/clothing-photos --seeds 0 1 2 \
        --out experiments/review_loop/results/refit.json
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
from fashionclf.training.embedded import DECAYS, _open, out_of_fold
from fashionclf.training.refit import ReviewHead

STEPS = (0, 50, 100, 200, 400)
EVERY = 20  # decisions between refits, as the desk does


def load(st, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    files, labels = [], []
    for i, c in enumerate(classes):
        f = find_images([root / split / c])
        files += f
        labels += [i] * len(f)
    return torch.from_numpy(st.vectors(st.hashes(files))).float(), torch.tensor(labels), classes


def choose_decay(x: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """The L2 weight with the lowest 5-fold out-of-fold log-loss on the labelled photos."""
    loss = {d: torch.nn.functional.cross_entropy(out_of_fold(x, y, classes, d)[0], y).item() for d in DECAYS}
    return min(loss, key=loss.get)


def measure(fit, x, y) -> dict:
    pred, _, auto = fit.decide(x)
    right = pred == y
    return {
        "test_accuracy": right.float().mean().item(),
        "auto_share": auto.float().mean().item(),
        "auto_precision": right[auto].float().mean().item() if auto.any() else None,
        "refit_s": fit.seconds,
        "head_s": fit.head_seconds,
    }


TEST, LABELLED = 700, 1200


def one(st, root: Path, seed: int, order: str) -> dict:
    x1, y1, classes = load(st, root, "train")
    x2, y2, classes2 = load(st, root, "validation")
    assert classes == classes2, (classes, classes2)
    px, py = torch.cat([x1, x2]), torch.cat([y1, y2])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(py), generator=g)
    test, known, queue = perm[:TEST], perm[TEST : TEST + LABELLED], perm[TEST + LABELLED :].tolist()
    k = len(classes)
    decay = choose_decay(px[known], py[known], k)
    fit = ReviewHead(px[known], py[known], k, decay, seed=seed)
    rows, decided = {0: measure(fit, px[test], py[test])}, []
    while len(decided) < STEPS[-1]:
        _, conf, auto = fit.decide(px[queue])
        sent = [(c, q) for c, a, q in zip(conf.tolist(), auto.tolist(), queue) if not a]
        if order == "desk":
            sent.sort()
        else:
            sent = [sent[i] for i in torch.randperm(len(sent), generator=g).tolist()]
        step = next(t for t in STEPS if t > len(decided))
        take = [q for _, q in sent[: min(EVERY, step - len(decided))]]  # land on each measured step
        if not take:
            break
        decided += take
        queue = [q for q in queue if q not in set(take)]
        fit.add(px[take], py[take])
        if len(decided) in STEPS:
            rows[len(decided)] = measure(fit, px[test], py[test])
    return {"seed": seed, "order": order, "decay": decay, "labelled": LABELLED, "queue": len(perm) - TEST - LABELLED, "steps": rows}


def big_refit(st, root: Path, n: int = 10_000, repeats: int = 3) -> dict:
    """One refit's seconds on n rows drawn (with a 5% jitter) from every stored photo of the folders."""
    x1, y1, _ = load(st, root, "train")
    x2, y2, _ = load(st, root, "validation")
    x, y = torch.cat([x1, x2]), torch.cat([y1, y2])
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(0, len(y), (n,), generator=g)
    xb = x[pick] + 0.05 * x.std(0) * torch.randn(n, *x.shape[1:], generator=g)
    yb, times, head_times = y[pick], [], []
    head = ReviewHead(xb[: n - 20 * repeats], yb[: n - 20 * repeats], int(y.max()) + 1, 1e-3)
    head_start = head.seconds  # the cold fit and its out-of-fold calibration, once when the desk starts
    for r in range(repeats, 0, -1):  # the labelled rows grow to n, 20 decisions at a time
        lo = n - 20 * r
        head.add(xb[lo : lo + 20], yb[lo : lo + 20])
        times.append(head.seconds)
        head_times.append(head.head_seconds)
    return {
        "head_s": head_times,
        "head_median_s": statistics.median(head_times),
        "photos": n,
        "dim": x.shape[2],
        "views": x.shape[1],
        "start_s": head_start,
        "seconds": times,
        "median_s": statistics.median(times),
    }


def summary(runs: list[dict]) -> dict:
    out = {}
    for order in sorted({r["order"] for r in runs}):
        rs = [r for r in runs if r["order"] == order]
        out[order] = {}
        for step in STEPS:
            have = [r["steps"][step] for r in rs if step in r["steps"]]
            out[order][step] = {
                k: (statistics.mean(v), statistics.pstdev(v))
                for k in ("test_accuracy", "auto_share", "auto_precision", "refit_s", "head_s")
                if (v := [h[k] for h in have if h[k] is not None])
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--photos", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--orders", nargs="+", default=["desk", "random"])
    p.add_argument("--out")
    args = p.parse_args()
    st, _ = _open(args.store)
    torch.set_num_threads(2)
    runs = [one(st, Path(args.photos), s, o) for o in args.orders for s in args.seeds]
    result = {
        "command": "experiments/review_loop/refit.py",
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_info()["model"],
        "summary": summary(runs),
        "refit_10k": big_refit(st, Path(args.photos)),
        "runs": runs,
    }
    print(json.dumps({k: result[k] for k in ("summary", "refit_10k")}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
