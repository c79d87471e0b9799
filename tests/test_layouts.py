"""The layouts --data reads: class folders, split folders, CSV/JSONL manifests; ambiguous ones refused with both readings."""

import json

import numpy as np
import pytest
from PIL import Image

from fashionclf.data.fashion_mnist import DataError
from fashionclf.data.folders import load_image_folder
from fashionclf.data.layouts import read_layout


def _img(path, k, i, size=(30, 40)):
    """Class 0: a dark vertical bar; class 1: a dark horizontal bar; i shifts the noise so files differ."""
    rng = np.random.default_rng(1000 * k + i)
    img = np.clip(220 + rng.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
    if k == 0:
        img[5:25, 15:22] = 40
    else:
        img[12:18, 5:35] = 40
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _classes(root, per_class=6, classes=("pants", "shirt"), start=0):
    for k, c in enumerate(classes):
        for i in range(per_class):
            _img(root / c / f"{c}{start + i}.png", k, start + i)
    return root


def _splits(root, names=("train", "val", "test"), per=(8, 3, 3)):
    for j, (name, n) in enumerate(zip(names, per)):
        _classes(root / name, n, start=100 * j)
    return root


def test_class_folders_are_read_as_before(tmp_path):
    layout = read_layout(_classes(tmp_path / "d"))
    assert layout.kind == "classes" and layout.classes == ["pants", "shirt"] and list(layout.splits) == ["all"]
    assert len(layout.splits["all"]) == 12


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_split_folders_are_used_as_given(tmp_path, val_name):
    root = _splits(tmp_path / "d", ("train", val_name, "test"))
    layout = read_layout(root)
    assert layout.kind == "splits" and layout.classes == ["pants", "shirt"]
    assert {k: len(v) for k, v in layout.splits.items()} == {"train": 16, "val": 6, "test": 6}
    data, skipped = load_image_folder(root, image_size=32)
    assert not skipped
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (16, 6, 6)  # nothing carved: the shop's own splits
    assert data.classes == ("pants", "shirt") and "test" in data.checksums and "val" in data.checksums


def test_split_folders_without_val_or_test_carve_them_from_train(tmp_path):
    root = _splits(tmp_path / "d", ("train", "test"), (10, 3))
    data, _ = load_image_folder(root, image_size=32)
    assert len(data.test_y) == 6 and len(data.train_y) + len(data.val_y) == 20 and len(data.val_y) >= 2
    with pytest.raises(DataError, match="no train/ folder"):
        read_layout(_splits(tmp_path / "e", ("val", "test"), (3, 3)))


def test_split_folders_with_val_data_too_are_refused(tmp_path):
    root = _splits(tmp_path / "d")
    with pytest.raises(DataError, match="has its own validation split"):
        load_image_folder(root, _classes(tmp_path / "v", 2), image_size=32)


def test_test_split_with_a_class_train_lacks_is_refused(tmp_path):
    root = _splits(tmp_path / "d")
    _img(root / "test" / "skirt" / "s.png", 0, 99)
    with pytest.raises(DataError, match=r"class folders \['skirt'\] that train/ does not have"):
        read_layout(root)


def test_split_folders_beside_loose_images_are_ambiguous(tmp_path):
    root = _splits(tmp_path / "d")
    _img(root / "stray.png", 0, 7)
    with pytest.raises(DataError) as e:
        read_layout(root)
    msg = str(e.value)
    assert "read as class folders it would train classes named ['test', 'train', 'val']" in msg and "read as split folders" in msg


def test_split_folders_beside_class_folders_are_ambiguous(tmp_path):
    root = _splits(tmp_path / "d")
    _classes(root, 2, classes=("skirt",))
    with pytest.raises(DataError) as e:
        read_layout(root)
    assert "classes named ['skirt', 'test', 'train', 'val']" in str(e.value) and "read as split folders" in str(e.value)


def test_split_folders_without_class_folders_are_ambiguous(tmp_path):
    """train/ and val/ holding images directly: today's reading would be two classes named train and val."""
    root = tmp_path / "d"
    for name, k in (("train", 0), ("val", 1)):
        for i in range(3):
            _img(root / name / f"{i}.png", k, i)
    with pytest.raises(DataError) as e:
        load_image_folder(root, image_size=32)
    msg = str(e.value)
    assert "read as class folders" in msg and "['train', 'val']" in msg and "read as split folders" in msg and "no classes" in msg


def test_loose_images_in_a_split_folder_are_refused(tmp_path):
    root = _splits(tmp_path / "d")
    _img(root / "train" / "loose.png", 0, 5)
    with pytest.raises(DataError, match="images directly in it .*which have no class"):
        read_layout(root)


def test_class_folders_holding_split_folders_are_ambiguous(tmp_path):
    root = tmp_path / "d"
    for k, c in enumerate(("pants", "shirt")):
        for s in ("train", "test"):
            for i in range(2):
                _img(root / c / s / f"{i}.png", k, i)
    with pytest.raises(DataError) as e:
        read_layout(root)
    assert "Read as class folders, each class's splits would be merged; read as splits, the layout is class/split" in str(e.value)


def _manifest_rows(tmp_path):
    photos = tmp_path / "photos"
    rows = []
    for i in range(10):
        k = i % 2
        p = _img(photos / f"sub{i % 3}" / f"{i}.jpg", k, i)
        rows.append((str(p.relative_to(tmp_path)), ["pants", "shirt"][k], "test" if i >= 8 else "train"))
    return rows


def test_csv_manifest_with_splits(tmp_path):
    rows = _manifest_rows(tmp_path)
    m = tmp_path / "labels.csv"
    m.write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    layout = read_layout(m)
    assert layout.kind == "manifest" and layout.classes == ["pants", "shirt"]
    assert {k: len(v) for k, v in layout.splits.items()} == {"train": 8, "test": 2}
    data, skipped = load_image_folder(m, image_size=32)
    assert not skipped and len(data.test_y) == 2 and len(data.train_y) + len(data.val_y) == 8


def test_jsonl_manifest_without_splits_and_a_missing_file(tmp_path):
    rows = _manifest_rows(tmp_path)
    m = tmp_path / "labels.jsonl"
    lines = [json.dumps({"path": p, "label": c}) for p, c, _ in rows] + [json.dumps({"path": "photos/gone.jpg", "label": "pants"})]
    m.write_text("\n".join(lines) + "\n")
    layout = read_layout(m)
    assert list(layout.splits) == ["all"] and len(layout.splits["all"]) == 11
    data, skipped = load_image_folder(m, image_size=32)
    assert len(skipped) == 1 and "gone.jpg" in skipped[0] and "no such file" in skipped[0]
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 10


@pytest.mark.parametrize(
    "text,match",
    [
        ("file,class\na.jpg,pants\n", r"lacks \['label', 'path'\]"),
        ("path,label\na.jpg,pants\n", "1 label"),
        ("path,label,split\na.jpg,pants,train\nb.jpg,shirt,\n", "line 3: no split while other rows have one"),
        ("path,label,split\na.jpg,pants,holdout\n", "split 'holdout'"),
        ("path,label\n,pants\n", "line 2: empty path or label"),
        ("path,label,split\na.jpg,pants,test\nb.jpg,shirt,test\n", "no row is in the train split"),
    ],
)
def test_bad_manifests_get_one_clear_message(tmp_path, text, match):
    m = tmp_path / "m.csv"
    m.write_text(text)
    with pytest.raises(DataError, match=match):
        read_layout(m)


def test_other_files_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a manifest"):
        read_layout(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_layout(tmp_path / "nowhere")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.jpg", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match="line 2: not JSON"):
        read_layout(tmp_path / "bad.jsonl")


def test_train_cli_reads_split_folders(tmp_path, capsys):
    from fashionclf.apps.cli import main

    root = _splits(tmp_path / "d", per=(16, 4, 4))
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--image-size", "32", "--model", "mlp", "--epochs", "2", "--out", str(run), "--quiet"]
    assert main(args) == 0
    assert json.loads((run / "meta.json").read_text())["classes"] == ["pants", "shirt"]
    bad = tmp_path / "bad"
    for name in ("train", "val"):
        _img(bad / name / "0.png", 0, 0)
    capsys.readouterr()
    assert main(["train", "--data", str(bad), "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "read as class folders" in err
