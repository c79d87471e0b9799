"""The review desk: the catalogue (resumable labelling, decisions, concurrency, a killed process), its HTTP routes,
the labels export, the Label Studio round trip, and the Grad-CAM heat map against the grad-cam package."""

import io
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import REVIEW_CLASSES, class_folder, fake_catalogue, live_server, open_at_once, write_photos

import fashionclf  # noqa: E402
from fashionclf import api  # noqa: E402
from fashionclf.apps.cli import main  # noqa: E402
from fashionclf.apps.desk.app import create_app  # noqa: E402
from fashionclf.review import db  # noqa: E402


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """An mlp on 32x32 letterboxed RGB photos, trained through the public API."""
    tmp = tmp_path_factory.mktemp("rgbrun")
    data = class_folder(tmp / "data", 20)
    cfg = fashionclf.recipe("mlp", epochs=4, batch_size=16, precision="fp32", model_kwargs=api.model_kwargs("mlp", True, 32))
    return api.train(cfg, tmp / "run", data=data, image_size=32)


def test_label_folder_is_resumable_and_skips_known_photos(rgb_run, tmp_path, capsys):
    folder = tmp_path / "new"
    write_photos(folder, [0, 1, 2] * 4, 500)
    cat = tmp_path / "cat.db"
    c = api.label_folder(rgb_run, folder, cat, batch_size=5)
    assert (c["total"], c["added"], c["already"], c["failed"]) == (12, 12, 0, 0)
    conn = db.connect(cat)
    rows = conn.execute("SELECT path, sha256, label, top3, confidence, status, unknown_score, version FROM items").fetchall()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the run's "none of these" score is stored (it was empty before the score existed: issue 17 item 2)
    assert len(rows) == 12 and all(r["status"] in ("auto", "needs_review") and isinstance(r["unknown_score"], float) for r in rows)
    assert all(len(json.loads(r["top3"])) == 3 and r["label"] in REVIEW_CLASSES for r in rows)
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)  # usable from any working folder
    conn.close()
    write_photos(folder, [1, 2], 900)  # two new photos ...
    (folder / "again.png").write_bytes((folder / "k0_0500.png").read_bytes())  # ... and a copy of one already labelled
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert main(["label", str(rgb_run.path), str(folder), "--db", str(cat), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "2 photos added, 13 already in the catalogue, 1 unreadable" in out.out and "broken.jpg" in out.err
    other = fashionclf.load_run(rgb_run.path)
    other.meta = {**other.meta, "classes": ["a", "b", "c"]}
    with pytest.raises(db.CatalogueError, match="not the run's"):
        api.label_folder(other, folder, cat)


def test_review_routes(tmp_path):
    cat = tmp_path / "cat.db"
    fake_catalogue(cat, tmp_path / "photos", 9)
    client = TestClient(create_app(cat))
    page = client.get("/")
    assert page.status_code == 200 and "fashionclf review" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    first = client.get("/api/next", params={"reviewer": "ann"}).json()
    assert first["classes"] == REVIEW_CLASSES and first["stats"]["needs_review"] == 6 and not first["heatmap"]
    assert "no run" in first["why_no_heatmap"]
    item = first["item"]
    assert item["id"] == 1 and item["confidence"] == pytest.approx(0.3)  # least certain first
    # another reviewer is not shown the photo ann holds
    assert client.get("/api/next", params={"reviewer": "bob"}).json()["item"]["id"] == 2
    img = client.get(f"/api/items/{item['id']}/photo")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and img.content[:2] == b"\xff\xd8"
    assert client.get(f"/api/items/{item['id']}/heatmap").status_code == 404
    r = client.post(f"/api/items/{item['id']}/decision", json={"version": 0, "action": "correct", "label": "skirt", "reviewer": "ann"})
    assert r.status_code == 200 and r.json()["item"]["reviewed_label"] == "skirt" and r.json()["item"]["status"] == "reviewed"
    again = client.post(f"/api/items/{item['id']}/decision", json={"version": 0, "action": "accept", "reviewer": "bob"})
    assert again.status_code == 409 and "changed" in again.json()["error"]
    bad = client.post("/api/items/2/decision", json={"version": 0, "action": "correct", "label": "hat", "reviewer": "bob"})
    assert bad.status_code == 400 and "not a class" in bad.json()["error"]
    maybe = client.post("/api/items/2/decision", json={"version": 0, "action": "maybe", "reviewer": "bob"})
    assert maybe.status_code == 422 and "action" in maybe.json()["error"]  # the schema names the three actions
    assert client.post("/api/items/2/decision", json={"action": "accept"}).status_code == 422
    assert (
        client.post("/api/items/2/decision", json={"version": 0, "action": "unknown", "reviewer": "bob"}).json()["item"]["status"]
        == "unknown"
    )
    recent = client.get("/api/recent").json()["decisions"]
    assert [(d["item_id"], d["action"], d["label"]) for d in recent] == [(2, "unknown", None), (1, "correct", "skirt")]
    undone = client.post("/api/undo", json={"reviewer": "ann"}).json()["item"]
    assert undone["id"] == 1 and undone["status"] == "needs_review" and undone["reviewed_label"] is None
    assert client.post("/api/undo", json={"reviewer": "ann"}).json()["item"] is None  # nothing more of ann's
    stats = client.get("/api/stats").json()
    assert stats.pop("learning")["learns"] is False  # no run: nothing to refit (tests/test_learn.py)
    assert stats.pop("audit")["audited"] == 0 and stats == {"auto": 3, "needs_review": 5, "reviewed": 0, "unknown": 1}
    assert client.get("/api/next", params={"reviewer": "ann"}).json()["item"]["id"] == 1  # back in the queue, held by ann


def test_a_stale_undo_is_a_conflict(tmp_path):
    cat = tmp_path / "cat.db"
    fake_catalogue(cat, tmp_path / "photos", 3)
    conn = db.connect(cat)
    db.decide(conn, 1, 0, "accept", "ann")
    db.decide(conn, 1, 1, "correct", "bob", "skirt")  # bob changed it after ann
    with pytest.raises(db.Conflict):
        db.undo(conn, "ann")
    assert db.item(conn, 1)["reviewed_label"] == "skirt"


def _race(cat: str, reviewer: str, ids: list[int], barrier, out) -> None:
    conn = db.connect(cat)
    won = lost = 0
    barrier.wait()
    for i in ids:
        try:
            db.decide(conn, i, 0, "correct", reviewer, REVIEW_CLASSES[hash(reviewer) % 3])
            won += 1
        except db.Conflict:
            lost += 1
    out.put((reviewer, won, lost))


def test_two_processes_deciding_the_same_items(tmp_path):
    """Both decide all 60 items on version 0 at once: each item is won by exactly one, and no decision is lost."""
    cat = tmp_path / "cat.db"
    fake_catalogue(cat, tmp_path / "photos", 60)
    # fork where there is one: the children only use sqlite3, and spawn would re-import torch in each
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(cat), name, list(range(1, 61)), barrier, out)) for name in ("ann", "bob")]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(r[1] for r in results) == 60 and sum(r[2] for r in results) == 60
    conn = sqlite3.connect(cat)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT item_id) FROM decisions").fetchone() == (60, 60)
    # every item says who won it, and that reviewer's decision row agrees
    mismatched = conn.execute(
        "SELECT COUNT(*) FROM items i JOIN decisions d ON d.item_id = i.id WHERE i.reviewer != d.reviewer OR i.version != 1"
    ).fetchone()[0]
    assert mismatched == 0
    wins = dict(conn.execute("SELECT reviewer, COUNT(*) FROM items GROUP BY reviewer").fetchall())
    assert wins == {r[0]: r[1] for r in results if r[1]}


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory):
    """A tuned_cnn on synthetic 28x28 bars (Fashion-MNIST-style input: photos go through the 28x28 cut-out)."""
    from conftest import synthetic_bars

    from fashionclf.data.fashion_mnist import FashionMNIST

    x, y = synthetic_bars(30)
    data = FashionMNIST(x[:240], y[:240], x[240:], y[240:], x[240:], y[240:], "bars", {}, tuple(f"c{i}" for i in range(10)), 0)
    cfg = fashionclf.recipe("tuned_cnn", epochs=2, batch_size=32, precision="fp32")
    return api.train(cfg, tmp_path_factory.mktemp("grayrun") / "run", data=data)


