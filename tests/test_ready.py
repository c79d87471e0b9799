"""The ready model (fashionclf/infer/ready.py): bundles of runs asked together under a review rule fitted on photos,
checked against their SHA-256; the shipped one categorises committed photos as recorded, with no run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_class_folder

import fashionclf
from fashionclf.apps.cli import main
from fashionclf.engine.runs import RunError
from fashionclf.infer import ready
from fashionclf.infer.predict import joint_results

SHIPPED = Path(fashionclf.__file__).parent / "weights" / "default"
RECORDED = Path(__file__).parent / "data" / "ready"


def test_review_rule_is_fitted_for_the_pair_and_checked_on_other_photos():
    g = torch.Generator().manual_seed(0)
    n = 2000
    labels = torch.randint(0, 3, (n,), generator=g)
    conf = 1 - 0.6 * torch.rand(n, generator=g) ** 3  # confidence 0.4-1.0, most of it near 1 as a network's ...
    right = torch.rand(n, generator=g) < conf  # ... and right that often: a calibrated pair
    pred = torch.where(right, labels, (labels + 1) % 3)
    p = ((1 - conf) / 2)[:, None].repeat(1, 3)
    p[torch.arange(n), pred] = conf
    probs = [p, p.clone()]
    rule = ready.fit_review(probs, labels)
    assert 0.9 < rule["threshold"] < 1 and rule["temperature"] == pytest.approx(1.0, abs=0.15)
    check = ready.check_review(probs, labels, rule)
    assert check["realised_precision"] >= 0.99 and 0 < check["automatic_share"] < 0.5
    # the same photos, but the runs disagree on every other one: those always go to a person
    other = p.clone()
    other[::2] = other[::2].roll(1, dims=1)
    half = ready.check_review([p, other], labels, rule)
    assert half["automatic"] == ready.check_review([p[1::2], p[1::2]], labels[1::2], rule)["automatic"] > 0
    # joint_results with the rule: recalibrated by its temperature and flagged by its threshold alone
    run = type("R", (), {"classes": ["a", "b", "c"], "metrics": {"calibration": {"threshold": 0.999}}, "path": "r"})()
    rows = joint_results([run, run], [p[:50], p[:50]], review={"temperature": 1.0, "threshold": 0.95})
    expect = [not (c >= 0.95) for c in p[:50].max(1).values.tolist()]
    assert [r["needs_review"] for r in rows] == expect  # not the runs' own 0.999
    assert any(not x for x in expect)
    hot = joint_results([run, run], [p[:5], p[:5]], review={"temperature": 0.5, "threshold": None})
    assert all(r["needs_review"] for r in hot)  # no threshold: everything to a person
    assert hot[0]["confidence"] > p[0].max().item()  # T < 1 sharpens


def test_none_of_these_is_refitted_on_each_kind_of_photo():
    g = torch.Generator().manual_seed(1)
    n = 400
    labels = torch.randint(0, 2, (n,), generator=g)
    p = torch.nn.functional.one_hot(labels, 2).float() * 0.98 + 0.01
    groups = (torch.arange(n) >= 300).long()  # 300 catalogue shots, 100 phone photos whose scores run higher
    scan = torch.randn(n, generator=g) + 3 * groups  # a scan run's score: phone photos look unlike its scans
    rule = ready.fit_review([p, p], labels, scores=[scan, None], groups=groups)
    cut = rule["unknown_thresholds"]
    assert cut[1] is None and (scan[groups == 1] <= cut[0]).float().mean() >= 0.95  # 95% of the phone photos known
    assert (scan[groups == 0] <= cut[0]).float().mean() > 0.99
    pooled = ready.fit_review([p, p], labels, scores=[scan, None])["unknown_thresholds"][0]
    assert pooled < cut[0]  # one quantile over all photos would call far more phone photos unknown
    check = ready.check_review([p, p], labels, rule, [scan, None])
    assert check["unknown"] == int((scan > cut[0]).sum()) and check["automatic"] == n - check["unknown"]
    # predict uses the bundle's thresholds instead of the run's own (fitted on its validation scans)
    from fashionclf.infer.predict import unknown_params

    run = type("R", (), {"metrics": {"unknown": {"score": "energy", "thresholds": {"energy": -9.0}}}})()
    assert unknown_params(run, 0, rule)["thresholds"] == {"energy": cut[0]}
    assert unknown_params(run, 0, {**rule, "unknown_thresholds": [None, None]})["thresholds"] == {}
    assert unknown_params(run, 0, None)["thresholds"] == {"energy": -9.0}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Two small photo runs of different input sizes, bundled with a rule fitted on their photos."""
    tmp = tmp_path_factory.mktemp("ready")
    root = make_class_folder(tmp / "photos", per_class=30)
    other = make_class_folder(tmp / "other", per_class=30, classes=("pants", "Shirt"), seed=1)
    base = ["train", "--model", "mlp", "--epochs", "6", "--batch-size", "16", "--quiet"]
    assert main(base + ["--data", str(root), "--image-size", "32", "--out", str(tmp / "a")]) == 0
    assert main(base + ["--data", str(other), "--image-size", "24", "--out", str(tmp / "b")]) == 0
    out = ready.write_bundle(tmp / "shelf" / "default", {"one": tmp / "a", "two": tmp / "b"}, {"temperature": 3.0, "threshold": 0.7})
    return out, root


