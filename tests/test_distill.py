"""Distillation (issue 20 item 3): `train --data LABELLED --unlabelled FOLDER --teacher RUN ...` trains a student on the
labelled split and the finished teachers' averaged soft labels on the unlabelled photos."""

import copy
import json

import numpy as np
import pytest
import torch
from helpers import make_class_folder, unlabelled_folder

from fashionclf.apps.cli import main
from fashionclf.core.config import TrainConfig, replace
from fashionclf.data.folders import load_image_folder
from fashionclf.data.images import find_images, load_rgb
from fashionclf.engine.runs import load_run
from fashionclf.infer.predict import convert_rgb, predict_converted, predict_scored
from fashionclf.models import build_model
from fashionclf.training import distill
from fashionclf.training.base import Job
from fashionclf.training.loop import train_one_epoch
from fashionclf.training.selftrain import STUDENT_NOISE
from fashionclf.training.trainer import trainer_for

BASE = ["--model", "mlp", "--epochs", "6", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two finished runs on one labelled folder: an mlp at 32 px and one at 48 px (they read photos at different sizes)."""
    root = tmp_path_factory.mktemp("distill")
    labelled = make_class_folder(root / "labelled", per_class=30)
    runs = []
    for side, seed in (("32", "0"), ("48", "1")):
        out = root / f"t{side}"
        assert main(["train", "--data", str(labelled), "--image-size", side, "--seed", seed, "--out", str(out), *BASE]) == 0
        runs.append(out)
    return labelled, runs, unlabelled_folder(root / "new")


def test_student_learns_from_two_teachers_soft_labels(tmp_path, teachers, capsys):
    labelled, (t32, t48), unlabelled = teachers
    out = tmp_path / "student"
    args = ["train", "--data", str(labelled), "--image-size", "32", "--unlabelled", str(unlabelled)]
    assert main(args + ["--teacher", str(t32), "--teacher", str(t48), "--out", str(out), *BASE]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    ds = meta["distillation"]
    assert ds["considered"] == 17 and ds["unreadable"] == 1 and ds["kept"] + ds["unknown"] + 1 == 17
    assert ds["kept"] >= 8 and sum(ds["per_class"].values()) == ds["kept"]
    assert [t["path"] for t in ds["teachers"]] == [str(t32.absolute()), str(t48.absolute())]
    assert all(t["same_data"] and t["model"] == "mlp" for t in ds["teachers"]) and ds["noise"] == STUDENT_NOISE
    assert f"soft labels on {ds['kept']} of 17 photos" in printed
    t_meta = json.loads((t32 / "meta.json").read_text())
    assert meta["data"]["train"] == t_meta["data"]["train"] + ds["kept"]  # its own labelled split plus the kept photos
    assert (meta["data"]["val"], meta["data"]["test"]) == (t_meta["data"]["val"], t_meta["data"]["test"])
    assert meta["config"]["augment"] and meta["config"]["aug"]["cutmix"] >= STUDENT_NOISE["cutmix"]
    assert "self_training" not in meta and not (tmp_path / "student-teacher").exists()  # no teacher trained here


def test_soft_labels_are_the_teachers_probabilities_averaged(teachers):
    labelled, (t32, t48), unlabelled = teachers
    runs = [load_run(t32), load_run(t48)]
    paths = find_images([unlabelled])
    data, _ = load_image_folder(labelled, image_size=32)
    x, probs, counts = distill.soft_labels(runs, paths, distill.student_converter(data), batch_size=5)
    good = [p for p in paths if not p.name.startswith("broken")]
    images = [[convert_rgb(load_rgb(p), "grabcut", r) for r in runs] for p in good]
    each = [predict_scored(r, np.stack([im[i] for im in images]))[0] for i, r in enumerate(runs)]
    # what `predict RUN --with RUN` calls "none of these" is left out
    kept = [i for i, row in enumerate(predict_converted(runs, images)) if not row.get("unknown")]
    assert counts["unreadable"] == 1 and counts["kept"] == len(kept) and counts["unknown"] == len(good) - len(kept)
    assert x.shape == (len(kept), 3, 32, 32) and x.dtype == torch.uint8
    torch.testing.assert_close(probs, ((each[0] + each[1]) / 2)[kept])
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    # each teacher read the photo at its own size, the student copy is at the student's
    assert x[0].numpy().tobytes() == distill.student_converter(data)(load_rgb(good[kept[0]])).tobytes()


def test_teacher_classes_are_put_in_the_students_order(tmp_path, monkeypatch):
    """A student whose three classes are listed in a rotated order gets each teacher probability in its own column
    (a rotation, not a swap: a swap is its own inverse and would pass with the mapping reversed)."""
    labelled = make_class_folder(tmp_path / "three", per_class=20, classes=("a", "b", "c"))
    teacher = tmp_path / "t"
    assert main(["train", "--data", str(labelled), "--image-size", "32", "--out", str(teacher), *BASE]) == 0
    unlabelled = unlabelled_folder(tmp_path / "new", broken=0)
    data, _ = load_image_folder(labelled, image_size=32)
    rotated = copy.copy(data)
    rotated.classes = ("b", "c", "a")  # data class j is the teacher's class order[j] = (1, 2, 0)[j]
    rotated.train_y = (data.train_y + 2) % 3
    seen = {}
    monkeypatch.setattr(distill.Supervised, "train", lambda self, cfg, d, job: seen.update(data=d, meta=job.meta) or {})
    distill.Distillation(unlabelled, [teacher]).train(TrainConfig(model="mlp"), rotated, Job(tmp_path / "s"))
    y, n = seen["data"].train_y, len(data.train_y)
    run = load_run(teacher)
    images = [[convert_rgb(load_rgb(q), "grabcut", run)] for q in find_images([unlabelled])]
    kept = [i for i, row in enumerate(predict_converted([run], images)) if not row.get("unknown")]
    assert y.dtype == torch.float32 and y.shape == (n + len(kept), 3) and kept
    assert torch.equal(y[:n], torch.nn.functional.one_hot(rotated.train_y, 3).float())  # the labelled split: its own labels
    p = predict_scored(run, np.stack([im[0] for im in images]))[0][kept]
    torch.testing.assert_close(y[n:], p[:, [1, 2, 0]])
    # the same files with the same split: same_data; another split of them: not
    assert seen["meta"]["distillation"]["teachers"][0]["same_data"] is True
    resplit, _ = load_image_folder(labelled, image_size=32, split_seed=1)
    distill.Distillation(unlabelled, [teacher]).train(TrainConfig(model="mlp"), resplit, Job(tmp_path / "s2"))
    assert seen["meta"]["distillation"]["teachers"][0]["same_data"] is False


def test_one_process_only(monkeypatch):
    from fashionclf.engine import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="without torchrun"):
        trainer_for("photos/", ["runs/big"])


def test_soft_targets_train_as_hard_labels_when_one_hot():
    """The loop takes (N, C) probabilities as cross_entropy does: one-hot rows give the hard labels' weights."""
    x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    cfg = replace(TrainConfig(model="mlp"), batch_size=16, augment=True, aug_cutmix=0.5, label_smoothing=0.1)
    weights, stats = [], []
    for target in (y, torch.nn.functional.one_hot(y, 10).float()):
        torch.manual_seed(0)
        model = build_model(cfg, 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        stats.append(train_one_epoch(model, opt, x, target, cfg, torch.Generator().manual_seed(1), torch.device("cpu"), None))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1])
    assert stats[0]["train_accuracy"] == stats[1]["train_accuracy"]
    assert stats[0]["train_loss"] == pytest.approx(stats[1]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("case", ["no-unlabelled", "missing-teacher", "other-classes"])
def test_clear_errors(tmp_path, teachers, capsys, case):
    labelled, (t32, _), unlabelled = teachers
    other = make_class_folder(tmp_path / "other", per_class=4, classes=("hat", "shoe"))
    data = other if case == "other-classes" else labelled
    args = ["train", "--data", str(data), "--image-size", "32", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "s")]
    teacher = str(tmp_path / "nope") if case == "missing-teacher" else str(t32)
    more = [] if case == "no-unlabelled" else ["--unlabelled", str(unlabelled)]
    assert main(args + more + ["--teacher", teacher, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = {
        "no-unlabelled": "--teacher needs --unlabelled",
        "missing-teacher": "nope",
        "other-classes": "every teacher must know the data's classes",
    }[case]
    assert expected in err
    assert not (tmp_path / "s" / "meta.json").exists()
