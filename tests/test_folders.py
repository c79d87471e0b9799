"""Image-folder datasets: scanning, clear errors, letterboxing, and train/evaluate/predict end to end."""

import json

import numpy as np
import pytest
import torch
from helpers import make_class_folder
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.data.fashion_mnist import DataError
from fashionclf.data.folders import add_converted_photos, letterbox, load_image_folder, map_folders, parse_class_map
from fashionclf.data.layouts import scan


def test_scan_and_clear_errors(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        scan(tmp_path / "missing")
    (tmp_path / "one" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="1 class subfolder"):
        scan(tmp_path / "one")
    root = make_class_folder(tmp_path / "ok")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        scan(root)
    (root / "empty").rmdir()
    classes, items = scan(root)
    assert classes == ["pants", "shirt"] and len(items) == 24


def test_unreadable_files_are_left_out_and_named(tmp_path):
    root = make_class_folder(tmp_path / "d")
    (root / "pants" / "broken.jpg").write_bytes(b"not a jpeg")
    data, skipped = load_image_folder(root, image_size=32)
    assert len(skipped) == 1 and "broken.jpg" in skipped[0] and "not an image" in skipped[0]
    assert data.train_x.shape[1:] == (3, 32, 32) and data.train_x.dtype == torch.uint8
    n = len(data.train_y) + len(data.val_y) + len(data.test_y)
    assert n == 24 and set(data.test_y.tolist()) == {0, 1}  # every class in the held-out test split


def test_val_data_must_have_the_same_classes(tmp_path):
    root = make_class_folder(tmp_path / "train")
    val = make_class_folder(tmp_path / "val", classes=("pants", "skirt"), per_class=3)
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
    root = make_class_folder(tmp_path / "photos", per_class=30)
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
    root = make_class_folder(tmp_path / "photos", per_class=3)
    assert main(["train", "--data", str(root), "--image-size", "64", "--model", "tuned_cnn", "--out", str(tmp_path / "r")]) == 2
    assert "tuned_cnn cannot take 64x64 RGB images" in capsys.readouterr().err
    assert main(["train", "--image-size", "64", "--model", "mlp", "--out", str(tmp_path / "r")]) == 2
    assert "go with --data FOLDER" in capsys.readouterr().err


def _gray_items(root, classes=("tee", "trousers", "hat"), per_class=4):
    """Light photos with one dark item per class shape, for the Fashion-MNIST-style conversion."""
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.full((60, 50, 3), 230, np.uint8)
            img[10 + k * 5 : 50 - k * 5, 15:35] = 30 + i
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def test_parse_class_map():
    assert parse_class_map("t-shirt=T-shirt/top, pants = Trouser,hat=-") == {"t-shirt": "T-shirt/top", "pants": "Trouser", "hat": None}
    assert parse_class_map(None) == {}
    with pytest.raises(DataError, match="expected FOLDER=CLASS"):
        parse_class_map("pants")
    with pytest.raises(DataError, match="expected FOLDER=CLASS"):
        parse_class_map("pants=")


def test_map_folders_renames_leaves_out_and_names_what_is_wrong():
    classes = ("T-shirt/top", "Trouser", "Dress")
    names = ["dress", "hat", "pants", "tshirt_top"]
    assert map_folders(names, classes, {"pants": "trouser", "hat": None}, "shop") == {"dress": 2, "hat": None, "pants": 1, "tshirt_top": 0}
    with pytest.raises(DataError, match=r"shop: class folders \['hat'\] match no class.*--class-map"):
        map_folders(names, classes, {"pants": "Trouser"}, "shop")
    with pytest.raises(DataError, match=r"names folders \['shoes'\]"):
        map_folders(names, classes, {"shoes": None}, "shop")
    with pytest.raises(DataError, match=r"maps to \['Trousers'\]"):
        map_folders(names, classes, {"pants": "Trousers", "hat": None}, "shop")


def test_add_converted_photos_mixes_converted_photos_into_training(tmp_path, monkeypatch):
    from fashionclf.data import photos as preprocess
    from fashionclf.data.fashion_mnist import CLASSES, FashionMNIST

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _gray_items(tmp_path / "shop")
    (root / "tee" / "broken.jpg").write_bytes(b"not a jpeg")
    z = torch.zeros(5, 28, 28, dtype=torch.uint8)
    y = torch.zeros(5, dtype=torch.long)

    def data():
        return FashionMNIST(z, y + 9, z, y, z, y, "scans", {"train": "abc"})

    cmap = {"tee": "T-shirt/top", "trousers": "Trouser", "hat": None}
    calls = []
    real = preprocess.to_fashion_mnist
    monkeypatch.setattr(preprocess, "to_fashion_mnist", lambda rgb, method: calls.append(1) or real(rgb, method))
    d = data()
    skipped = add_converted_photos(d, root, cmap, repeat=2)
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    assert d.train_x.shape == (5 + 2 * 8, 28, 28) and d.train_x.dtype == torch.uint8
    assert sorted(d.train_y[5:].tolist()) == [0] * 8 + [1] * 8  # hat left out, labels in Fashion-MNIST order
    assert CLASSES[1] == "Trouser" and len(d.val_y) == 5 and len(d.test_y) == 5  # validation and test untouched
    assert d.checksums["train"] == "abc" and len(d.checksums["extra_photos"]) == 64
    # the items are converted Fashion-MNIST style: light item on black, corners dark
    assert d.train_x[5:, 0, 0].max() == 0 and d.train_x[5:].float().mean() > 10
    n = len(calls)
    assert n == 8  # the broken file never reaches the conversion
    d2 = data()
    add_converted_photos(d2, root, cmap, repeat=1)
    assert len(calls) == n and torch.equal(d2.train_x[5:], d.train_x[5 : 5 + 8])  # second time: from the cache
    Image.fromarray(np.full((60, 50, 3), 230, np.uint8)).save(root / "tee" / "new.png")
    add_converted_photos(data(), root, cmap, repeat=1)
    assert len(calls) == n + 9  # a changed folder is converted afresh
    with pytest.raises(DataError, match="expected 1-10"):
        add_converted_photos(data(), root, cmap, repeat=0)


@pytest.mark.data
def test_train_with_extra_photos_records_them(tmp_path, monkeypatch, capsys, real_data_dir):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = _gray_items(tmp_path / "shop", per_class=3)
    run = tmp_path / "run"
    base = ["train", "--model", "mlp", "--epochs", "1", "--train-limit", "300", "--no-download", "--quiet"]
    opts = ["--extra-photos", str(root), "--class-map", "tee=T-shirt/top,trousers=Trouser,hat=-", "--extra-repeat", "2"]
    assert main(base + opts + ["--out", str(run)]) == 0
    meta = json.loads((run / "meta.json").read_text())
    cfg = meta["config"]
    assert cfg["extra_photos"] == str(root) and cfg["extra_repeat"] == 2 and cfg["extra_class_map"]["hat"] is None
    assert len(meta["data"]["checksums"]["extra_photos"]) == 64 and meta["data"]["train"] == 312  # 300 scans + 2 x 6 photos
    assert main(base + ["--class-map", "tee=Dress", "--out", str(tmp_path / "r2")]) == 2
    assert "go with --extra-photos" in capsys.readouterr().err
    assert main(["train", "--data", str(root), "--extra-photos", str(root), "--out", str(tmp_path / "r3")]) == 2
    assert "the photos are the dataset already" in capsys.readouterr().err


def test_cutmix_and_drop_path_train_on_photos_and_are_recorded(tmp_path, capsys):
    root = make_class_folder(tmp_path / "photos", per_class=6)
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--image-size", "32", "--model", "efficientnet_lite0", "--no-pretrained", "--epochs", "1"]
    args += ["--batch-size", "4", "--aug-cutmix", "0.5", "--drop-path", "0.1", "--out", str(run), "--quiet"]
    assert main(args) == 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["config"]["aug"]["cutmix"] == 0.5 and meta["model_kwargs"]["drop_path"] == 0.1
    from fashionclf.engine.runs import load_run

    rates = {m.drop for m in load_run(run).model.modules() if type(m).__name__ in ("Separable", "Inverted")}
    assert rates and 0.05 < max(rates) <= 0.1  # rebuilt with its stochastic depth (ramped up to 0.1 with depth, as timm)
    assert main(["evaluate", str(run), "--data", str(root), "--json"]) == 0


def test_drop_path_is_refused_for_models_without_it(tmp_path, capsys):
    root = make_class_folder(tmp_path / "photos", per_class=3)
    assert main(["train", "--data", str(root), "--model", "resnet", "--drop-path", "0.1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "resnet has no stochastic depth" in err and "efficientnet_lite0" in err
    assert main(["train", "--data", str(root), "--model", "efficientnet_lite0", "--drop-path", "1.5", "--out", str(tmp_path / "r")]) == 2
    assert "expected a rate in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_label_issues_on_an_image_folder(tmp_path, capsys):
    # it used to build a grayscale model for RGB photos and fail deep inside the first convolution
    root = make_class_folder(tmp_path / "photos", per_class=10)
    base = ["label-issues", "--data", str(root), "--image-size", "32", "--folds", "2", "--epochs", "1", "--quiet"]
    assert main(base + ["--model", "tuned_cnn", "--out", str(tmp_path / "a")]) == 2
    assert "tuned_cnn cannot take 32x32 RGB images" in capsys.readouterr().err
    assert main(base + ["--model", "mlp", "--out", str(tmp_path / "b")]) == 0
    issues = json.loads((tmp_path / "b" / "label_issues.json").read_text())
    assert issues["model"] == "mlp" and isinstance(issues["issues"], list)


def test_resolution_refuses_image_folders(tmp_path, capsys):
    root = make_class_folder(tmp_path / "photos", per_class=3)
    assert main(["resolution", "--data", str(root), "--model", "mlp", "--out", str(tmp_path / "r")]) == 2
    assert "resolution studies Fashion-MNIST's 28x28 images" in capsys.readouterr().err


def test_predict_with_a_second_run_averages_and_flags_disagreement(tmp_path, capsys):
    root = make_class_folder(tmp_path / "photos", per_class=30)
    # The second run's folders are named differently (case), so they sort in the other order: classes match by name.
    other = make_class_folder(tmp_path / "other", per_class=30, classes=("pants", "Shirt"), seed=1)
    run_a, run_b, run_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    base = ["train", "--model", "mlp", "--epochs", "8", "--batch-size", "16", "--quiet"]
    assert main(base + ["--data", str(root), "--image-size", "32", "--out", str(run_a)]) == 0
    assert main(base + ["--data", str(other), "--image-size", "24", "--out", str(run_b)]) == 0
    assert json.loads((run_b / "meta.json").read_text())["classes"] == ["Shirt", "pants"]
    capsys.readouterr()

    def probs(*args):
        assert main(["predict", *args, str(root / "shirt"), "--json", "--top-k", "2"]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        return rows, [{t["label"].lower(): t["confidence"] for t in r["top_k"]} for r in rows]

    joint, pj = probs(str(run_a), "--with", str(run_b))
    _, pa = probs(str(run_a))
    _, pb = probs(str(run_b))
    assert len(joint) == 30 and [r["label"] for r in joint].count("shirt") >= 24  # run a's class names
    for j, a, b in zip(pj, pa, pb):  # each photo: the mean of the two runs' calibrated probabilities, by class name
        assert j["shirt"] == pytest.approx((a["shirt"] + b["shirt"]) / 2, abs=1e-4)
    # a run with other classes is refused before any photo is read
    make_class_folder(tmp_path / "third", per_class=10, classes=("pants", "dress"))
    assert main(base + ["--data", str(tmp_path / "third"), "--image-size", "32", "--out", str(run_c)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run_a), str(root / "shirt"), "--with", str(run_c)]) == 2
    assert "are not those of" in capsys.readouterr().err


def test_joint_results_average_and_review_rule():
    from types import SimpleNamespace

    from fashionclf.infer.predict import class_order, joint_results

    def fake(classes, threshold):
        return SimpleNamespace(classes=classes, metrics={"calibration": {"threshold": threshold}}, path=f"run-{threshold}")

    a, b = fake(["T-shirt/top", "Trouser"], 0.8), fake(["t_shirt_top", "TROUSER"], 0.9)
    assert class_order(a, fake(["trouser", "T-Shirt/Top"], 0.5)).tolist() == [1, 0]
    with pytest.raises(ValueError, match="are not those of"):
        class_order(a, fake(["trouser", "dress"], 0.5))
    with pytest.raises(ValueError, match="are not those of"):
        class_order(a, fake(["trouser", "Trouser"], 0.5))  # two names for one class
    pa = torch.tensor([[0.96, 0.04], [0.9, 0.1], [0.7, 0.3]])
    pb = torch.tensor([[0.94, 0.06], [0.2, 0.8], [0.9, 0.1]])
    out = joint_results([a, b], [pa, pb], top_k=2)
    assert [r["label"] for r in out] == ["T-shirt/top", "T-shirt/top", "T-shirt/top"]
    assert out[0]["confidence"] == pytest.approx(0.95) and out[1]["confidence"] == pytest.approx(0.55)
    # agreed and above the stricter threshold (0.9); the runs disagree; agreed but 0.8 < 0.9
    assert [r["needs_review"] for r in out] == [False, True, True]
    assert joint_results([a, fake(["T-shirt/top", "Trouser"], None)], [pa, pa])[0]["needs_review"]  # no threshold: review
