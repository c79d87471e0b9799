"""Image-folder datasets: scanning, clear errors, letterboxing, and train/evaluate/predict end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashionclf.cli import main
from fashionclf.data import DataError
from fashionclf.folders import letterbox, load_image_folder, scan


def _make_folder(root, per_class=12, classes=("pants", "shirt"), size=(40, 30), seed=0):
    """Class 0: a vertical dark bar; class 1: a horizontal dark bar; on light noisy backgrounds."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(220 + rng.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
            if k == 0:
                img[5:35, 10:20] = 40
            else:
                img[15:25, 3:27] = 40
            Image.fromarray(img).save(root / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_scan_and_clear_errors(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        scan(tmp_path / "missing")
    (tmp_path / "one" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="1 class subfolder"):
        scan(tmp_path / "one")
    root = _make_folder(tmp_path / "ok")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        scan(root)
    (root / "empty").rmdir()
    classes, items = scan(root)
    assert classes == ["pants", "shirt"] and len(items) == 24


def test_unreadable_files_are_left_out_and_named(tmp_path):
    root = _make_folder(tmp_path / "d")
    (root / "pants" / "broken.jpg").write_bytes(b"not a jpeg")
    data, skipped = load_image_folder(root, image_size=32)
    assert len(skipped) == 1 and "broken.jpg" in skipped[0] and "not an image" in skipped[0]
    assert data.train_x.shape[1:] == (3, 32, 32) and data.train_x.dtype == torch.uint8
    n = len(data.train_y) + len(data.val_y) + len(data.test_y)
    assert n == 24 and set(data.test_y.tolist()) == {0, 1}  # every class in the held-out test split


def test_val_data_must_have_the_same_classes(tmp_path):
    root = _make_folder(tmp_path / "train")
    val = _make_folder(tmp_path / "val", classes=("pants", "skirt"), per_class=3)
    with pytest.raises(DataError, match="missing \\['shirt'\\], extra \\['skirt'\\]"):
        load_image_folder(root, val, image_size=32)


def test_letterbox_keeps_aspect_and_pads_with_the_border_colour():
    img = np.full((100, 50, 3), 200, np.uint8)
    img[10:90, 20:30] = 0
    out = letterbox(img, 40)
    assert out.shape == (40, 40, 3)
    assert (out[:, :8] == 200).all() and (out[:, -8:] == 200).all()  # padding left and right, border colour
    assert out[20, 20].max() < 50  # the dark bar, centred


def test_train_evaluate_predict_on_an_image_folder(tmp_path, capsys):
    root = _make_folder(tmp_path / "photos", per_class=30)
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--image-size", "32", "--model", "mlp", "--epochs", "8", "--out", str(run), "--quiet"]
    assert main(args + ["--batch-size", "16"]) == 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["classes"] == ["pants", "shirt"] and meta["input"]["channels"] == 3 and meta["input"]["height"] == 32
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] >= 0.8
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.8
    assert main(["predict", str(run), str(root / "shirt"), "--json"]) == 0
    labels = [json.loads(x)["label"] for x in capsys.readouterr().out.splitlines()]
    assert len(labels) == 30 and labels.count("shirt") >= 24


def test_fixed_size_models_are_refused_for_photos(tmp_path, capsys):
    root = _make_folder(tmp_path / "photos", per_class=3)
    assert main(["train", "--data", str(root), "--image-size", "64", "--model", "tuned_cnn", "--out", str(tmp_path / "r")]) == 2
    assert "tuned_cnn cannot take 64x64 RGB images" in capsys.readouterr().err
    assert main(["train", "--image-size", "64", "--model", "mlp", "--out", str(tmp_path / "r")]) == 2
    assert "go with --data FOLDER" in capsys.readouterr().err