def test_a_bundle_answers_as_its_runs_together(bundle):
    out, root = bundle
    spec = json.loads((out / "ready.json").read_text())
    assert spec["members"] == ["one", "two"] and "one/model.safetensors" in spec["sha256"]
    run = fashionclf.load_run(out)
    assert [p.meta["model"] for p in run.partners] == ["mlp"] and run.review["threshold"] == 0.7
    rows = run.predict(root / "shirt")
    a, b = fashionclf.load_run(out / "one"), fashionclf.load_run(out / "two")
    plain = a.predict(root / "shirt", with_runs=[b])  # the same average, under the runs' own thresholds
    assert [r["label"] for r in rows] == [r["label"] for r in plain] and [r["label"] for r in rows].count("shirt") >= 24
    for r in rows:  # the bundle's threshold (0.7) decides, not the runs' own; disagreement also flags
        if r["confidence"] < 0.7 or r["unknown"]:
            assert r["needs_review"]
    auto = [r for r in rows if not r["needs_review"]]
    assert auto and all(r["confidence"] >= 0.7 for r in auto)
    # the average is recalibrated by the bundle's temperature (3 > 1: less confident), not left as the runs gave it
    assert all(r["confidence"] <= q["confidence"] + 1e-6 for r, q in zip(rows, plain))
    assert any(r["confidence"] < q["confidence"] - 1e-4 for r, q in zip(rows, plain))
    with pytest.raises(ValueError, match="give photo files, not arrays"):
        run.predict(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_evaluate_scores_a_bundle_on_labelled_photos_as_predict_answers(bundle, tmp_path):
    out, root = bundle
    run = fashionclf.load_run(out)
    rep = run.evaluate(root)
    rows = run.predict(root)
    truth = [Path(r["file"]).parent.name for r in rows]
    assert rep["n"] == len(rows) and rep["accuracy"] == pytest.approx(
        sum(r["top_k"][0]["label"] == t for r, t in zip(rows, truth)) / len(rows)
    )
    auto = [r for r in rows if not r["needs_review"]]
    cov = next(iter(rep["coverage_at_precision"].values()))
    assert cov["coverage"] == pytest.approx(len(auto) / len(rows))
    assert cov["precision"] == pytest.approx(sum(r["label"] == Path(r["file"]).parent.name for r in auto) / len(auto))
    assert rep["members"] == [str(out / "one"), str(out / "two")] and rep["model"].startswith("ready model")
    with pytest.raises(ValueError, match="evaluate takes one run"):
        run.evaluate()  # Fashion-MNIST's test set: one run's report


def test_one_changed_byte_or_a_bad_ready_json_is_refused(bundle, tmp_path):
    out, _ = bundle
    copy = shutil.copytree(out, tmp_path / "copy")
    weights = copy / "two" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"two/model.safetensors: its SHA-256 .* differs .* reinstall fashionclf"):
        fashionclf.load_run(copy)
    for change, words in [
        ({"members": ["../a"]}, "'members' must list"),
        ({"sha256": {"one/meta.json": "x"}}, "64-digit SHA-256"),
        ({"review": {"temperature": -1, "threshold": 0.5}}, "positive temperature"),
        ({"review": {"temperature": 1.0, "threshold": 0.5, "unknown_thresholds": [1.0]}}, "one unknown threshold"),
        ({"review": "loose"}, "positive temperature"),
    ]:
        bad = shutil.copytree(out, tmp_path / f"bad{len(list(tmp_path.iterdir()))}")
        spec = json.loads((bad / "ready.json").read_text())
        (bad / "ready.json").write_text(json.dumps({**spec, **change}))
        with pytest.raises(RunError, match=words):
            fashionclf.load_run(bad)
    spec = json.loads((out / "ready.json").read_text())
    del spec["sha256"]["one/meta.json"]
    unlisted = shutil.copytree(out, tmp_path / "unlisted")
    (unlisted / "ready.json").write_text(json.dumps(spec))
    with pytest.raises(RunError, match="records no SHA-256 for one/meta.json"):
        fashionclf.load_run(unlisted)
    planted = shutil.copytree(out, tmp_path / "planted")  # a novelty file load_run would read, listed nowhere
    (planted / "one" / "novelty.safetensors").write_bytes(b"{}")
    with pytest.raises(RunError, match="records no SHA-256 for one/novelty.safetensors"):
        fashionclf.load_run(planted)
    with pytest.raises(RunError, match="never overwritten"):
        ready.write_bundle(out, {"one": out / "one"}, None)


