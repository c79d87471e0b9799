"""Catalogue-sized predict: streamed to JSONL/CSV, interrupted and resumed to the same bytes, never overwritten."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.engine.runs import load_run, save_run
from fashionclf.infer.batch import JobError, predict_to_file
from fashionclf.models import build_model
from fashionclf.training.recipes import resolve_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = resolve_config("simple_cnn", None, precision="fp32")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("batch") / "run"
    cal = {"temperature": 1.0, "threshold": 0.2, "target_precision": 0.99}
    save_run(out, build_model(cfg), cfg, {"calibration": cal}, [], [f"c{i}" for i in range(10)], {})
    return load_run(out)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """23 small photos in two folders and one unreadable file: batches of 5 leave a ragged last batch."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(23):
        img = np.full((64, 48, 3), 235, np.uint8)
        h, w = rng.integers(15, 50), rng.integers(10, 40)
        img[5 : 5 + h, 4 : 4 + w] = rng.integers(0, 120, 3)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    return sorted(p for p in root.rglob("*") if p.is_file())


class Stop(Exception):
    pass


def _interrupt_after(n_written):
    def on_batch(written, total):
        if written >= n_written:
            raise Stop

    return on_batch


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, run, photos, suffix):
    whole = tmp_path / f"whole{suffix}"
    counts = predict_to_file(run, photos, whole, batch_size=5)
    assert counts == {"done": 23, "skipped_done": 0, "failed": 1, "resumed": False}

    out = tmp_path / f"resumed{suffix}"
    with pytest.raises(Stop):
        predict_to_file(run, photos, out, batch_size=5, on_batch=_interrupt_after(10))
    partial = tmp_path / f"resumed{suffix}.partial"
    assert not out.exists() and partial.exists()  # the final name appears only when the job is complete
    with open(partial, "a") as f:  # killed in the middle of a write: half a line at the end
        f.write('{"file": "half' if suffix == ".jsonl" else "half,c1,")
    counts = predict_to_file(run, photos, out, batch_size=5)
    assert counts["resumed"] and counts["skipped_done"] == 10 and counts["done"] + counts["failed"] == 14
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists() and not (tmp_path / f"resumed{suffix}.partial.json").exists()


