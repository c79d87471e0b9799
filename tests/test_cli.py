"""The CLI end to end, in-process, on small subsets (real data) and on synthetic files."""

import json
from pathlib import Path

import pytest
from conftest import make_split

from fashionclf.apps.cli import main


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "simple_cnn", "tuned_cnn", "advanced_cnn"):
        assert name in out


def test_unknown_model_is_one_clear_line(capsys):
    assert main(["train", "--model", "nope", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "valid models: mlp" in err and "Traceback" not in err


def test_out_on_unwritable_path_is_clear(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--model", "mlp", "--out", str(blocker / "run")]) == 2
    assert f"{blocker} is a file" in capsys.readouterr().err


def test_no_pretrained_only_for_pretrained_models(capsys):
    assert main(["train", "--model", "mlp", "--no-pretrained", "--out", "x"]) == 2
    assert "mlp has no pretrained weights" in capsys.readouterr().err


def test_evaluate_missing_run_is_clear(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.data
def test_train_then_evaluate(tmp_path, capsys, real_data_dir):
    run = tmp_path / "run"
    args = [
        "train",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--train-limit",
        "3000",
        "--out",
        str(run),
        "--quiet",
        "--data-dir",
        str(real_data_dir),
    ]
    args += ["--schedule", "cosine", "--label-smoothing", "0.05", "--tta"]
    assert main(args) == 0
    for f in ("model.safetensors", "meta.json", "metrics.json", "history.csv"):
        assert (run / f).exists(), f
    metrics = json.loads((run / "metrics.json").read_text())
    for k in ("test_accuracy", "test_loss", "val_accuracy", "train_seconds", "params", "epochs_run"):
        assert k in metrics
    assert metrics["test_accuracy"] > 0.6 and metrics["epochs_run"] == 1
    config = json.loads((run / "meta.json").read_text())["config"]
    assert (config["schedule"], config["label_smoothing"], config["tta"]) == ("cosine", 0.05, True)
    capsys.readouterr()

    # A second train into the same folder is refused and leaves the run intact.
    assert main(args) == 2
    assert "already holds files" in capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text()) == metrics

    assert main(["evaluate", str(run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert len(rep["per_class"]) == 10 and len(rep["confusion_matrix"]) == 10 and rep["loss"] > 0
    # calibrated review: temperature and threshold were fitted on validation at training time
    assert 0 <= rep["ece"] <= 1 and 0 <= rep["ece_uncalibrated"] <= 1
    cov = rep["coverage_at_precision"]["0.99"]
    assert set(cov) == {"threshold", "coverage", "precision"} and 0 <= cov["coverage"] <= 1
    assert metrics["calibration"]["temperature"] > 0

    # Any folder holding a t10k pair: here a synthetic one.
    other = tmp_path / "other"
    make_split(other, "t10k", 5, gz=False)
    assert main(["evaluate", str(run), "--data-dir", str(other), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 50 and sum(map(sum, rep["confusion_matrix"])) == 50

    assert main(["evaluate", str(run)]) == 0
    assert "confusion matrix" in capsys.readouterr().out

    assert main(["robustness", str(run), "--limit", "300", "--json"]) == 0
    rob = json.loads(capsys.readouterr().out)
    assert rob["images"] == 300 and len(rob["corruptions"]) == 14 and all(len(v) == 5 for v in rob["corruptions"].values())
    assert rob["mean"] < rob["clean"]  # the suite hurts an mlp trained without augmentation
    assert rob["corruptions"]["rotation"][4] < rob["corruptions"]["rotation"][0]

    # --split validation: the suite on the run's own validation split, to choose runs without the test set
    from fashionclf.data.fashion_mnist import load_fashion_mnist
    from fashionclf.engine.runs import load_run
    from fashionclf.study.compare import robustness

    assert main(["robustness", str(run), "--split", "validation", "--limit", "60", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert (val["split"], rob["split"], val["images"]) == ("validation", "test", 60)
    data = load_fashion_mnist(real_data_dir)
    direct = robustness(load_run(run), data.val_x[:60], data.val_y[:60])
    assert (val["clean"], val["mean"]) == (direct["clean"], direct["mean"])


@pytest.mark.slow
@pytest.mark.data
def test_compare_writes_results_and_report(tmp_path, capsys, real_data_dir):
    out = tmp_path / "study"
    args = ["compare", "--models", "mlp,tuned_cnn", "--seeds", "2", "--epochs", "1", "--train-limit", "2000", "--out", str(out), "--quiet"]
    args += ["--robustness", "200"]
    assert main(args + ["--data-dir", str(real_data_dir)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["seed"]) for r in results["runs"]] == [("mlp", 0), ("mlp", 1), ("tuned_cnn", 0), ("tuned_cnn", 1)]
    for r in results["runs"]:
        for k in ("test_accuracy", "test_loss", "val_accuracy", "train_seconds", "params"):
            assert k in r
    md = (out / "report.md").read_text()
    assert "Recommended: **" in md and "± " in md
    assert "mlp → tuned_cnn" in md and "seed pairs" in md  # McNemar verdicts for each step
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "src='http" not in html
    assert "Top losses of" in md and "Duplicates across training and test data" in md
    assert "Robustness: the corruption suite" in md and "Calibrated review" in md
    assert all(0 < r["robustness"] < 1 for r in results["runs"])
    assert (out / "runs" / "mlp-s0" / "robustness.json").exists() and (out / "figures" / "reliability.png").exists()
    for f in ("examples.png", "curves.png", "confusion.png", "worst_pair.png", "top_losses.png", "duplicates.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    capsys.readouterr()

    # Re-running resumes: finished runs are reused, not retrained.
    mtime = (out / "runs" / "mlp-s0" / "model.safetensors").stat().st_mtime_ns
    assert main(args + ["--data-dir", str(real_data_dir)]) == 0
    assert (out / "runs" / "mlp-s0" / "model.safetensors").stat().st_mtime_ns == mtime
    capsys.readouterr()

    # Other data (here: another training subset) is not silently mixed with the finished runs.
    other = [a if a != "2000" else "1500" for a in args]
    assert main(other + ["--data-dir", str(real_data_dir)]) == 2
    assert "another configuration or other data" in capsys.readouterr().err
    assert (out / "runs" / "mlp-s0" / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.data
def test_train_best_cpu_preset(tmp_path, capsys, real_data_dir):
    run = tmp_path / "run"
    args = ["train", "--preset", "best-cpu", "--epochs", "1", "--train-limit", "400", "--test-limit", "300", "--out", str(run), "--quiet"]
    assert main(args + ["--data-dir", str(real_data_dir)]) == 0
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"] == "resnet" and meta["config"]["tta"] and meta["config"]["optimizer"] == "sgd"
    assert (meta["data"]["train"], meta["data"]["test"]) == (400, 300)  # --train-limit and --test-limit kept their word
    assert "resnet: test accuracy" in capsys.readouterr().out


def test_unknown_preset_lists_valid_ones(capsys):
    assert main(["train", "--preset", "fastest", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'fastest'" in err and "best-cpu" in err


def test_resolution_sizes_are_checked(capsys):
    assert main(["resolution", "--sizes", "7,x"]) == 2
    assert "expected comma-separated whole numbers" in capsys.readouterr().err
    assert main(["resolution", "--sizes", "14,56"]) == 2
    assert "between 1 and 28" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.data
def test_resolution_study_report(tmp_path, capsys, real_data_dir):
    out = tmp_path / "res"
    args = ["resolution", "--model", "mlp", "--sizes", "3,28", "--seeds", "2", "--epochs", "1", "--train-limit", "3000"]
    assert main(args + ["--out", str(out), "--quiet", "--data-dir", str(real_data_dir)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sizes"] == [3, 28] and set(summary["recall"]["3"]) >= {"Shirt", "Coat"}
    # 3 px loses most of the detail: the 28 px model must be clearly better, and the report must say so
    assert summary["overall"]["28"] > summary["overall"]["3"] + 0.02
    assert summary["last_step"]["all classes"]["climbing"] and "still climbing" in printed
    md = (out / "report.md").read_text()
    assert "Does going from 3 to 28 px still pay?" in md and "Shirt" in md
    assert (out / "figures" / "resolution.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["mlp-3px-s0", "mlp-3px-s1", "mlp-s0", "mlp-s1"]


def test_compare_per_model_seed_counts():
    from fashionclf.apps.cli.study import model_seeds as _model_seeds

    assert _model_seeds("mlp, resnet:3", 2) == [("mlp", 2), ("resnet", 3)]
    with pytest.raises(ValueError, match="whole number of at least 1"):
        _model_seeds("mlp:0", 1)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        _model_seeds("nope:2", 1)


@pytest.mark.data
def test_predict_photos_json_lines(tmp_path, capsys, real_data_dir):
    import numpy as np
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--epochs", "1", "--train-limit", "3000", "--out", str(run), "--quiet"]) == 0
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    img = np.full((120, 90, 3), 240, np.uint8)
    img[20:100, 25:65] = 40  # a dark trouser-like bar on white
    Image.fromarray(img).save(photos / "a.jpg")
    Image.fromarray(img).convert("RGBA").save(photos / "sub" / "b.png")
    (photos / "broken.jpg").write_bytes(b"not an image")
    capsys.readouterr()

    pre = tmp_path / "pre"
    assert main(["predict", str(run), str(photos), "--json", "--top-k", "2", "--save-preprocessed", str(pre)]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert [x["file"] for x in lines] == [str(photos / "a.jpg"), str(photos / "broken.jpg"), str(photos / "sub" / "b.png")]
    good = [x for x in lines if "error" not in x]
    for x in good:
        assert set(x) == {"file", "label", "index", "confidence", "top_k", "needs_review", "unknown", "unknown_score"}
        assert len(x["top_k"]) == 2 and 0 < x["confidence"] <= 1
        assert x["label"] == (None if x["unknown"] else x["top_k"][0]["label"])  # "none of these": label None
        assert isinstance(x["needs_review"], bool)
    assert good[0]["label"] == good[1]["label"]  # the same picture as JPEG and as RGBA PNG
    assert "not an image" in lines[1]["error"] and "skipped" in captured.err
    assert len(list(pre.glob("*.png"))) == 2

    # labelled photos: folder names match class names ignoring case and punctuation
    labelled = tmp_path / "labelled"
    (labelled / "TROUSER").mkdir(parents=True)
    (labelled / "t_shirt_top").mkdir()
    Image.fromarray(img).save(labelled / "TROUSER" / "1.jpg")
    Image.fromarray(img).save(labelled / "t_shirt_top" / "1.png")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(labelled), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 2 and sum(map(sum, rep["confusion_matrix"])) == 2
    cm = rep["confusion_matrix"]
    assert sum(cm[0]) == 1 and sum(cm[1]) == 1  # one true T-shirt/top, one true Trouser: folder names mapped
    (labelled / "socks").mkdir()
    Image.fromarray(img).save(labelled / "socks" / "1.png")
    assert main(["evaluate", str(run), "--data", str(labelled)]) == 2
    assert "['socks'] match no class of this model" in capsys.readouterr().err
    # a shop's own folder names: --class-map renames them, '-' leaves a class the model lacks out
    assert main(["evaluate", str(run), "--data", str(labelled), "--class-map", "socks=-,TROUSER=Dress", "--json"]) == 0
    cm = json.loads(capsys.readouterr().out)["confusion_matrix"]
    assert sum(map(sum, cm)) == 2 and sum(cm[3]) == 1 and sum(cm[1]) == 0  # the trouser folder now counts as Dress
    assert main(["evaluate", str(run), "--data", str(labelled), "--class-map", "sock=-"]) == 2
    assert "names folders ['sock']" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--class-map", "socks=-"]) == 2
    assert "--class-map goes with --data" in capsys.readouterr().err

    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), str(photos / "a.jpg"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["label"] == good[0]["label"]
    assert main(["predict", str(run), str(photos / "a.jpg"), "--out", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.data
def test_label_issues_report(tmp_path, capsys, real_data_dir):
    out = tmp_path / "li"
    args = ["label-issues", "--model", "mlp", "--folds", "2", "--epochs", "1", "--train-limit", "3000", "--out", str(out), "--quiet"]
    assert main(args) == 0
    found = json.loads((out / "label_issues.json").read_text())
    assert found["folds"] == 2 and found["issues"]
    i = found["issues"][0]
    assert i["label"] != i["suggested"] and i["p_suggested"] > i["p_label"]
    assert "Likely label errors" in (out / "report.md").read_text() and (out / "figures" / "label_issues.png").exists()
    assert "out-of-fold accuracy" in capsys.readouterr().out
    assert main(args) == 2  # the finished folder is not overwritten
    capsys.readouterr()
    assert main(args[:-3] + ["--out", str(tmp_path / "li2"), "--extra-photos", str(tmp_path)]) == 2
    assert "leave out --extra-photos" in capsys.readouterr().err and not (tmp_path / "li2").exists()


def test_plain_predict_output_keeps_one_line_per_file_whatever_the_name(tmp_path, capsys):
    """A name with a newline or a tab is escaped in the plain listing (as --json and CSV escape it); an empty file
    reads as empty, as serve says it."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 200, 200)).save(folder / "two\nlines\tand tab.png")
    (folder / "empty.png").write_bytes(b"")
    golden_run = Path(__file__).parent / "golden" / "study" / "runs" / "mlp-s0"
    assert main(["predict", str(golden_run), str(folder)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and any(line.startswith(f"{folder}/two\\nlines\\tand tab.png\t") for line in lines), lines
    assert "skipped " in captured.err and "empty.png: the file is empty (0 bytes)" in captured.err
    assert any("empty.png\terror: the file is empty (0 bytes)" in line for line in lines)