def test_predict_and_serve_with_no_run_folder_use_the_ready_model(bundle, monkeypatch, tmp_path, capsys):
    out, root = bundle
    monkeypatch.setattr(ready, "SHIPPED", out.parent)
    monkeypatch.chdir(tmp_path)  # no folder named "default" here
    photo = str(next((root / "shirt").iterdir()))
    assert main(["predict", photo, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row == {**fashionclf.load_run(out).predict(photo)[0], "file": photo}
    assert main(["predict", "default", photo, "--json"]) == 0 and json.loads(capsys.readouterr().out) == row
    assert main(["predict", str(out)]) == 2
    assert "give the photos to categorise after it" in capsys.readouterr().err
    from fastapi.testclient import TestClient

    from fashionclf.apps.serving.app import create_app

    client = TestClient(create_app("default"))
    with open(photo, "rb") as f:
        got = client.post("/v1/predict", files=[("file", ("p.png", f.read(), "image/png"))]).json()["predictions"][0]
    assert got["label"] == row["label"] and got["confidence"] == pytest.approx(row["confidence"], abs=1e-5)
    assert got["needs_review"] == row["needs_review"]
    info = client.get("/v1/models").json()
    assert info["ready"]["members"] == ["one", "two"] and info["ready"]["review"]["threshold"] == 0.7
    with pytest.raises(ValueError, match="--backend onnx takes one run"):
        create_app("default", backend="onnx")


def test_a_missing_ready_model_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ready, "SHIPPED", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(tmp_path / "x.jpg")]) == 2
    assert "the ready model is not installed" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED / "ready.json").is_file(), reason="no ready model in this checkout (make ready-model builds it)")
def test_the_shipped_ready_model_categorises_committed_photos_as_recorded(tmp_path):
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 30e6, f"the ready model is {size / 1e6:.1f} MB; the package keeps it under 30 MB"
    expected = json.loads((RECORDED / "expected.json").read_text())
    run = fashionclf.load_run("default")
    rows = run.predict([RECORDED / e["file"] for e in expected])
    for e, r in zip(expected, rows):
        assert r["label"] == e["label"], e["file"]
        # recorded in fp32 on an AVX2 CPU; a CPU where inference runs faster in bf16 (--precision auto) drifts a little
        assert r["confidence"] == pytest.approx(e["confidence"], abs=0.03), e["file"]
    # the checksum in its metadata catches one changed weight byte
    copy = shutil.copytree(SHIPPED, tmp_path / "default")
    weights = copy / "photo" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match="differs from"):
        fashionclf.load_run(copy)