def test_killed_label_process_leaves_an_intact_catalogue_and_resumes(gray_run, tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, [i % 3 for i in range(160)], 3000, fmt="jpg")
    cat = tmp_path / "cat.db"
    cmd = [sys.executable, "-m", "fashionclf", "label", str(gray_run.path), str(folder), "--db", str(cat), "--batch-size", "4", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    n, deadline = 0, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if cat.exists():
            try:
                with sqlite3.connect(cat, timeout=5) as c:
                    n = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            except sqlite3.OperationalError:  # the schema is not there yet
                n = 0
            if n >= 12:
                break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    conn = sqlite3.connect(cat)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    before = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    conn.close()
    assert 12 <= before < 160 and before % 4 == 0  # whole batches only: each was one transaction
    c = api.label_folder(gray_run.path, folder, cat, batch_size=32)
    assert c["already"] == before and c["added"] == 160 - before
    with sqlite3.connect(cat) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT sha256), COUNT(DISTINCT path) FROM items").fetchone() == (160, 160, 160)


def test_export_as_folders_and_manifest(tmp_path):
    cat = tmp_path / "cat.db"
    files = fake_catalogue(cat, tmp_path / "photos", 6)  # items 3 and 6 are automatic
    conn = db.connect(cat)
    db.decide(conn, 1, 0, "correct", "ann", "skirt")
    db.decide(conn, 2, 0, "unknown", "ann")
    db.decide(conn, 4, 0, "accept", "ann")  # item 5 stays waiting
    conn.close()
    folders = api.export_labels(cat, tmp_path / "out")
    assert folders["written"] == 4 and folders["left_out_unknown"] == 1 and folders["left_out_waiting"] == 1
    got = {p.name: p.parent.name for p in (tmp_path / "out").rglob("*.png")}
    assert got == {files[0].name: "skirt", files[2].name: "skirt", files[3].name: "pants", files[5].name: "skirt"}
    if folders["how"] == "hard links":
        assert (tmp_path / "out" / "skirt" / files[0].name).stat().st_ino == files[0].stat().st_ino
    manifest = api.export_labels(cat, tmp_path / "labels.csv")
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    assert manifest["written"] == 4 and lines[0] == "path,label" and lines[1] == f"photos/{files[0].name},skirt"
    with pytest.raises(ValueError, match="already exists"):
        api.export_labels(cat, tmp_path / "labels.csv")
    with pytest.raises(ValueError, match="not an empty folder"):
        api.export_labels(cat, tmp_path / "out")
    from fashionclf.data.layouts import read_layout

    assert read_layout(tmp_path / "labels.csv").classes == ["pants", "skirt"]  # what train --data will read


