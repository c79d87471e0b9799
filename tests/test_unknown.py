"""'None of these' (issue 17 item 2): the out-of-distribution score fitted at save time, the unknown answer in
predict, CSV/JSONL, the catalogue and the service, a negative `other/` class, and old runs unchanged."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_bars
from PIL import Image

import fashionclf
from fashionclf import api
from fashionclf.data.fashion_mnist import FashionMNIST
from fashionclf.engine.runs import METRICS, RunError
from fashionclf.evaluation.unknown import (
    DEFAULT_KNOWN_SHARE,
    SCORES,
    all_scores,
    auroc,
    fit_unknown,
    negative_classes,
    scores_for,
    threshold_for,
)
from fashionclf.infer.predict import predict_arrays, predict_scored, results_from_probs
from fashionclf.training.supervised import train_and_save

GOLDEN_RUNS = Path(__file__).parent / "golden" / "study" / "runs"
CLASSES = tuple(f"c{i}" for i in range(10))


def bars_data(n_per_class: int = 40) -> FashionMNIST:
    """Synthetic bars (conftest): 240 to train, 80 to validate, 80 to test."""
    x, y = synthetic_bars(n_per_class)
    return FashionMNIST(x[:240], y[:240], x[240:320], y[240:320], x[320:], y[320:], "bars", {}, CLASSES, 0)


def far_images(n: int = 80) -> dict[str, torch.Tensor]:
    """Inputs known to be far from the bars: uniform noise, the background alone, and a vertical bar."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    blank = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    vertical = blank.clone()
    vertical[:, 4:24, 10:14] = 255
    return {"noise": noise, "blank": blank, "vertical": vertical}


@pytest.fixture(scope="module")
def bars_run(tmp_path_factory):
    """A small mlp trained and saved as `fashionclf train` saves it (validation split, calibration, unknown score)."""
    out = tmp_path_factory.mktemp("unknown") / "run"
    cfg = fashionclf.recipe("mlp", epochs=3, batch_size=32, precision="fp32")
    train_and_save(cfg, bars_data(), out)
    return out


def load(path) -> api.Run:
    return api.load_run(path)


def test_auroc_and_threshold_basics():
    assert auroc(torch.tensor([0.0, 1, 2]), torch.tensor([3.0, 4])) == 1.0
    assert auroc(torch.tensor([3.0, 4]), torch.tensor([0.0, 1, 2])) == 0.0
    assert auroc(torch.tensor([1.0, 1]), torch.tensor([1.0, 1, 1])) == 0.5  # ties count one half
    assert auroc(torch.tensor([0.0, 2]), torch.tensor([1.0, 3])) == 0.75
    s = torch.arange(100, dtype=torch.float32)
    assert threshold_for(s, 0.95) == 94.0  # 95 of the 100 at or below it
    assert threshold_for(s, 1.0) == 99.0
    assert threshold_for(torch.tensor([float("nan")]), 0.95) is None
    assert negative_classes(["dress", "Other", "none", "pants", "Negatives", "others"]) == ["Other", "none", "Negatives", "others"]


def test_the_embedding_score_is_used_where_given_and_the_probability_score_stands_in_otherwise():
    """A store run's record names the embedding score, fitted on validation alone; a caller with its scores uses
    them, one with logits only or probabilities only (an ONNX graph) gets the confidence score and its threshold."""
    g = torch.Generator().manual_seed(0)
    val_logits, emb = torch.randn(200, 4, generator=g), torch.randn(200, generator=g)
    params = fit_unknown(val_logits, 1.0, ["a", "b", "c", "d"], 0.9, embedding=emb)
    assert params["score"] == "embedding" and params["thresholds"]["embedding"] == threshold_for(emb, 0.9)
    assert (emb <= params["thresholds"]["embedding"]).float().mean().item() == pytest.approx(0.9, abs=0.01)
    logits, probs, mine = torch.randn(5, 4, generator=g), torch.softmax(torch.randn(5, 4, generator=g), 1), torch.arange(5.0)
    assert scores_for(params, logits, probs, mine)[0] == "embedding" and torch.equal(scores_for(params, logits, probs, mine)[1], mine)
    for name, got in (scores_for(params, logits, probs), scores_for(params, None, probs)):
        assert name == "msp" and torch.allclose(got, 1 - probs.max(1).values)
    assert fit_unknown(val_logits, 1.0, ["a", "b"], 0.9)["score"] == "energy"  # without it: the energy, as before


