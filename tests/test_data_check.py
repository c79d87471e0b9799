"""`fashionclf data check`: planted leaks (an exact copy and a resized, recompressed copy across splits) are found."""

import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.data.check import check_data, near_pairs


def _photo(seed, size=(120, 160)):
    """A distinct smooth 'photo': random low-frequency colour fields, upsampled (no two alike)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def _save(path, rgb, fmt="PNG", quality=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return path


def _clean(root, per=(12, 4), classes=("pants", "shirt", "skirt")):
    seed = 0
    for split, n in zip(("train", "test"), per):
        for c in classes:
            for i in range(n):
                _save(root / split / c / f"{i}.png", _photo(seed))
                seed += 1
    return root


def test_clean_split_folders_pass(tmp_path, capsys):
    root = _clean(tmp_path / "d")
    r = check_data(root)
    assert r["ok"] and r["layout"] == "splits" and r["leaks"] == 0 and not r["near_duplicates"] and not r["exact_duplicates"]
    assert r["counts"]["train"] == {"pants": 12, "shirt": 12, "skirt": 12} and r["imbalance"] == 1.0
    assert r["width"] == {"min": 160, "median": 160.0, "max": 160} and r["height"]["max"] == 120
    assert {(t["split"], t["count"]) for t in r["tiny_classes"]} == {("test", 4)}  # 4 < 10 in every test class
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "result: ok" in out and "tiny class: pants has 4 images in test" in out


def test_planted_leaks_are_found_and_exit_1(tmp_path, capsys):
    root = _clean(tmp_path / "d")
    src = root / "train" / "shirt" / "3.png"
    (root / "test" / "shirt" / "copy.png").write_bytes(src.read_bytes())  # an exact copy in test
    rgb = np.asarray(Image.open(root / "train" / "pants" / "5.png"))
    smaller = cv2.resize(rgb, (96, 72), interpolation=cv2.INTER_AREA)
    _save(root / "test" / "pants" / "resized.jpg", smaller, "JPEG", quality=60)  # resized and recompressed
    _save(root / "train" / "skirt" / "again.png", _photo(2))  # same pixels as train/pants/2.png, another label, same split
    r = check_data(root)
    assert not r["ok"] and r["leaks"] == 2
    exact = {(d["a"]["path"], d["b"]["path"], d["leak"]) for d in r["exact_duplicates"]}
    assert ("test/shirt/copy.png", "train/shirt/3.png", True) in exact or ("train/shirt/3.png", "test/shirt/copy.png", True) in exact
    near = [d for d in r["near_duplicates"] if d["leak"]]
    assert len(near) == 1 and {near[0]["a"]["path"], near[0]["b"]["path"]} == {"train/pants/5.png", "test/pants/resized.jpg"}
    same_split = [d for d in r["exact_duplicates"] + r["near_duplicates"] if not d["leak"]]
    assert len(same_split) == 1 and same_split[0]["labels_differ"] and r["conflicting_labels"] == 1
    assert main(["data", "check", str(root), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["leaks"] == 2 and "2 leak(s)" in captured.err


def test_unreadable_file_exits_1_and_unusable_input_exits_2(tmp_path, capsys):
    root = _clean(tmp_path / "d", per=(3, 1))
    (root / "train" / "pants" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    r = check_data(root)
    assert not r["ok"] and r["leaks"] == 0 and [u["path"] for u in r["unreadable"]] == ["train/pants/broken.jpg"]
    assert main(["data", "check", str(root)]) == 1
    assert "UNREADABLE train/pants/broken.jpg" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert main(["data", "check", str(root), "--near", "-1"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--near -1" in err and "Traceback" not in err


def test_without_splits_any_duplicate_is_a_leak(tmp_path):
    """Class folders: the test split is carved at random, so a copy anywhere may end up on both sides."""
    root = tmp_path / "d"
    for k, c in enumerate(("pants", "shirt")):
        for i in range(5):
            _save(root / c / f"{i}.png", _photo(10 * k + i))
    (root / "shirt" / "dup.png").write_bytes((root / "shirt" / "1.png").read_bytes())
    r = check_data(root)
    assert r["layout"] == "classes" and r["leaks"] == 1 and r["exact_duplicates"][0]["leak"] and not r["ok"]


def test_manifest_check(tmp_path):
    rows = ["path,label,split"]
    for i in range(6):
        _save(tmp_path / "p" / f"{i}.png", _photo(i))
        rows.append(f"p/{i}.png,{'ab'[i % 2]},{'test' if i > 3 else 'train'}")
    rows.append("p/gone.png,a,train")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    r = check_data(tmp_path / "m.csv")
    assert r["layout"] == "manifest" and r["counts"] == {"train": {"a": 3, "b": 2}, "test": {"a": 1, "b": 1}}
    assert [u["path"] for u in r["unreadable"]] == ["p/gone.png"] and "No such file" in r["unreadable"][0]["error"]


@pytest.mark.parametrize("quality,scale", [(40, 0.3), (75, 0.8)])
def test_near_duplicates_survive_resizing_and_recompression_but_differ_from_other_photos(quality, scale):
    from fashionclf.data.check import thumbnail
    from fashionclf.data.images import load_rgb

    photos = [_photo(100 + i, (200, 150)) for i in range(30)]
    buf = io.BytesIO()
    small = cv2.resize(photos[7], (int(150 * scale), int(200 * scale)), interpolation=cv2.INTER_AREA)
    Image.fromarray(small).save(buf, format="JPEG", quality=quality)
    thumbs = np.stack([thumbnail(p) for p in photos] + [thumbnail(load_rgb(buf.getvalue()))])
    assert near_pairs(thumbs) == {(7, 30)}
    assert near_pairs(thumbs, block=4) == {(7, 30)}  # the same pairs when compared block by block
