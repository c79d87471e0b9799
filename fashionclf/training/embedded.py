"""A run from an embedding store: a linear head fitted in seconds on stored features, saved as an ordinary run.

The data are read as `--data` always reads them (class folders, split folders or a manifest; the same splits
for the same split seed), except that each photo becomes its stored vectors instead of pixels: photos the store
lacks are embedded first, once. The head is a multinomial logistic regression on standardised features, each
photo's views averaged into one row (fit_rows), fitted to convergence with L-BFGS; its L2 weight is chosen on the
validation split by log-loss of the mirror-averaged prediction (the run's TTA). Temperature, the guaranteed review
rule and "none of these" are then fitted exactly as for a trained network (training/supervised.py), from logits
computed on the stored vectors, the distances of "none of these" too (evaluation/novelty.py). The run folder
holds the backbones and the head as one network (models/frozen.py), so predict, serve, evaluate and export treat
it as any other run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

from fashionclf.core.config import TrainConfig
from fashionclf.core.io import to_json
from fashionclf.data.fashion_mnist import DataError
from fashionclf.data.folders import load_image_folder
from fashionclf.data.images import ImageError
from fashionclf.embed.extract import embed_files, open_store
from fashionclf.embed.store import EmbeddingStore, read_spec
from fashionclf.engine.inference import head_view_logits
from fashionclf.engine.runs import NOVELTY, claim
from fashionclf.evaluation.calibrate import Promise
from fashionclf.evaluation.novelty import embedding_score, fit_novelty
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE
from fashionclf.models.frozen import FrozenLites
from fashionclf.training.base import Job
from fashionclf.training.loop import FitResult
from fashionclf.training.supervised import score_and_save

LABELLED = "labelled.json"  # in a store run's folder: StoreDecoder.labelled
# L2 weights tried, per feature after standardising, strongest first until the validation log-loss rises: on
# clothing-photos the best was 1e-2 or 3e-2, the top of the first grid, and the weakest fits cost most (L-BFGS
# needs many more steps on a weakly regularised problem)
DECAYS = (1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


class StoreDecoder:
    """What load_image_folder calls to turn (file, label) items into tensors: here the stored vectors."""

    disk = None

    def __init__(self, store: EmbeddingStore, model: FrozenLites, on_batch: Callable[[int, int], None] | None = None):
        self.store, self.model, self.on_batch, self.reports = store, model, on_batch, []
        self.rows: dict[int, list[str]] = {}  # id(vectors) -> the content hash of each row: which photos a split holds

    def decode(self, items):
        files = [p for p, _ in items]
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]} is listed but missing; restore it or remove it from the data")
        hashes = self.store.hashes(files)
        report = embed_files(self.store, self.model, files, on_batch=self.on_batch, hashes=hashes)
        self.reports.append(report)
        unread = set(self.store.missing(hashes))  # photos that could not be decoded (report["skipped"] says why)
        kept = [i for i, h in enumerate(hashes) if h not in unread]
        if not kept:
            raise DataError("none of the images could be read: " + "; ".join(report["skipped"][:3]))
        x = torch.from_numpy(self.store.vectors([hashes[i] for i in kept]))
        self.rows[id(x)] = [hashes[i] for i in kept]
        return x, torch.tensor([items[i][1] for i in kept], dtype=torch.long), report["skipped"]

    def take(self, x, y, idx, pool):
        out = x[idx]
        self.rows[id(out)] = [self.rows[id(x)][i] for i in idx.tolist()]
        return out, y[idx]

    def labelled(self, ds) -> dict:
        """labelled.json of a store run: the content hash and class of every training and validation photo, so
        that the review desk can refit the head on them and a person's decisions (training/refit.py)."""
        hashes = self.rows[id(ds.train_x)] + self.rows[id(ds.val_x)]
        return {"format": 1, "hashes": hashes, "labels": torch.cat([ds.train_y, ds.val_y]).tolist()}


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, decay: float, init: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """Multinomial logistic regression on rows x (standardised), mean cross-entropy + decay * |W|^2, by L-BFGS:
    fit_heads with one head on every row."""
    start = torch.zeros(1, classes, x.shape[1] + 1) if init is None else stacked(init)[None]
    return to_linear(fit_heads(x, y, torch.ones(1, len(y), dtype=torch.bool), decay, start)[0])