def test_score_separates_far_inputs_from_the_classes(bars_run):
    run = load(bars_run)
    data = bars_data()
    _, (name, known) = predict_scored(run, data.test_x)
    assert name == "energy"
    for kind, x in far_images().items():
        _, (_, far) = predict_scored(run, x)
        assert auroc(known, far) > 0.99, kind
        rows = predict_arrays(run, x)
        assert sum(r["unknown"] for r in rows) >= 0.9 * len(rows), kind


def test_threshold_keeps_the_configured_share_of_validation_known(bars_run, tmp_path):
    run = load(bars_run)
    record = run.metrics["unknown"]
    assert record["score"] == "energy" and record["known_share"] == DEFAULT_KNOWN_SHARE == 0.95
    assert set(record["thresholds"]) == set(SCORES) and "negative_classes" not in record
    data = bars_data()
    val_scores = all_scores(run.logits(data.val_x), run.metrics["calibration"]["temperature"])
    for name, threshold in record["thresholds"].items():
        share = (val_scores[name] <= threshold).double().mean().item()
        below = (val_scores[name] < threshold).double().mean().item()
        assert share >= 0.95 > below, name  # the lowest threshold that keeps 95% known
    assert 0.8 <= run.metrics["test_unknown"]["known_share"] <= 1
    # the setting: another share gives another threshold, fitted the same way
    out = tmp_path / "run80"
    train_and_save(fashionclf.recipe("mlp", epochs=3, batch_size=32, precision="fp32"), data, out, unknown_share=0.8)
    other = load(out)
    assert other.metrics["unknown"]["known_share"] == 0.8
    assert other.metrics["unknown"]["thresholds"]["energy"] < record["thresholds"]["energy"]
    energy, threshold = all_scores(other.logits(data.val_x))["energy"], other.metrics["unknown"]["thresholds"]["energy"]
    assert (energy <= threshold).double().mean() >= 0.8 > (energy < threshold).double().mean()
    with pytest.raises(ValueError, match="unknown_share"):
        fashionclf.train("mlp", out=tmp_path / "never", data=data, unknown_share=1.5)


def test_unknown_items_have_no_label_keep_top_k_and_need_review(bars_run):
    run = load(bars_run)
    x = bars_data().test_x[:8]
    before = predict_arrays(run, x, top_k=3)
    assert all(isinstance(r["unknown_score"], float) and (r["label"] is None) == r["unknown"] for r in before)
    assert sum(r["unknown"] for r in before) <= 2  # about 5% of in-distribution images count unknown
    run.metrics["unknown"]["thresholds"]["energy"] = -1e9  # every score above it: everything unknown
    after = predict_arrays(run, x, top_k=3)
    for b, a in zip(before, after):
        assert a["unknown"] is True and a["label"] is None and a["needs_review"] is True
        assert a["top_k"] == b["top_k"] and a["index"] == b["index"] and a["confidence"] == b["confidence"]
        assert a["unknown_score"] == b["unknown_score"]


def test_probabilities_alone_use_the_probability_score(bars_run):
    """A backend that gives calibrated probabilities only (ONNX) is judged by msp against its own threshold."""
    run = load(bars_run)
    x = far_images()["vertical"][:8]
    probs, (name, scores) = predict_scored(run, x)

    class Backend:
        def probs(self, images):
            return probs.numpy()

    p2, (name2, scores2) = predict_scored(run, x, backend=Backend())
    assert name == "energy" and name2 == "msp"
    assert torch.allclose(scores2, 1 - probs.max(1).values)
    rows = results_from_probs(run, p2)  # no scores given: computed from the probabilities
    assert [r["unknown_score"] for r in rows] == pytest.approx(scores2.tolist())
    assert [r["unknown"] for r in rows] == (scores2 > run.metrics["unknown"]["thresholds"]["msp"]).tolist()