def test_label_studio_round_trip(tmp_path, capsys):
    cat = tmp_path / "cat.db"
    fake_catalogue(cat, tmp_path / "photos", 6)
    out = tmp_path / "ls" / "tasks.json"
    assert main(["labels", "export-labelstudio", str(cat), "--out", str(out), "--document-root", str(tmp_path)]) == 0
    tasks = json.loads(out.read_text())
    config = ET.fromstring((tmp_path / "ls" / "tasks.config.xml").read_text())
    image, choices = config.find("Image"), config.find("Choices")
    assert image.get("value") == "$image" and choices.get("toName") == image.get("name")
    assert [c.get("value") for c in choices.findall("Choice")] == [*REVIEW_CLASSES, "None of these"]
    assert len(tasks) == 4  # the ones needing review
    for t in tasks:
        assert t["data"]["image"].startswith("/data/local-files/?d=photos/")
        (res,) = t["predictions"][0]["result"]
        assert (res["from_name"], res["to_name"], res["type"]) == (choices.get("name"), image.get("name"), "choices")
        assert res["value"]["choices"][0] in REVIEW_CLASSES
    # what Label Studio's JSON export gives back: tasks with annotations (result as in the predictions)
    picks = [tasks[0]["predictions"][0]["result"][0]["value"]["choices"][0], "skirt", "None of these", None]
    exported = []
    for t, pick in zip(tasks, picks):
        result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [pick or "pants"]}}]
        ann = {"id": 1, "completed_by": {"id": 1, "email": "ann@shop"}, "was_cancelled": pick is None, "updated_at": "2026-11-29T10:00:00Z",
               "result": result}  # fmt: skip
        exported.append({"id": 100 + len(exported), "data": t["data"], "annotations": [ann], "predictions": t["predictions"]})
    conn = db.connect(cat)
    db.decide(conn, tasks[1]["data"]["fashionclf_id"], 0, "accept", "desk")  # decided in the review desk after the export
    conn.close()
    (tmp_path / "export.json").write_text(json.dumps(exported + [{"id": 9, "data": {"image": "x"}, "annotations": []}]))
    capsys.readouterr()
    assert main(["labels", "import-labelstudio", str(cat), str(tmp_path / "export.json")]) == 0
    assert "2 decisions written" in capsys.readouterr().out
    conn = db.connect(cat)
    first, second, third = (db.item(conn, t["data"]["fashionclf_id"]) for t in tasks[:3])
    assert first["status"] == "reviewed" and first["reviewer"] == "label-studio:ann@shop" and first["reviewed_label"] == picks[0]
    assert second["reviewer"] == "desk"  # the conflict kept the desk's decision
    assert third["status"] == "unknown"
    assert db.item(conn, tasks[3]["data"]["fashionclf_id"])["status"] == "needs_review"  # cancelled: no decision
    # JSON-MIN export: the choice under the control's name
    t = tasks[3]
    (tmp_path / "min.json").write_text(json.dumps([{**t["data"], "choice": "shirt", "annotator": "bob@shop"}]))
    from fashionclf.review.labelstudio import import_annotations

    assert import_annotations(cat, tmp_path / "min.json")["decided"] == 1
    assert db.item(conn, t["data"]["fashionclf_id"])["reviewed_label"] == "shirt"


