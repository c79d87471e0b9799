"""engine/callbacks.py: one object that a training tells as it goes, through fit, train and a study."""

from __future__ import annotations

import torch
from conftest import synthetic_bars

import fashionclf
from fashionclf.training.callbacks import Callbacks
from fashionclf.training.loop import fit


class Recorder(Callbacks):
    def __init__(self):
        self.events = []

    def on_run_start(self, cfg, run_dir):
        self.events.append(("run", cfg.seed))

    def on_epoch_start(self, epoch, n_batches):
        self.events.append(("start", epoch, n_batches))

    def on_batch_end(self, batch, loss, accuracy):
        assert isinstance(loss, float) and 0 <= accuracy <= 1
        self.events.append(("batch", batch))

    def on_epoch_end(self, row):
        self.events.append(("end", row["epoch"]))


def _xy():
    x, y = synthetic_bars(20)
    return x[:160], y[:160], x[160:], y[160:]


def test_fit_calls_every_hook_in_order():
    rec = Recorder()
    fit(fashionclf.recipe("mlp", epochs=2, batch_size=64, precision="fp32"), *_xy(), callbacks=rec)
    batches = [("batch", 0), ("batch", 1), ("batch", 2)]  # 160 images at 64: 3 steps (the last one short)
    assert rec.events == [("start", 1, 3), *batches, ("end", 1), ("start", 2, 3), *batches, ("end", 2)]


def test_plain_functions_and_no_per_step_calls_unless_asked():
    rows = []
    cb = Callbacks.of(on_epoch_end=rows.append)
    assert not cb.wants_batches and Callbacks.of(on_batch_end=print).wants_batches and Recorder().wants_batches
    fit(fashionclf.recipe("mlp", epochs=2, batch_size=64, precision="fp32"), *_xy(), callbacks=cb)
    assert [r["epoch"] for r in rows] == [1, 2] and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)


def test_a_study_tells_each_run_it_trains(tmp_path):
    from fashionclf.data.fashion_mnist import FashionMNIST

    x, y = synthetic_bars(20)
    data = FashionMNIST(x[:120], y[:120], x[120:160], y[120:160], x[160:], y[160:], "bars", {}, tuple("0123456789"), 0)
    cfgs = [fashionclf.recipe("mlp", epochs=1, batch_size=64, precision="fp32", seed=s) for s in (0, 1)]
    rec = Recorder()
    fashionclf.compare(cfgs, data, tmp_path / "study", robustness=0, callbacks=rec)
    assert [e for e in rec.events if e[0] in ("run", "end")] == [("run", 0), ("end", 1), ("run", 1), ("end", 1)]
    again = Recorder()
    fashionclf.compare(cfgs, data, tmp_path / "study", robustness=0, callbacks=again)
    assert again.events == []  # finished runs are reused: nothing trains, nothing is told
