"""Self-training (issue 20 item 2): `train --data LABELLED --unlabelled FOLDER` trains a teacher, keeps the unlabelled
photos its review rule would label with no person, and trains the student on both with stronger augmentation."""

import json
import os

import numpy as np
import pytest
from helpers import make_class_folder, unlabelled_folder
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.training.selftrain import STUDENT_NOISE, student_config, teacher_folder


def _train(tmp_path, *extra):
    labelled = make_class_folder(tmp_path / "labelled", per_class=30)
    unlabelled = unlabelled_folder(tmp_path / "new")
    out = tmp_path / "student"
    args = ["train", "--data", str(labelled), "--image-size", "32", "--model", "mlp", "--epochs", "8", "--batch-size", "16"]
    # a promise the teacher's few validation photos can make (4 right ones at the least), so its rule labels some
    args += ["--target-precision", "0.7", "--delta", "0.3"]
    return main(args + ["--unlabelled", str(unlabelled), "--out", str(out), "--quiet", *extra]), out, unlabelled


def test_teacher_pseudo_labels_and_student(tmp_path, capsys):
    code, out, unlabelled = _train(tmp_path)
    assert code == 0
    printed = capsys.readouterr().out
    teacher = teacher_folder(out)
    assert teacher.name == "student-teacher" and (teacher / "meta.json").exists()
    st = json.loads((out / "meta.json").read_text())["self_training"]
    assert st["considered"] == 17 and st["unreadable"] == 1
    assert st["kept"] + st["review"] + st["unknown"] + st["unreadable"] == st["considered"]
    assert st["kept"] >= 8 and sum(st["per_class"].values()) == st["kept"] and set(st["per_class"]) <= {"pants", "shirt"}
    assert st["teacher"] == str(teacher.absolute()) and st["noise"] == STUDENT_NOISE
    assert f"{st['kept']} of 17 kept" in printed
    # the student trained on the labelled training split plus the kept photos; validation and test are the teacher's
    t_meta, s_meta = (json.loads((d / "meta.json").read_text()) for d in (teacher, out))
    assert s_meta["data"]["train"] == t_meta["data"]["train"] + st["kept"]
    assert (s_meta["data"]["val"], s_meta["data"]["test"]) == (t_meta["data"]["val"], t_meta["data"]["test"])
    aug = s_meta["config"]["aug"]
    assert s_meta["config"]["augment"] and aug["erase"] >= 0.25 and aug["cutmix"] >= 0.5
    assert not t_meta["config"]["augment"] and "self_training" not in t_meta


def test_a_finished_teacher_is_reused(tmp_path):
    code, out, unlabelled = _train(tmp_path)
    assert code == 0
    stamp = os.stat(teacher_folder(out) / "meta.json").st_mtime_ns
    import shutil

    shutil.rmtree(out)  # the student is trained again; the teacher is not
    code, out, _ = _train(tmp_path)
    assert code == 0 and os.stat(teacher_folder(out) / "meta.json").st_mtime_ns == stamp


def test_a_28x28_teacher_takes_photos_as_predict_converts_them(tmp_path, capsys, real_data_dir):
    photos = unlabelled_folder(tmp_path / "new", n=6, broken=0)
    out = tmp_path / "s"
    args = ["train", "--data-dir", str(real_data_dir), "--model", "mlp", "--epochs", "1", "--train-limit", "2000", "--no-download"]
    assert main(args + ["--unlabelled", str(photos), "--out", str(out), "--quiet"]) == 0
    st = json.loads((out / "meta.json").read_text())["self_training"]
    assert st["considered"] == 6 and st["kept"] + st["review"] + st["unknown"] == 6


def test_student_noise_raises_but_never_lowers():
    from fashionclf.training.recipes import resolve_config

    cfg = resolve_config("mlp", None, aug_erase=0.5, aug_cutmix=0.0)
    s = student_config(cfg)
    assert s.augment and s.aug.erase == 0.5 and s.aug.cutmix == STUDENT_NOISE["cutmix"]
    assert s.model == cfg.model and s.epochs == cfg.epochs and s.seed == cfg.seed


@pytest.mark.parametrize("case", ["empty", "missing", "resume"])
def test_clear_errors(tmp_path, capsys, case):
    labelled = make_class_folder(tmp_path / "labelled", per_class=4)
    (tmp_path / "empty").mkdir()
    target = {"empty": tmp_path / "empty", "missing": tmp_path / "nope", "resume": tmp_path / "empty"}[case]
    args = ["train", "--data", str(labelled), "--image-size", "32", "--model", "mlp", "--epochs", "1", "--unlabelled", str(target)]
    if case == "resume":
        args = ["train", "--resume", str(tmp_path / "run"), "--unlabelled", str(target)]
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(target / "a.png")
    assert main(args + ["--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    if case == "resume":
        assert "resume" in err
    else:
        assert "no images found there" in err and str(target) in err
    assert "Traceback" not in err
