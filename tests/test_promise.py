"""The guaranteed review rule end to end: fitted by a training, stated in words, fitted again for another promise by
predict and serve from the run's own calibration items, and old runs marked as the old point estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import synthetic_bars
from fastapi.testclient import TestClient

import fashionclf
from fashionclf import api
from fashionclf.apps.cli import main
from fashionclf.apps.serving.app import create_app
from fashionclf.data.fashion_mnist import FashionMNIST
from fashionclf.engine.runs import RunError, load_predictions
from fashionclf.evaluation.calibrate import RULE, Promise
from fashionclf.infer.predict import with_promise
from fashionclf.training.supervised import train_and_save

GOLDEN_RUN = Path(__file__).parent / "golden" / "study" / "runs" / "mlp-s0"
CLASSES = tuple(f"c{i}" for i in range(10))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An mlp on synthetic bars with 400 validation items: enough for a 99% promise at 95% (299 at the least)."""
    x, y = synthetic_bars(100)
    data = FashionMNIST(x[:400], y[:400], x[400:800], y[400:800], x[800:], y[800:], "bars", {}, CLASSES, 0)
    out = tmp_path_factory.mktemp("promise") / "run"
    train_and_save(fashionclf.recipe("mlp", epochs=3, batch_size=32, precision="fp32"), data, out)
    return out


def test_a_training_fits_the_guaranteed_rule_and_keeps_its_items(run_dir):
    run = api.load_run(run_dir)
    cal = run.metrics["calibration"]
    assert cal["rule"] == RULE and (cal["target_precision"], cal["delta"]) == (0.99, 0.05) and cal["calibration_items"] == 400
    assert cal["threshold"] is not None and cal["accepted"] >= 299 and cal["error_bound"] <= 0.01
    assert "at least 99% precise with 95% confidence, on photos like the calibration photos" in cal["promise"]
    logits, labels = load_predictions(run_dir, "val")
    assert logits.shape == (400, 10) and len(labels) == 400
    assert "at least 99% precise with 95% confidence" in (run_dir / "README.md").read_text()  # the model card says it


def test_another_promise_is_fitted_again_on_the_runs_own_items(run_dir):
    run = api.load_run(run_dir)
    looser = with_promise(run, Promise(0.95, 0.05))
    assert looser.metrics["calibration"]["threshold"] <= run.metrics["calibration"]["threshold"]
    assert looser.metrics["calibration"]["target_precision"] == 0.95 and run.metrics["calibration"]["target_precision"] == 0.99
    strict = with_promise(run, Promise(0.999, 0.05))  # 2,995 items at the least: 400 promise nothing
    assert strict.metrics["calibration"]["threshold"] is None and strict.metrics["calibration"]["needed"] == 2995 - 400
    rows = strict.predict(synthetic_bars(5, seed=3)[0])
    assert all(r["needs_review"] for r in rows)
    assert with_promise(run, Promise()) is run  # the run's own promise: nothing to fit


def test_predict_and_serve_take_the_promise_options(run_dir, tmp_path, capsys):
    x, _ = synthetic_bars(2, seed=4)
    from PIL import Image

    for i, img in enumerate(x[:4]):
        Image.fromarray(img.numpy()).save(tmp_path / f"{i}.png")
    assert main(["predict", str(run_dir), str(tmp_path), "--json", "--target-precision", "0.999"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4 and all(r["needs_review"] for r in rows)
    assert main(["predict", str(run_dir), str(tmp_path), "--delta", "1.5"]) == 2
    assert "delta 1.5: expected a probability in (0, 1)" in capsys.readouterr().err
    app = create_app(run=with_promise(api.load_run(run_dir), Promise(0.999, 0.05)))
    client = TestClient(app)
    info = client.get("/v1/models").json()
    assert info["calibration"]["threshold"] is None and "too few to promise 99.9%" in info["promise"]
    assert "too few to promise 99.9%" in client.get("/").text


def test_evaluate_states_the_rule_and_what_it_did(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--data-dir", "/nonexistent"]) == 2  # its data are not found: a clear line
    rep = api.load_run(run_dir).evaluate(images=synthetic_bars(30, seed=5)[0], labels=synthetic_bars(30, seed=5)[1])
    assert "99% precise with 95% confidence" in rep["promise"]
    cov = rep["coverage_at_precision"]["0.99"]
    assert cov["coverage"] > 0.5 and cov["precision"] >= 0.99


def test_old_runs_still_predict_and_are_marked_as_the_old_rule():
    run = api.load_run(GOLDEN_RUN)
    cal = run.metrics["calibration"]
    assert "rule" not in cal and len(run.predict(torch.zeros(2, 28, 28, dtype=torch.uint8))) == 2
    client = TestClient(create_app(GOLDEN_RUN))
    assert "old point estimate" in client.get("/v1/models").json()["promise"]
    with pytest.raises(RunError, match="saved without them"):
        with_promise(run, Promise(0.95, 0.05))
