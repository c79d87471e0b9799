"""Choosing by what a shop pays for (issue 20 item 4): the review rule cross-fitted on validation, and
`compare --choose-by auto-share` recommending by the share it labels with no person."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import study_row
from helpers import make_class_folder

import fashionclf
from fashionclf.apps.cli import main
from fashionclf.data.folders import load_image_folder
from fashionclf.engine.runs import RunError
from fashionclf.evaluation.calibrate import calibrate, crossfit_review
from fashionclf.infer.predict import run_logits
from fashionclf.study.report import recommend, summarize


def _logits(n=500, right=0.9, seed=0):
    """Logits for 10 classes; a share `right` of them point at the true class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < right, labels, (labels + 1) % 10)
    logits = torch.randn(n, 10, generator=g)
    # the wrong ones mostly less confident, as in a trained model: a 99% threshold exists, and some wrong items pass it
    boost = torch.where(pred == labels, 3 + 5 * torch.rand(n, generator=g), 1 + 4 * torch.rand(n, generator=g))
    logits[torch.arange(n), pred] += boost
    return logits, labels


def test_crossfit_on_a_perfect_model_labels_nearly_everything():
    labels = torch.arange(500) % 10
    logits = 10 * torch.nn.functional.one_hot(labels, 10) + torch.rand(500, 10, generator=torch.Generator().manual_seed(0))
    r = crossfit_review(logits, labels)
    # only an item less confident than every item the rule was fitted on waits for a person
    assert r["val_auto_share"] >= 0.99 and r["val_auto_precision"] == 1.0


def test_crossfit_finds_nothing_to_label_where_confidence_says_nothing():
    # as confident when wrong as when right: no threshold reaches 99% on the other folds, so nothing is automatic
    _, labels = _logits(right=0.7)
    logits = torch.zeros(len(labels), 10)  # all equal: every item at confidence 0.1
    r = crossfit_review(logits, labels)
    assert r["val_auto_share"] == 0.0 and r["val_auto_precision"] is None


def test_crossfit_decides_each_item_by_a_rule_fitted_without_it():
    """Each fifth decided by the temperature and threshold fitted on the other four fifths, pooled."""
    logits, labels = _logits(n=2000, right=0.85, seed=3)  # 1,500 items per fit: enough for the guaranteed rule
    r = crossfit_review(logits, labels, folds=4, seed=5)
    part = torch.randperm(2000, generator=torch.Generator().manual_seed(5)) % 4
    auto, right = 0, 0
    for k in range(4):
        cal = calibrate(logits[part != k], labels[part != k])
        conf, pred = (logits[part == k] / cal["temperature"]).softmax(1).max(1)
        keep = conf >= cal["threshold"] if cal["threshold"] is not None else torch.zeros_like(conf, dtype=torch.bool)
        auto += int(keep.sum())
        right += int((pred[keep] == labels[part == k][keep]).sum())
    assert r == {"val_auto_share": auto / 2000, "val_auto_precision": pytest.approx(right / auto)}
    assert 0 < r["val_auto_share"] < 1


@pytest.mark.parametrize("bad", ["few", "nan"])
def test_crossfit_says_none_where_it_cannot_be_measured(bad):
    logits, labels = _logits(n=8 if bad == "few" else 100)
    if bad == "nan":
        logits[3, 2] = float("nan")
    assert crossfit_review(logits, labels) == {"val_auto_share": None, "val_auto_precision": None}


def _row(model, val, share, precision=0.99, **kw):
    return {**study_row(model, val=val, **kw), "val_auto_share": share, "val_auto_precision": precision}