def test_grad_cam_matches_the_grad_cam_package(gray_run):
    pytest.importorskip("pytorch_grad_cam")
    from conftest import synthetic_bars
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from fashionclf.engine.inference import to_input
    from fashionclf.review.heatmap import grad_cam, last_conv, overlay

    model = gray_run.model
    x, y = synthetic_bars(2, seed=5)
    for img, target in zip(x[:4].numpy(), y[:4].tolist()):
        ours = grad_cam(model, img, target)
        with GradCAM(model=model, target_layers=[last_conv(model)]) as cam:
            ref = cam(
                input_tensor=to_input(torch.as_tensor(img)[None], torch.device("cpu"), False), targets=[ClassifierOutputTarget(target)]
            )[0]
        assert ours.shape == ref.shape == (28, 28)
        assert np.abs(ours - ref).max() < 1e-3
        assert ours.max() == pytest.approx(1, abs=1e-3)
    assert overlay(x[0].numpy(), ours).shape == (224, 224, 3)


def test_heat_map_route_for_a_conv_run_and_its_absence_for_an_mlp(gray_run, rgb_run, tmp_path):
    folder = tmp_path / "photos"
    write_photos(folder, [0, 1], 77, fmt="jpg")
    for run, cat in ((gray_run, tmp_path / "g.db"), (rgb_run, tmp_path / "r.db")):
        api.label_folder(run, folder, cat)
        conn = db.connect(cat)
        conn.execute("UPDATE items SET status='needs_review'")
        conn.close()
    client = TestClient(create_app(tmp_path / "g.db", gray_run))
    nxt = client.get("/api/next").json()
    assert nxt["heatmap"] is True
    r = client.get(f"/api/items/{nxt['item']['id']}/heatmap")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(__import__("io").BytesIO(r.content)).size == (224, 224)
    client = TestClient(create_app(tmp_path / "r.db", rgb_run))
    nxt = client.get("/api/next").json()
    assert nxt["heatmap"] is False and "no convolution layer" in nxt["why_no_heatmap"]
    assert client.get(f"/api/items/{nxt['item']['id']}/heatmap").status_code == 404


