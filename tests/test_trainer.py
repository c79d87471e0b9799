"""The one Trainer interface (training/base.py) and which trainer a user's arguments pick (training/trainer.py)."""

from pathlib import Path

import pytest

from fashionclf.evaluation.calibrate import Promise
from fashionclf.training.base import Job, Trainer
from fashionclf.training.callbacks import Callbacks
from fashionclf.training.distill import Distillation
from fashionclf.training.selftrain import SelfTraining
from fashionclf.training.supervised import Supervised
from fashionclf.training.trainer import trainer_for


def test_the_arguments_pick_the_trainer():
    assert type(trainer_for()) is Supervised
    st = trainer_for("photos/")
    assert type(st) is SelfTraining and st.unlabelled == "photos/"
    d = trainer_for("photos/", ["runs/a", "runs/b"])
    assert type(d) is Distillation and d.teachers == ["runs/a", "runs/b"]
    with pytest.raises(ValueError, match="--teacher needs --unlabelled"):
        trainer_for(None, ["runs/a"])


@pytest.mark.parametrize("cls", [Supervised, SelfTraining, Distillation])
def test_every_trainer_is_one_interface(cls):
    assert (
        issubclass(cls, Trainer)
        and cls.kind
        and list(__import__("inspect").signature(cls.train).parameters) == ["self", "cfg", "data", "job"]
    )


def test_a_job_changes_only_what_it_is_told():
    cb = Callbacks()
    job = Job("runs/x", overwrite=True, callbacks=cb, unknown_share=0.9, promise=Promise(0.98, 0.1), meta={"a": 1})
    other = job.but(out="runs/x-teacher")
    assert other.out == Path("runs/x-teacher") and isinstance(other.out, Path)
    assert (other.overwrite, other.callbacks, other.unknown_share, other.promise, other.meta) == (
        True,
        cb,
        0.9,
        Promise(0.98, 0.1),
        {"a": 1},
    )
    assert job.out == Path("runs/x")  # unchanged


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_a_job_refuses_an_impossible_known_share(share):
    with pytest.raises(ValueError, match="expected a share in"):
        Job("runs/x", unknown_share=share)