def test_auto_share_rule_takes_the_largest_share_over_the_more_accurate():
    runs = [_row("accurate", 0.95, 0.60), _row("accurate", 0.95, 0.62, seed=1), _row("sure", 0.93, 0.75), _row("sure", 0.93, 0.77, seed=1)]
    rows = summarize(runs)
    assert recommend(rows)[0]["model"] == "accurate"  # the default rule: accuracy first
    pick, text = recommend(rows, by="auto-share")
    assert pick["model"] == "sure" and "**sure**" in text and text.startswith("Rule: the largest share of validation items")
    assert "accurate (61.0 ± 1.4% automatic at 99.0% precision), sure (76.0 ± 1.4% automatic" in text
    # a tie on the share goes to validation accuracy
    tie = summarize([_row("a", 0.94, 0.7), _row("b", 0.95, 0.7)])
    assert recommend(tie, by="auto-share")[0]["model"] == "b"


def test_auto_share_rule_refuses_runs_without_the_figure():
    rows = summarize([study_row("old"), _row("new", 0.9, 0.5)])
    with pytest.raises(ValueError, match="old have no cross-fitted validation share"):
        recommend(rows, by="auto-share")
    with pytest.raises(ValueError, match="expected one of accuracy, auto-share"):
        recommend(rows, by="speed")


def test_compare_chooses_by_auto_share_on_image_folders(tmp_path, capsys):
    photos = make_class_folder(tmp_path / "photos", per_class=70)
    out = tmp_path / "study"
    args = ["compare", "--data", str(photos), "--image-size", "32", "--models", "mlp,advanced_cnn", "--epochs", "3"]
    assert main(args + ["--choose-by", "auto-share", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["choose_by"] == "auto-share"
    assert "automatic (val, cross-fitted)" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "Rule: the largest share of validation items labelled with no person" in md
    assert "| val automatic % (cross-fitted) |" in md
    data, _ = load_image_folder(photos, image_size=32)
    for r in results["runs"]:
        run = fashionclf.load_run(out / r["run_dir"])
        assert r["val_auto_share"] == run.metrics["val_auto_share"] is not None
        # the stored figure is the cross-fit of the run's own validation logits
        logits, _ = run_logits(run, data.val_x)
        assert crossfit_review(logits, data.val_y)["val_auto_share"] == pytest.approx(r["val_auto_share"])
    # a run saved before the figure existed is reused and scored, not refused after the others trained
    path = out / results["runs"][0]["run_dir"] / "metrics.json"
    metrics = json.loads(path.read_text())
    before = metrics.pop("val_auto_share"), metrics.pop("val_auto_precision")
    path.write_text(json.dumps(metrics))
    assert main(args + ["--choose-by", "auto-share", "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "results.json").read_text())["runs"][0]
    assert (again["val_auto_share"], again["val_auto_precision"]) == pytest.approx(before)
    # a damaged figure is one clear error when the run is loaded
    path.write_text(json.dumps({**metrics, "val_auto_share": 7}))
    with pytest.raises(RunError, match="val_auto_share = 7: expected a value in"):
        fashionclf.load_run(path.parent)


def test_an_unknown_rule_is_refused_before_anything_trains(tmp_path, capsys):
    photos = make_class_folder(tmp_path / "photos", per_class=4)
    with pytest.raises(ValueError, match="choose by 'speed'"):
        cfg = fashionclf.recipe("mlp")
        fashionclf.compare([cfg], fashionclf.load_data(cfg, photos, image_size=32)[0], tmp_path / "s", choose_by="speed")
    assert not (tmp_path / "s").exists()
    with pytest.raises(SystemExit) as e:
        main(["compare", "--data", str(photos), "--choose-by", "speed", "--out", str(tmp_path / "s")])
    assert e.value.code == 2 and "invalid choice: 'speed'" in capsys.readouterr().err
    # 8 photos leave too few validation items to cross-fit: said before training, not after
    assert (
        main(
            [
                "compare",
                "--data",
                str(photos),
                "--image-size",
                "32",
                "--models",
                "mlp",
                "--choose-by",
                "auto-share",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "needs at least 10 validation items" in capsys.readouterr().err and not (tmp_path / "s").exists()