def test_not_a_catalogue(tmp_path, capsys):
    assert main(["review", str(tmp_path / "none.db")]) == 2
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    assert main(["labels", "export", str(tmp_path / "junk.db"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is not a catalogue" in err and "junk.db" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_decision_and_the_next_item_take_under_100ms_with_10k_items(tmp_path):
    """Over real HTTP (uvicorn on loopback): POST a decision, then GET the next item, 300 times on 10,000 rows.

    The figure in docs/review.md: `.venv/bin/pytest -q -s -p no:cacheprovider tests/test_review.py -k 100ms`.
    """
    import urllib.request

    cat = tmp_path / "cat.db"
    conn = db.connect(cat, create=True)
    db.init(conn, REVIEW_CLASSES, "made-up")
    rng = np.random.default_rng(0)
    top = [{"label": c, "confidence": 1 / 3} for c in REVIEW_CLASSES]
    rows = [{"file": f"/photos/{i}.jpg", "sha256": str(i), "label": REVIEW_CLASSES[i % 3], "confidence": float(rng.uniform(0.2, 0.99)),
             "top_k": top, "needs_review": bool(i % 4)} for i in range(10_000)]  # fmt: skip
    db.add_predictions(conn, rows)
    conn.close()

    def call(url, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
        return json.loads(urllib.request.urlopen(req, timeout=30).read())

    times = []
    with live_server(create_app(cat)) as base:
        item = call(f"{base}/api/next?reviewer=ann")["item"]
        for i in range(320):
            t0 = time.perf_counter()
            body = {"version": item["version"], "action": "correct" if i % 2 else "accept", "label": "skirt", "reviewer": "ann"}
            call(f"{base}/api/items/{item['id']}/decision", body)
            item = call(f"{base}/api/next?reviewer=ann")["item"]
            times.append(time.perf_counter() - t0)
    ms = np.array(times[20:]) * 1000  # the first 20 warm up
    print(f"\ndecision + next item with 10,000 rows: median {np.median(ms):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, n={len(ms)}")
    assert np.median(ms) < 100
    with sqlite3.connect(cat) as c:
        assert c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 320


def test_the_runs_none_of_these_verdict_is_kept_and_older_catalogues_gain_it(tmp_path):
    """A photo the run calls unknown keeps that verdict (predicted_unknown) beside its most likely class, always
    waiting for a person; a catalogue written before the column existed gains it on open, as 'not unknown'."""
    cat = tmp_path / "cat.db"
    fake_catalogue(cat, tmp_path / "photos", 6, unknown=(3,))
    conn = db.connect(cat)
    items = {i: db.item(conn, i) for i in range(1, 7)}
    assert [i for i, it in items.items() if it["predicted_unknown"]] == [3]
    assert items[3]["status"] == "needs_review" and items[3]["label"] in REVIEW_CLASSES  # item 3 alone would have been automatic
    conn.close()
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as c:
        c.executescript(db.SCHEMA.replace("    predicted_unknown INTEGER NOT NULL DEFAULT 0,\n", ""))
        c.execute(
            "INSERT INTO items (path, sha256, label, top3, confidence, status) VALUES ('a.jpg', 'h', 'pants', '[]', 0.4, 'needs_review')"
        )
    conn = db.connect(old)
    assert db.item(conn, 1)["predicted_unknown"] is False
    assert db.claim_next(conn, "ann")["id"] == 1
    conn.close()


def _connect_and_close(path: Path, create: bool) -> None:
    db.connect(path, create=create).close()


def test_processes_opening_one_catalogue_at_once_all_open_it(tmp_path):
    """New catalogues created by six processes at once, and an older one gaining its columns in six at once: every
    process opens it (SQLite refuses a second schema change at once rather than waiting) and the columns are added once."""
    for round_ in range(6):
        assert open_at_once(_connect_and_close, (tmp_path / f"new{round_}.db", True)) == ["ok"] * 6
        old = tmp_path / f"old{round_}.db"
        with sqlite3.connect(old) as c:
            c.executescript(db.SCHEMA.replace("    predicted_unknown INTEGER NOT NULL DEFAULT 0,\n", ""))
        assert open_at_once(_connect_and_close, (old, False)) == ["ok"] * 6
        with sqlite3.connect(old) as c:
            assert [r[1] for r in c.execute("PRAGMA table_info(items)")].count("predicted_unknown") == 1


def test_the_heat_map_is_drawn_from_the_member_that_decided():
    """With the ready model (a 28x28 scan run and an RGB photo run), the map comes from the member whose calibrated
    probability for the label is highest, on the image that member saw, not always from the first (scan) member."""
    from fashionclf.apps.desk.app import HeatMaps
    from fashionclf.infer.predict import calibrated_probs, class_order, preprocess_file

    ready = api.load_run("default")
    maps = HeatMaps(ready)
    photos = sorted((Path(__file__).parent / "data" / "ready").glob("*.jpg"))
    chosen = set()
    for path in photos:
        label = ready.predict([path])[0]["top_k"][0]["label"]
        probs = {}
        for m in [ready, *ready.partners]:
            image = preprocess_file(path, run=m)
            column = int(class_order(m, ready)[ready.classes.index(label)])
            assert m.classes[column].lower().replace("_", "") == "".join(ch for ch in label.lower() if ch.isalnum())
            probs[m.meta["model"]] = float(calibrated_probs(m, m.logits(torch.as_tensor(image)[None]))[0, column])
        member, image, _ = maps.decider(str(path), label)
        assert member.meta["model"] == max(probs, key=probs.get), (path.name, probs)
        chosen.add(member.meta["model"])
        png = maps.png(str(path), label)
        assert Image.open(io.BytesIO(png)).size[0] >= image.shape[-1]  # drawn over that member's own input
    assert chosen == {"tuned_cnn", "efficientnet_lite0"}, chosen  # both members decide some of these photos
