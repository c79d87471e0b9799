"""review/learn.py: the desk refits a store run on a person's decisions, re-ranks its queue and suggests a
near-duplicate's decision. Real pieces throughout: a Lite0 store at 64 px, a run fitted on it, a catalogue written by
`label`, and the desk's own HTTP routes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import make_class_folder
from PIL import Image

from fashionclf import api
from fashionclf.apps.desk.app import create_app
from fashionclf.embed.extract import embed_files, open_store
from fashionclf.embed.store import EmbeddingStore
from fashionclf.review import db
from fashionclf.review.label import label_folder


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    photos = make_class_folder(root / "labelled", per_class=12)
    st, model = open_store(root / "store", backbones="lite0", image_size=64)
    embed_files(st, model, sorted(p for p in photos.rglob("*.png")), precision="fp32")
    st.close()
    run = api.train_on_store(photos, root / "run", root / "store", test_fraction=0.25, val_fraction=0.25, precision="fp32")
    new = make_class_folder(root / "new", per_class=6, seed=5)
    original = sorted((new / "pants").glob("*.png"))[0]
    a = np.asarray(Image.open(original).convert("RGB")).copy()
    a[0, 0] = 255 - a[0, 0]  # one pixel: another file, another content hash, nearly the same photo
    Image.fromarray(a).save(new / "pants" / "near-copy.png")
    label_folder(run, new, root / "catalogue.db", audit_share=0)
    return run, root / "catalogue.db", original


def _wait(client, done, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        learning = client.get("/api/stats").json()["learning"]
        assert learning["error"] is None, learning["error"]
        if done(learning):
            return learning
        time.sleep(0.05)
    raise AssertionError(f"the desk did not get there in {timeout} s: {learning}")


def _item(cat, path) -> dict:
    conn = db.connect(cat)
    try:
        return db.as_dict(conn.execute("SELECT * FROM items WHERE path = ?", (str(path.absolute()),)).fetchone())
    finally:
        conn.close()


def _decide(client, item, action="accept", label=None):
    r = client.post(
        f"/api/items/{item['id']}/decision", json={"version": item["version"], "action": action, "reviewer": "ana", "label": label}
    )
    assert r.status_code == 200, r.text
    return r.json()["item"]


def test_decisions_refit_the_head_rerank_the_queue_and_suggest_for_near_duplicates(shop, tmp_path):
    run, cat, original = shop
    with TestClient(create_app(cat, run, refit_every=2)) as client:
        started = _wait(client, lambda s: s["started_s"] is not None)
        assert started["learns"] and started["refits"] == 0
        conn = db.connect(cat)
        waiting = conn.execute("SELECT queue_key, confidence FROM items WHERE status = 'needs_review'").fetchall()
        conn.close()
        assert waiting and all(r["queue_key"] is not None for r in waiting)  # ranked by the head on stored vectors
        head_before = run.model.head.weight.clone()

        first = _decide(client, _item(cat, original), "correct", "pants")
        other = next(p for p in sorted((original.parent.parent / "shirt").glob("*.png")))
        _decide(client, _item(cat, other), "correct", "shirt")
        learned = _wait(client, lambda s: s["refits"] >= 1)
        assert learned["decisions_learned"] == 2 and learned["last_refit_s"] > 0
        learner = client.app.state.learner
        assert len(learner.head.labels) == len(learner.base[1]) + 2
        assert not learner.head.head.weight.equal(head_before)
        # every photo waiting for a person (audits aside) has the refitted head's confidence as its place in the queue
        conn = db.connect(cat)
        waiting = conn.execute("SELECT sha256, queue_key FROM items WHERE status = 'needs_review' AND audit = 0").fetchall()
        conn.close()
        st = EmbeddingStore(run.meta["trainer"]["store"])
        conf = learner.head.decide(torch.from_numpy(st.vectors([r["sha256"] for r in waiting])))[1]
        st.close()
        assert torch.allclose(torch.tensor([r["queue_key"] for r in waiting], dtype=torch.float64), conf.double(), atol=1e-6)

        # the near-copy of a decided photo is offered with that decision highlighted, and similar photos beside it
        near = _item(cat, original.parent / "near-copy.png")
        s = learner.suggestions(near)
        assert s["near_duplicate"]["item_id"] == first["id"] and s["near_duplicate"]["label"] == "pants"
        assert s["near_duplicate"]["similarity"] > 0.97 and len(s["similar"]) == 4
        shown = client.get(f"/api/next?reviewer=ana&skip={first['id']}").json()
        assert "suggestions" in shown

        # an undone decision is forgotten at the next refit
        assert client.post("/api/undo", json={"reviewer": "ana"}).status_code == 200
        client.post("/api/undo", json={"reviewer": "ana"})
        forgot = _wait(client, lambda s: s["refits"] >= 2)
        assert forgot["decisions_learned"] == 0 and len(learner.head.labels) == len(learner.base[1])


def test_a_desk_whose_run_is_not_on_a_store_works_and_says_why_it_does_not_learn(shop, tmp_path):
    from helpers import fake_catalogue

    fake_catalogue(tmp_path / "c.db", tmp_path / "p", 4)
    with TestClient(create_app(tmp_path / "c.db")) as client:
        learning = client.get("/api/stats").json()["learning"]
        assert learning["learns"] is False and "without --run" in learning["why_not"]
        j = client.get("/api/next?reviewer=ana").json()
        assert j["suggestions"] == {"near_duplicate": None, "similar": []}
