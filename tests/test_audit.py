"""The audit of automatic labels (fashionclf/review/audit.py): random, unmarked, exact, and acted on."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fashionclf.apps.desk.app import create_app
from fashionclf.review import audit, db

CLASSES = ["a", "b", "c"]


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_the_draw_is_reproducible_and_at_the_share():
    shas = [_sha(i) for i in range(20000)]
    first = [audit.drawn(s, 0.02) for s in shas]
    assert first == [audit.drawn(s, 0.02) for s in shas]  # the same photo, the same draw
    assert abs(sum(first) - 400) < 4 * np.sqrt(20000 * 0.02 * 0.98)  # binomial: 400 ± 4 sigma
    assert not any(audit.drawn(s, 0.0) for s in shas) and all(audit.drawn(s, 1.0) for s in shas)
    keys = np.array([audit.queue_key(s) for s in shas])
    assert 0.45 < keys.mean() < 0.55 and keys.min() >= 0 and keys.max() < 1
    with pytest.raises(ValueError, match="audit share 1.5"):
        audit.check_share(1.5)


@pytest.mark.parametrize("p,n", [(0.01, 200), (0.03, 100), (0.005, 1000)])
def test_the_interval_covers_the_truth_at_its_nominal_rate(p, n):
    """2,000 audits of n decisions with true error p: the 95% Clopper-Pearson interval holds p in at least 95%
    of them (less Monte Carlo slack of 1.5 points; the exact interval is conservative, so usually more)."""
    rng = np.random.default_rng(int(p * 1e4) + n)
    covered = 0
    for errors in rng.binomial(n, p, 2000):
        lo, hi = audit.error_interval(int(errors), n, 0.05)
        covered += lo <= p <= hi
    assert covered / 2000 >= 0.935


def _catalogue(path, n=400, wrong=(), share=0.1):
    """n automatic predictions (confidence rising), audited at `share`; returns the audited ids."""
    conn = db.connect(path, create=True)
    db.init(conn, CLASSES, "made-up")
    db.set_meta(conn, {"rule": {"target_precision": 0.99, "delta": 0.05}})
    rows = [
        {
            "file": f"/x/{i}.png",
            "sha256": _sha(i),
            "label": "a",
            "confidence": 0.9 + 0.1 * i / n,
            "top_k": [{"label": "a", "confidence": 0.9}],
            "needs_review": False,
        }
        for i in range(n)
    ]
    db.add_predictions(conn, audit.mark(rows, share))
    ids = [r[0] for r in conn.execute("SELECT id FROM items WHERE audit = 1 ORDER BY id")]
    conn.close()
    return ids


def _decide_all(path, ids, wrong_every=0):
    conn = db.connect(path)
    for k, i in enumerate(ids):
        it = db.item(conn, i)
        if wrong_every and k % wrong_every == 0:
            db.decide(conn, i, it["version"], "correct", "ann", "b")
        else:
            db.decide(conn, i, it["version"], "accept", "ann")
    return conn


def test_audited_photos_wait_unmarked_in_the_queue_and_are_estimated(tmp_path):
    cat = tmp_path / "cat.db"
    ids = _catalogue(cat, share=0.1)
    assert 20 < len(ids) < 70
    client = TestClient(create_app(cat))
    nxt = client.get("/api/next?reviewer=ann").json()
    assert nxt["item"]["id"] in ids and "audit" not in nxt["item"] and "queue_key" not in nxt["item"]  # unmarked
    assert nxt["audit"]["status"] == "unconfirmed" and "more audited decisions" in nxt["audit"]["message"]
    conn = _decide_all(cat, ids, wrong_every=5)
    s = audit.stats(conn)
    errors = len(range(0, len(ids), 5))
    assert (s["decided"], s["errors"]) == (len(ids), errors) and s["precision"] == pytest.approx(1 - errors / len(ids))
    lo, hi = audit.error_interval(errors, len(ids), 0.05)
    assert s["precision_interval"] == [pytest.approx(1 - hi), pytest.approx(1 - lo)]
    assert s["status"] == "broken" and "below the promised 99.0%" in s["message"]
    text = client.get("/metrics").text
    assert f"fashionclf_audit_errors {float(errors)}" in text and "fashionclf_audit_promise_broken 1.0" in text
    assert client.get("/api/stats").json()["audit"]["status"] == "broken"


def test_an_audit_with_no_errors_confirms_once_large_enough(tmp_path):
    cat = tmp_path / "cat.db"
    ids = _catalogue(cat, n=4000, share=0.1)
    conn = _decide_all(cat, ids)
    s = audit.stats(conn)
    assert len(ids) >= 299 and s["errors"] == 0 and s["status"] == "confirmed"
    assert audit.more_to_confirm(0, 100, 0.99, 0.05) == 199  # 299 right in all


def test_tighten_fits_the_rule_on_the_audit_and_requeues_below_it(tmp_path):
    cat = tmp_path / "cat.db"
    ids = _catalogue(cat, n=8000, share=0.25)
    conn = db.connect(cat)
    # the audited photos' errors all sit in the lower half of confidence: the rule moves above them
    low = [i for i in ids if db.item(conn, i)["confidence"] < 0.95]
    for k, i in enumerate(ids):
        it = db.item(conn, i)
        wrong = i in low and k % 4 == 0
        db.decide(conn, i, it["version"], "correct" if wrong else "accept", "ann", "b" if wrong else None)
    before = db.stats(conn)["auto"]
    out = audit.tighten(conn)
    assert out["rule"]["threshold"] is not None and out["rule"]["threshold"] > 0.945  # a few low ones pass before the bound fails
    after = db.stats(conn)
    assert out["moved_to_review"] > 0 and after["auto"] == before - out["moved_to_review"]
    low_auto = conn.execute("SELECT COUNT(*) FROM items WHERE status = 'auto' AND confidence < ?", (out["rule"]["threshold"],))
    assert low_auto.fetchone()[0] == 0 and json.loads(db.meta(conn)["tightened"])["threshold"] == out["rule"]["threshold"]


def test_a_catalogue_from_before_the_audit_opens_and_gains_its_columns(tmp_path):
    cat = tmp_path / "old.db"
    old = sqlite3.connect(cat)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE items (id INTEGER PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, label TEXT NOT NULL, "
        "top3 TEXT NOT NULL, confidence REAL NOT NULL, unknown_score REAL, status TEXT NOT NULL, reviewed_label TEXT, "
        "reviewer TEXT, decided_at TEXT, version INTEGER NOT NULL DEFAULT 0, claimed_by TEXT, claimed_until REAL);"
    )
    old.close()
    conn = db.connect(cat)
    cols = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
    assert {"audit", "queue_key", "predicted_unknown"} <= cols
    assert audit.stats(conn)["audited"] == 0 and audit.promise_of(conn) == (0.99, 0.05)


def test_serve_flags_drawn_automatic_labels_and_counts_them(tmp_path):
    """A photo run whose rule labels some photos automatically, served at audit share 1: exactly those come back
    flagged with "audit": true and are counted in /metrics; at share 0 none is."""
    from helpers import make_class_folder

    from fashionclf import api
    from fashionclf.apps.serving.app import create_app as serve_app
    from fashionclf.evaluation.calibrate import Promise

    data = make_class_folder(tmp_path / "data", per_class=40)
    cfg = api.recipe("mlp", epochs=6, batch_size=16, precision="fp32", model_kwargs=api.model_kwargs("mlp", True, 32))
    run = api.train(cfg, tmp_path / "run", data=data, image_size=32, promise=Promise(0.8, 0.2))  # 8 right ones suffice
    photos = sorted((data / "pants").iterdir())[:4] + sorted((data / "shirt").iterdir())[:4]
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in photos]
    plain = TestClient(serve_app(run=run)).post("/v1/predict", files=files).json()["predictions"]
    auto = [not p["needs_review"] for p in plain]
    assert any(auto) and not any(p["audit"] for p in plain)
    client = TestClient(serve_app(run=run, audit_share=1.0))
    audited = client.post("/v1/predict", files=files).json()["predictions"]
    assert [p["audit"] for p in audited] == auto and all(p["needs_review"] for p in audited)
    assert f"fashionclf_audit_total {float(sum(auto))}" in client.get("/metrics").text
