"""The desk that learns: a store run's head refitted on a person's decisions while they work, in seconds.

With a run fitted on an embedding store (`train --store`), every photo of the catalogue has (or gets, once) its
vectors in that store, so the desk can afford what a fine-tuned network cannot:

- **Refits.** After every `every` decisions (default 20) the head and its guaranteed review rule are refitted on
  the run's labelled photos (the run's labelled.json) plus every decided photo (training/refit.py's ReviewHead),
  in a background thread: the page never waits for it. Decided photos train; the rule stays calibrated on the
  run's own photos, cross-fitted (a queue ordered by the model is not a random sample of new photos). An undone
  decision makes the next refit start again from the run's photos and the decisions that stand.
- **The queue re-ranks.** After a refit, every photo still waiting for a person gets the new head's calibrated
  confidence as its place in the queue (least confident first, as before). Audit items keep theirs (review/audit.py:
  they hide among the queue on purpose) and nothing is labelled automatically by a refit: what the catalogue says
  was labelled, and under which rule, stays as `label` wrote it.
- **Near-duplicates and similar products.** For the photo shown, the decided photos whose vectors are nearly the
  same (cosine similarity of the views' mean vectors >= NEAR) give their decision as a suggestion, and the most similar
  catalogue photos are listed with their labels.

The first refit's start (the run's photos, out-of-fold calibration) and the embedding of catalogue photos the
store lacks run in the same background thread when the desk starts. Nothing here is needed for a run of any other
kind: such a desk works as before, and `status()` says why it does not learn.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from fashionclf.embed.extract import embed_files
from fashionclf.embed.store import EmbeddingStore
from fashionclf.review import db
from fashionclf.training.embedded import LABELLED
from fashionclf.training.refit import ReviewHead

EVERY = 20  # decisions between refits
# Cosine similarity of two photos' mean-view vectors at or above which they are near-duplicates. On clothing-photos'
# 3,014 train/ photos a photo's nearest other photo is at 0.77 (median), 0.92 (99th percentile), 0.96 (99.9th);
# the two pairs of identical photos there are above 0.99.
NEAR = 0.97
SIMILAR = 4  # similar catalogue photos shown beside an item
EMBED_CHUNK = 64  # photos embedded per hold of the network's lock (a heat map waits at most one chunk)


class DeskLearner:
    """Refits, re-ranks and suggests for one catalogue and one store run (`run`: a loaded run)."""

    def __init__(self, run, catalogue: str | Path, every: int = EVERY, model_lock: threading.Lock | None = None):
        """model_lock: held while the run's network runs here (the desk's heat maps hook the same network)."""
        self.run, self.catalogue, self.every = run, Path(catalogue), max(1, int(every))
        self.model_lock = model_lock or threading.Lock()
        self.reason = _why_not(run)
        self.head: ReviewHead | None = None
        self.added: set[int] = set()  # decision ids the head has learned
        self.pending = 0  # decisions since the last refit was asked for
        self.record = {"refits": 0, "decisions_learned": 0, "last_refit_s": None, "last_head_s": None, "started_s": None, "error": None}
        self.index = None  # (item ids, their labels at the last refit, unit vectors): for suggestions
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="desk-learner") if self.reason is None else None
        if self._pool is not None:
            self._pool.submit(self._guarded, self._start)

    # --- what the desk's routes call (request threads) ---

    def decided(self) -> None:
        """A decision was written (or undone): refit once `every` have come since the last refit was asked for."""
        if self._pool is None:
            return
        with self._lock:
            self.pending += 1
            due = self.pending >= self.every
            if due:
                self.pending = 0
        if due:
            self._pool.submit(self._guarded, self._refit)

    def status(self) -> dict:
        return {"learns": self.reason is None, "why_not": self.reason, "every": self.every, **self.record}

    def suggestions(self, item: dict | None) -> dict:
        """{"near_duplicate": {label, item_id, similarity} or None, "similar": [{item_id, label, similarity}, ...]}."""
        out = {"near_duplicate": None, "similar": []}
        index = self.index
        if item is None or index is None:
            return out
        ids, labels, decided, unit = index
        where = (ids == item["id"]).nonzero().flatten()
        if len(where) == 0:
            return out
        sims = unit @ unit[where[0]]
        sims[where[0]] = -2  # not itself
        order = sims.argsort(descending=True)[:SIMILAR].tolist()
        out["similar"] = [{"item_id": int(ids[i]), "label": labels[i], "similarity": round(float(sims[i]), 4)} for i in order]
        near = [i for i in order if decided[i] and sims[i] >= NEAR]
        if near:
            i = near[0]
            out["near_duplicate"] = {"item_id": int(ids[i]), "label": labels[i], "similarity": round(float(sims[i]), 4)}
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # --- the background thread (owns its store and catalogue connections) ---

    def _guarded(self, step) -> None:
        try:
            step()
        except Exception as e:  # a refit that fails leaves the desk working as before; status() says why
            self.record["error"] = f"{type(e).__name__}: {e}"

    def _start(self) -> None:
        start = time.perf_counter()
        trainer = self.run.meta["trainer"]
        self.store = EmbeddingStore(trainer["store"])
        self.conn = db.connect(self.catalogue)
        labelled = json.loads((self.run.path / LABELLED).read_text())
        self.base = (torch.from_numpy(self.store.vectors(labelled["hashes"])), torch.tensor(labelled["labels"]))
        self.decay, self.views = trainer["decay"], trainer.get("views", "rows")  # as the run's head was fitted
        items = self.conn.execute("SELECT path, sha256 FROM items").fetchall()
        lacking = set(self.store.missing([r["sha256"] for r in items]))
        files = [Path(r["path"]) for r in items if r["sha256"] in lacking]
        for i in range(0, len(files), EMBED_CHUNK):  # catalogue photos the store lacks, once, by the run's own backbones
            with self.model_lock:
                embed_files(self.store, self.run.model, files[i : i + EMBED_CHUNK])  # precision as `fashionclf embed` chooses
        self.head = ReviewHead(*self.base, len(self.run.classes), self.decay, init=self.run.model.head, views=self.views)
        self.record["started_s"] = round(time.perf_counter() - start, 3)
        self._rerank()

    def _decisions(self) -> tuple[list[int], list[str], list[int], bool]:
        """(decision ids, photo hashes, class indices) of every standing labelling decision, and whether one the head
        learned has been undone since."""
        rows = self.conn.execute(
            "SELECT d.id, d.undone, i.sha256, COALESCE(d.label, i.label) AS label FROM decisions d JOIN items i ON i.id = d.item_id "
            "WHERE d.action IN ('accept', 'correct') ORDER BY d.id"
        ).fetchall()
        undone = any(r["undone"] and r["id"] in self.added for r in rows)
        index = {c: k for k, c in enumerate(self.run.classes)}
        keep = [r for r in rows if not r["undone"] and r["label"] in index]
        return [r["id"] for r in keep], [r["sha256"] for r in keep], [index[r["label"]] for r in keep], undone

    def _refit(self) -> None:
        if self.head is None:
            return
        ids, hashes, labels, undone = self._decisions()
        lacking = set(self.store.missing(hashes))
        have = {h for h in hashes if h not in lacking}
        if undone:  # start again from the run's photos and the decisions that stand
            self.head, self.added = (
                ReviewHead(*self.base, len(self.run.classes), self.decay, init=self.run.model.head, views=self.views),
                set(),
            )
        new = [(i, h, y) for i, h, y in zip(ids, hashes, labels) if i not in self.added and h in have]
        if new:
            v = torch.from_numpy(self.store.vectors([h for _, h, _ in new]))
            self.head.add(v, torch.tensor([y for _, _, y in new]))
            self.added |= {i for i, _, _ in new}
        self._rerank()
        self.record.update(  # after the queue took the new order: a refit counted is one the desk shows
            refits=self.record["refits"] + 1,
            decisions_learned=len(self.added),
            last_refit_s=round(self.head.seconds, 3),
            last_head_s=round(self.head.head_seconds, 3),
        )

    def _rerank(self) -> None:
        """Waiting items take the head's confidence as their queue place; the suggestion index is rebuilt."""
        rows = self.conn.execute("SELECT id, sha256, label, status, reviewed_label, audit FROM items").fetchall()
        lacking = set(self.store.missing([r["sha256"] for r in rows]))  # photos that could not be read stay unranked
        rows = [r for r in rows if r["sha256"] not in lacking]
        if not rows:
            return
        v = torch.from_numpy(self.store.vectors([r["sha256"] for r in rows]))
        _, conf, _ = self.head.decide(v)
        waiting = [(float(c), r["id"]) for c, r in zip(conf, rows) if r["status"] == "needs_review" and not r["audit"]]
        with db.Transaction(self.conn):  # one commit (one fsync), not one per item
            self.conn.executemany("UPDATE items SET queue_key = ? WHERE id = ? AND status = 'needs_review' AND audit = 0", waiting)
        unit = torch.nn.functional.normalize(v.mean(1), dim=1)  # raw: no statistic of a small catalogue to skew it
        labels = [r["reviewed_label"] or r["label"] for r in rows]
        decided = torch.tensor([r["status"] == "reviewed" for r in rows])
        self.index = (torch.tensor([r["id"] for r in rows]), labels, decided, unit)


def _why_not(run) -> str | None:
    """None where the desk can refit this run; else why not, in one line."""
    if run is None:
        return "the desk was started without --run"
    trainer = run.meta.get("trainer") or {}
    if trainer.get("kind") != "embedded-head":
        return "the run is not a head on an embedding store (train --store): refits need every photo's stored vectors"
    if not (run.path / LABELLED).is_file():
        return f"{run.path / LABELLED} is missing (a store run saved before it existed): fit it again with train --store"
    if not Path(trainer.get("store", "")).is_dir():
        return f"the run's store {trainer.get('store')} is not there: embed into it again or move it back"
    return None