def fit_heads(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, decay: float, start: torch.Tensor, evals: int = 300) -> torch.Tensor:
    """K multinomial logistic regressions at once: head k minimises the mean cross-entropy over the rows of x
    (standardised) where masks[k] holds, + decay * |W_k|^2 (fit_linear's objective, on its rows).

    start and the result: (K, classes, dim + 1), each head's weights with its bias last. The objective is the sum of
    the K heads' own, and they share no parameter, so its minimum is each head's own minimum; one L-BFGS runs them
    together, one pass over x serving every head's logits and gradients (at 20,000 rows x 3,840 features, one
    evaluation for six heads takes 0.23 s on two cores, one head's 0.10 s: cheaper than six, not as cheap as one).
    evals: at most this many evaluations of the objective (L-BFGS steps and line-search trials)."""
    k, classes = start.shape[:2]
    weights = masks.float() / masks.sum(1, keepdim=True).clamp_min(1)  # (K, rows): each head's mean
    p = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1, max_iter=evals, max_eval=evals, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        opt.zero_grad()
        w, b = p[:, :, :-1], p[:, :, -1]
        logits = (x @ w.reshape(k * classes, -1).T + b.reshape(-1)).reshape(len(x), k, classes)
        nll = -logits.log_softmax(2).gather(2, y[:, None, None].expand(-1, k, 1)).squeeze(2)  # (rows, K)
        loss = (nll * weights.T).sum() + decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return p.detach()


def stacked(h: torch.nn.Linear) -> torch.Tensor:
    """A head as one (classes, dim + 1) tensor, its bias last: fit_heads' form of it."""
    return torch.cat([h.weight, h.bias[:, None]], 1).detach()


def to_linear(p: torch.Tensor) -> torch.nn.Linear:
    """stacked's inverse."""
    out = torch.nn.Linear(p.shape[1] - 1, p.shape[0])
    with torch.no_grad():
        out.weight.copy_(p[:, :-1])
        out.bias.copy_(p[:, -1])
    return out


def fit_rows(v: torch.Tensor, views: str) -> torch.Tensor:
    """The (n, rows per photo, dim) vectors a head is fitted on: each photo's views averaged into one row ("mean",
    the default: on clothing-photos 2.4x faster than "rows", each view a row of its own, at a validation log-loss
    within 0.0012 and the same or better validation accuracy on 3 split seeds; docs/results/embed-once.md)."""
    if views not in ("mean", "rows"):
        raise ValueError(f"views {views!r}: expected 'mean' or 'rows'")
    return v.mean(1, keepdim=True) if views == "mean" else v


def fit_head(
    train_v, train_y, val_v, val_y, classes: int, decays=DECAYS, init: torch.nn.Linear | None = None, views: str = "mean"
) -> tuple[torch.nn.Linear, dict]:
    """The head on raw features (standardisation folded in) and how it was chosen: the val log-loss of each decay
    tried, strongest first, stopping at the first one whose loss is higher than the one before (the loss along the
    regularisation path falls to one minimum and rises; without validation every decay is tried and the weakest kept).
    init: a head on raw features to start from (a refit after a few more labels converges in a few steps).
    views: fit_rows'; the validation photos are always scored as the run predicts, each view through the head."""
    fitted = fit_rows(train_v, views)
    rows = fitted.reshape(-1, fitted.shape[2])
    mean, std = rows.mean(0), rows.std(0).clamp_min(1e-6)
    xs, ys = (rows - mean) / std, train_y.repeat_interleave(fitted.shape[1])
    scored, head, prev = {}, None, None if init is None else to_standardised(init, mean, std)
    for d in sorted(decays, reverse=True):  # strongest first; each fit starts from the last (warm start)
        h = fit_linear(xs, ys, classes, d, init=prev)
        prev = h
        folded = to_raw(h, mean, std)
        loss = torch.nn.functional.cross_entropy(head_view_logits(folded, val_v)[0], val_y).item() if len(val_y) else float(d)
        before = scored[min(scored)] if scored else float("inf")  # the last decay tried: the next stronger one
        scored[d] = loss
        if loss > before:  # past the minimum
            break
        if head is None or loss < scored[head[0]]:
            head = (d, folded)
    return head[1], {"decay": head[0], "val_log_loss": {str(k): round(v, 5) for k, v in sorted(scored.items())}, "views": views}


def out_of_fold(
    x: torch.Tensor, y: torch.Tensor, classes: int, decay: float, folds: int = 5, seed: int = 0, init=None, views: str = "mean"
):
    """(logits, raw) of every row of x from the one of `folds` heads (same decay) whose fit left that row out; the
    heads fit together (fit_heads), on features standardised by all of x (no label enters the statistics).
    init: a head on raw features to start each fold's fit from (fit_head's). views: fit_rows'."""
    part = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)) % folds
    fit_x = fit_rows(x, views)
    rows = fit_x.reshape(-1, x.shape[2])
    mean, std = rows.mean(0), rows.std(0).clamp_min(1e-6)
    masks = part.repeat_interleave(fit_x.shape[1])[None, :] != torch.arange(folds)[:, None]
    start = torch.zeros(classes, x.shape[2] + 1) if init is None else stacked(to_standardised(init, mean, std))
    heads = fit_heads((rows - mean) / std, y.repeat_interleave(fit_x.shape[1]), masks, decay, start.expand(folds, -1, -1))
    logits, raw = torch.empty(len(y), classes), torch.empty(len(y), classes)
    for k in range(folds):
        held = part == k
        logits[held], raw[held] = head_view_logits(to_raw(to_linear(heads[k]), mean, std), x[held])
    return logits, raw