def test_old_run_folders_say_nothing_is_unknown():
    """Runs saved before the score existed: no unknown record, never unknown, labels as before."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 28, 28), generator=g, dtype=torch.uint8).numpy()
    for run_dir in sorted(GOLDEN_RUNS.iterdir()):
        run = load(run_dir)
        assert "unknown" not in run.metrics
        run.config.precision = "fp32"
        for r in run.predict(images, top_k=10):
            assert r["unknown"] is False and r["unknown_score"] is None
            assert r["label"] == r["top_k"][0]["label"]


def test_the_record_is_plain_json_checked_at_load(bars_run, tmp_path):
    import shutil

    for f in Path(bars_run).iterdir():  # nothing pickled: JSON, CSV, or safetensors (an 8-byte length, then a JSON header)
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f.name  # the pickle protocol 2+ opcode
        if f.suffix == ".json":
            json.loads(data)
        elif f.suffix == ".safetensors":
            n = int.from_bytes(data[:8], "little")
            json.loads(data[8 : 8 + n])
    record = json.loads((Path(bars_run) / METRICS).read_text())["unknown"]
    assert set(record) == {"score", "known_share", "temperature", "thresholds"}
    for field, bad in [("score", "pickle"), ("known_share", 0), ("thresholds", {"energy": "x"}), ("negative_classes", [])]:
        run = tmp_path / field
        shutil.copytree(bars_run, run)
        metrics = json.loads((run / METRICS).read_text())
        metrics["unknown"][field] = bad
        (run / METRICS).write_text(json.dumps(metrics))
        with pytest.raises(RunError, match=f"unknown.{field}"):
            load(run)


def photo(kind: int, seed: int) -> np.ndarray:
    """A light noisy photo: kind 0 a dark vertical bar, 1 a horizontal bar, 2 a dark square."""
    rng = np.random.default_rng(seed)
    img = np.clip(225 + rng.normal(0, 10, (48, 40, 3)), 0, 255).astype(np.uint8)
    if kind == 0:
        img[6:42, 15:25] = (50, 40, 90)
    elif kind == 1:
        img[19:29, 4:36] = (90, 40, 40)
    else:
        img[12:36, 10:30] = (40, 90, 40)
    return img


def write_photos(folder: Path, kind: int, n: int, seed0: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"k{kind}_{seed0 + i:04d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.fromarray(photo(kind, seed0 + i)).save(p)
    return paths


def test_an_other_folder_trains_as_a_class_and_its_predictions_are_unknown(tmp_path):
    root = tmp_path / "data"
    for kind, name in enumerate(["pants", "shirt", "other"]):
        write_photos(root / name, kind, 20, 1000 * kind)
    cfg = fashionclf.recipe("mlp", epochs=4, batch_size=16, precision="fp32", model_kwargs=api.model_kwargs("mlp", True, 32))
    run = api.train(cfg, tmp_path / "run", data=root, image_size=32)
    assert run.classes == ["other", "pants", "shirt"]
    assert run.metrics["unknown"]["negative_classes"] == ["other"]
    others = run.predict(write_photos(tmp_path / "new" / "o", 2, 6, 9000))
    shirts = run.predict(write_photos(tmp_path / "new" / "s", 1, 6, 9500))
    assert all(r["top_k"][0]["label"] == "other" for r in others)
    assert all(r["unknown"] and r["label"] is None and r["needs_review"] for r in others)
    assert sum(r["label"] == "shirt" for r in shirts) >= 5  # the score may call one of six unknown (5% of validation)
    # without a validation split the negative class still counts: the score has no threshold then
    rec = fit_unknown(None, 1.0, ["other", "pants"])
    assert rec["negative_classes"] == ["other"] and set(rec["thresholds"].values()) == {None}
    assert fit_unknown(None, 1.0, ["pants", "shirt"]) is None


def everything_unknown(run_dir) -> api.Run:
    run = load(run_dir)
    run.metrics["unknown"]["thresholds"]["energy"] = -1e9
    return run


def test_csv_and_jsonl_outputs_mark_unknown_items(bars_run, tmp_path):
    from fashionclf.infer.batch import predict_to_file

    files = []
    for i in range(3):
        files.append(tmp_path / f"p{i}.png")
        Image.fromarray(photo(i, i)).save(files[-1])
    run = everything_unknown(bars_run)
    predict_to_file(run, files, tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["label"] for r in rows] == ["", "", ""] and [r["unknown"] for r in rows] == ["True"] * 3
    assert all(float(r["unknown_score"]) > -1e9 and r["needs_review"] == "True" and json.loads(r["top_k"]) for r in rows)
    predict_to_file(run, files, tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(r["label"] is None and r["unknown"] is True and r["top_k"] for r in lines)


def test_label_stores_the_score_and_queues_unknown_items(bars_run, tmp_path):
    from fashionclf.review import db

    folder = tmp_path / "photos"
    for i in range(4):
        write_photos(folder, i % 3, 1, 100 + i)
    run = load(bars_run)
    counts = api.label_folder(run, folder, tmp_path / "a.db")
    assert counts["added"] == 4
    conn = sqlite3.connect(tmp_path / "a.db")
    assert all(isinstance(s, float) for (s,) in conn.execute("SELECT unknown_score FROM items"))
    api.label_folder(everything_unknown(bars_run), folder, tmp_path / "b.db")
    conn = db.connect(tmp_path / "b.db")
    rows = [dict(r) for r in conn.execute("SELECT label, status, unknown_score FROM items")]
    assert all(r["status"] == "needs_review" and r["label"] in CLASSES and r["unknown_score"] is not None for r in rows)
    assert db.claim_next(conn, "ann") is not None  # in the review queue


def test_serve_answers_label_null_for_unknown_items(bars_run):
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from fashionclf.apps.serving.app import create_app

    buf = io.BytesIO()
    Image.fromarray(photo(1, 5)).save(buf, format="PNG")
    for run, unknown in [(load(bars_run), None), (everything_unknown(bars_run), True)]:
        r = TestClient(create_app(run=run)).post("/v1/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        p = r.json()["predictions"][0]
        assert "label" in p and "unknown" in p and isinstance(p["unknown_score"], float)
        if unknown:
            assert p["label"] is None and p["unknown"] is True and p["needs_review"] is True and len(p["top_k"]) == 3


def test_energy_under_tta_uses_the_views_raw_logits(tmp_path):
    """With mirror TTA the run's logits are log-probabilities (their logsumexp is 0): the energy is taken on the
    views' mean raw logits instead, and the probabilities stay those of Run.logits."""
    from fashionclf.infer.predict import calibrated_probs, run_logits

    out = tmp_path / "tta"
    train_and_save(fashionclf.recipe("mlp", epochs=3, batch_size=32, precision="fp32", tta=True), bars_data(), out)
    run = load(out)
    assert run.config.tta and run.metrics["unknown"]["thresholds"]["energy"] < -1  # not the 0 of a log-softmax
    x = bars_data().test_x
    logits, raw = run_logits(run, x)
    assert torch.allclose(logits, run.logits(x), atol=1e-5)
    assert torch.allclose(logits.logsumexp(1), torch.zeros(len(x)), atol=1e-4) and raw.logsumexp(1).std() > 0.1
    probs, (name, scores) = predict_scored(run, x)
    assert name == "energy" and torch.allclose(probs, calibrated_probs(run, run.logits(x)), atol=1e-5)
    for kind, far in far_images().items():
        assert auroc(scores, predict_scored(run, far)[1][1]) > 0.99, kind