def test_output_formats_hold_every_file_in_order(tmp_path, run, photos):
    predict_to_file(run, photos, tmp_path / "r.jsonl", top_k=2)
    predict_to_file(run, photos, tmp_path / "r.csv", top_k=2)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in photos]
    broken = [r for r in rows if "error" in r]
    assert len(broken) == 1 and broken[0]["file"].endswith("broken.jpg")
    with open(tmp_path / "r.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["file"] for r in table] == [r["file"] for r in rows]
    for r, t in zip(rows, table):
        if "error" in r:
            assert t["error"] and not t["label"]
        else:
            assert t["label"] == r["label"] and float(t["confidence"]) == pytest.approx(r["confidence"])
            assert json.loads(t["top_k"]) == r["top_k"] and len(r["top_k"]) == 2


def test_a_partial_file_of_another_job_is_not_mixed_in(tmp_path, run, photos):
    out = tmp_path / "r.jsonl"
    with pytest.raises(Stop):
        predict_to_file(run, photos, out, batch_size=5, on_batch=_interrupt_after(5))
    with pytest.raises(JobError, match="top_k"):
        predict_to_file(run, photos, out, top_k=5)
    with pytest.raises(JobError, match="paths_sha256"):
        predict_to_file(run, photos[:-3], out)
    with pytest.raises(ValueError, match=".jsonl or .csv"):
        predict_to_file(run, photos, tmp_path / "r.txt")


def test_cli_streams_resumes_and_never_overwrites(tmp_path, run, photos, capsys):
    folder = str(photos[0].parent.parent)
    out = tmp_path / "cat.csv"
    assert main(["predict", str(run.path), folder, "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "23 predictions, 1 unreadable files" in err
    first = out.read_bytes()
    assert main(["predict", str(run.path), folder, "--out", str(out), "--quiet"]) != 0
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == first


def test_duplicate_inputs_and_a_header_lost_to_a_kill_resume_correctly(tmp_path, run, photos):
    paths = photos[:7] + photos[:3]  # a file given twice is predicted twice, resumed or not
    whole = tmp_path / "whole.csv"
    predict_to_file(run, paths, whole, batch_size=4)
    out = tmp_path / "r.csv"
    with pytest.raises(Stop):
        predict_to_file(run, paths, out, batch_size=4, on_batch=_interrupt_after(8))
    predict_to_file(run, paths, out, batch_size=4)
    assert out.read_bytes() == whole.read_bytes()
    # killed before anything reached the disk: an empty partial file still gets its header
    out2 = tmp_path / "r2.csv"
    with pytest.raises(Stop):
        predict_to_file(run, paths, out2, batch_size=4, on_batch=_interrupt_after(4))
    (tmp_path / "r2.csv.partial").write_bytes(b"")
    predict_to_file(run, paths, out2, batch_size=4)
    assert out2.read_bytes() == whole.read_bytes()


def test_a_second_writer_of_the_same_job_is_refused(tmp_path, run, photos):
    import fcntl

    out = tmp_path / "r.jsonl"
    with pytest.raises(Stop):
        predict_to_file(run, photos, out, batch_size=5, on_batch=_interrupt_after(5))
    with open(tmp_path / "r.jsonl.partial", "a") as held:  # another process of the same job, mid-run
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(JobError, match="another process"):
            predict_to_file(run, photos, out)
    predict_to_file(run, photos, out)  # once it is gone, the job resumes
    assert len(out.read_text().splitlines()) == len(photos)


@pytest.mark.parametrize("odd", ["\n", "\u2028", "\r", "\r\n"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_file_names_with_line_breaks_resume(tmp_path, run, suffix, odd):
    """Issue 19: a name holding a newline or U+2028 cut the partial CSV in two (splitlines), so the job could not
    resume. The csv module now reads the whole text; a bare carriage return is quoted too."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(9):
        img = np.full((40, 30, 3), 230, np.uint8)
        img[5:35, 5:25] = rng.integers(0, 120, 3)
        Image.fromarray(img).save(folder / (f"{i}{odd}name.png" if i % 3 == 1 else f"{i}.png"))
    paths = sorted(folder.iterdir())
    whole = tmp_path / f"whole{suffix}"
    predict_to_file(run, paths, whole, batch_size=2)
    out = tmp_path / f"resumed{suffix}"
    with pytest.raises(Stop):
        predict_to_file(run, paths, out, batch_size=2, on_batch=_interrupt_after(4))
    with open(tmp_path / f"resumed{suffix}.partial", "a", newline="") as f:  # and half a record with a line break in it
        f.write(f'"5{odd}name' if suffix == ".csv" else '{"file": "5')
    counts = predict_to_file(run, paths, out, batch_size=2)
    assert counts["resumed"] and counts["skipped_done"] == 4 and counts["done"] == 5
    assert out.read_bytes() == whole.read_bytes()
    if suffix == ".csv":
        with open(out, newline="") as f:
            assert [r["file"] for r in csv.DictReader(f)] == [str(p) for p in paths]
    else:
        assert [json.loads(line)["file"] for line in out.read_text().split("\n") if line] == [str(p) for p in paths]


def test_save_preprocessed_keeps_same_named_files_apart(tmp_path, run):
    """Issue 19: x.jpg and x.png beside it were both saved as x.png, the second over the first."""
    from fashionclf.infer.predict import predict_files

    img = np.full((40, 30, 3), 230, np.uint8)
    img[5:35, 5:25] = 30
    Image.fromarray(img).save(tmp_path / "x.jpg")
    Image.fromarray(255 - img).save(tmp_path / "x.png")
    pre = tmp_path / "pre"
    rows = list(predict_files(run, [tmp_path / "x.jpg", tmp_path / "x.png"], save_preprocessed=pre))
    assert len(rows) == 2 and all("error" not in r for r in rows)
    saved = sorted(p.name for p in pre.iterdir())
    assert len(saved) == 2 and [n.endswith(("x.jpg.png", "x.png.png")) for n in saved] == [True, True]
    assert (pre / saved[0]).read_bytes() != (pre / saved[1]).read_bytes()


@pytest.mark.parametrize("to_file", [False, True])
def test_predict_exits_2_when_no_input_can_be_used(tmp_path, run, capsys, to_file):
    """Issue 19: bad input is exit status 2 for every command; predict gave 1 when no file could be read."""
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "b.png").write_bytes(b"")
    extra = ["--out", str(tmp_path / "r.csv"), "--quiet"] if to_file else []
    assert main(["predict", str(run.path), str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), *extra]) == 2
    err = capsys.readouterr().err
    assert "error: none of the 2 input files could be read as an image" in err and "Traceback" not in err