def to_raw(h: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """The same map on unstandardised features: W' = W / std, b' = b - W' mean."""
    out = torch.nn.Linear(h.in_features, h.out_features)
    with torch.no_grad():
        out.weight.copy_(h.weight / std)
        out.bias.copy_(h.bias - out.weight @ mean)
    return out


def to_standardised(h: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """to_raw's inverse: the map of a head on raw features, on standardised ones (W = W' std, b = b' + W' mean)."""
    out = torch.nn.Linear(h.in_features, h.out_features)
    with torch.no_grad():
        out.weight.copy_(h.weight * std)
        out.bias.copy_(h.bias + h.weight @ mean)
    return out


def train_on_store(
    data: str | Path,
    out: str | Path,
    store: str | Path,
    val_data: str | Path | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.15,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    promise: Promise = Promise(),
    unknown_share: float = DEFAULT_KNOWN_SHARE,
    on_embed: Callable[[int, int], None] | None = None,
    precision: str = "auto",
    calibration: str = "oof",
) -> dict:
    """Fit a head on the store's vectors of `data` (embedding what is missing) into the run folder `out`.
    precision: how the run's network computes when it predicts ("auto": measured; "fp32"). calibration: the items the
    temperature and the review rule are fitted on: "val" (the validation split) or "oof" (validation plus every
    training photo, scored by one of K=5 heads that did not see it: out_of_fold)."""
    if calibration not in ("val", "oof"):
        raise ValueError(f"calibration {calibration!r}: expected 'val' or 'oof'")
    st, model = _open(store)
    dec = StoreDecoder(st, model, on_embed)
    with claim(out, overwrite) as _:
        try:
            ds, skipped = load_image_folder(data, val_data, model.image_size, test_fraction, val_fraction, split_seed, decoder=dec)
        except ImageError as e:
            raise DataError(str(e)) from None
        start = time.perf_counter()
        head, chosen = fit_head(ds.train_x, ds.train_y, ds.val_x, ds.val_y, len(ds.classes))
        seconds = time.perf_counter() - start
        model.head = head
        kwargs = {"in_chans": 3, "image_size": model.image_size, "backbones": "+".join(model.keys)}
        cfg = TrainConfig(
            model="frozen_lites", seed=split_seed, split_seed=split_seed, tta=True, model_kwargs=kwargs, epochs=1, precision=precision
        )
        res = FitResult(
            model, [{"epoch": 1, "seconds": seconds}], seconds, best_epoch=1, params=sum(p.numel() for p in head.parameters()),
            device="cpu", precision="fp32", precision_choice={"embedding": [r.get("precision") for r in dec.reports]},
        )  # fmt: skip
        val, test = head_view_logits(head, ds.val_x), head_view_logits(head, ds.test_x)
        items = None
        if calibration == "oof":  # more calibration items: the training photos, each scored by a head that did not see it
            oof = out_of_fold(ds.train_x, ds.train_y, len(ds.classes), chosen["decay"], seed=split_seed)
            items = (*(torch.cat([a, b]) for a, b in zip(oof, val)), torch.cat([ds.train_y, ds.val_y]))
        side = model.image_size
        extra = {
            "input": {"channels": 3, "height": side, "width": side, "kind": "rgb-letterbox"},
            "trainer": {"kind": "embedded-head", "store": str(Path(store).resolve()), "store_spec": st.spec, **chosen},
            "calibration_items": "validation" if calibration == "val" else "validation + out-of-fold training photos (5 folds)",
        }
        job = Job(Path(out), overwrite, unknown_share=unknown_share, promise=promise, meta=extra)
        files, embedding = {LABELLED: to_json(dec.labelled(ds))}, None
        if len(ds.val_y) >= 2:  # "none of these" by distances to the training photos (evaluation/novelty.py)
            novelty = fit_novelty(ds.train_x, ds.train_y, ds.val_x, val[1], seed=split_seed)
            embedding = tuple(embedding_score(novelty, v, r) for v, (_, r) in ((ds.val_x, val), (ds.test_x, test)))
            files[NOVELTY] = safetensors.torch.save({k: t.contiguous() for k, t in novelty.items()})
        metrics = score_and_save(cfg, ds, res, job, scored=(val, test), calibration_items=items, files=files, embedding=embedding)
    metrics["embedding"] = dec.reports
    metrics["skipped"] = skipped
    return metrics


def _open(store: str | Path) -> tuple[EmbeddingStore, FrozenLites]:
    """An existing store with the backbones it was made with, or a new one with the default set."""
    spec = read_spec(store)
    return open_store(store, spec["backbones"], spec["image_size"]) if spec else open_store(store)
