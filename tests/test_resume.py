"""Training that survives a kill: a checkpoint after every epoch, `train --resume` to the same weights, and the
run folder claimed by a lock so that a second training into it is refused before it trains."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import synthetic_bars
from PIL import Image

import fashionclf
from fashionclf.apps.cli import main
from fashionclf.core.io import to_json
from fashionclf.data.fashion_mnist import CLASSES, FashionMNIST
from fashionclf.engine import checkpoint as ckpt
from fashionclf.engine.runs import LOCK, META, METRICS, PREDICTIONS, WEIGHTS, RunError
from fashionclf.study.compare import compare
from fashionclf.training.callbacks import Callbacks
from fashionclf.training.loop import fit
from fashionclf.training.recipes import resolve_config
from fashionclf.training.supervised import train_and_save

TIMING = {"seconds", "train_seconds", "seconds_per_epoch", "infer_images_per_s", "precision_choice"}


def _dataset() -> FashionMNIST:
    x, y = synthetic_bars(30)
    return FashionMNIST(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], source="synthetic", classes=CLASSES)


def _cfg(**kw):
    """Every piece of loop state in use: dropout (torch's generator), augmentation and CutMix (the loop's generator),
    EMA, a per-step schedule with momentum cycling, Adam's moments, BatchNorm statistics. A narrow advanced_cnn
    (BatchNorm, dropout) keeps it to seconds."""
    base = dict(epochs=4, batch_size=32, schedule="onecycle", ema_decay=0.9, augment=True, aug_erase=0.5, aug_cutmix=0.5)
    base |= dict(early_stopping=0, precision="fp32", threads=1, model_kwargs={"widths": (8, 16), "hidden": 32})
    return resolve_config("advanced_cnn", None, **{**base, **kw})


class Stop(Exception):
    pass


def _stop_after(epoch) -> Callbacks:
    def on_epoch_end(row):
        if row["epoch"] == epoch:
            raise Stop

    return Callbacks.of(on_epoch_end)


def _history_csv(run_dir) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rows(history) -> str:
    """The history without its timings, as JSON (NaN, the validation loss without a validation split, equals itself)."""
    return json.dumps([{k: v for k, v in r.items() if k not in TIMING} for r in history])


CONFIGS = {  # name: (settings, images held out for validation)
    "adam+onecycle+ema+cutmix": ({}, 50),
    "no validation (the last weights are kept)": ({}, 0),
    "sgd+plateau": (dict(optimizer="sgd", lr=0.05, schedule="plateau", ema_decay=0.0, aug_cutmix=0.0, plateau_patience=1), 50),
    "cosine+early-stopping": (dict(schedule="cosine", epochs=6, early_stopping=1, lr=0.02), 50),
}


def _split(n_val):
    x, y = synthetic_bars(20)
    return x[:150], y[:150], x[150 : 150 + n_val], y[150 : 150 + n_val]


@pytest.mark.parametrize("name", CONFIGS)
def test_resumed_fit_equals_uninterrupted(tmp_path, name):
    """Killed after epoch 1 or 2, resumed: every weight and every epoch's losses as in one uninterrupted fit. The
    history after the kill shows the resumed epochs themselves were the same, not only the weights kept."""
    settings, n_val = CONFIGS[name]
    cfg, xy = _cfg(**settings), _split(n_val)
    whole = fit(cfg, *xy)
    for k in (1, 2):
        folder = tmp_path / f"after{k}"
        with pytest.raises(Stop):
            fit(cfg, *xy, callbacks=_stop_after(k), checkpoint=folder)
        assert ckpt.read_state(folder)["epoch"] == k
        resumed = fit(cfg, *xy, checkpoint=folder, resume=True)
        assert _same_weights(whole.model.state_dict(), resumed.model.state_dict()), (name, k)
        assert _rows(resumed.history) == _rows(whole.history) and resumed.best_epoch == whole.best_epoch
        assert sorted(p.name for p in folder.iterdir()) == [f"epoch-{len(whole.history):04d}.safetensors", ckpt.STATE]


@pytest.mark.parametrize("part", ["rng.generator", "rng.torch", "optimizer.", "ema.", "schedule"])
def test_each_part_of_the_checkpoint_matters(tmp_path, monkeypatch, part):
    """The test above can fail: a checkpoint that loses any one part resumes to other weights (no validation split,
    so the weights kept are the last epoch's, not a best-so-far from before the kill)."""
    cfg, xy = _cfg(), _split(0)
    whole = fit(cfg, *xy)
    with pytest.raises(Stop):
        fit(cfg, *xy, callbacks=_stop_after(2), checkpoint=tmp_path)
    real = ckpt.load

    def lossy(folder):
        state, tensors = real(folder)
        if part.startswith("rng."):
            tensors[part + ".0"] = torch.Generator().manual_seed(12345).get_state()
        elif part == "schedule":
            state["schedule"] = {**state["schedule"], "last_epoch": 0, "_step_count": 1}
        else:
            tensors.update({k: torch.zeros_like(v) for k, v in tensors.items() if k.startswith(part) and v.is_floating_point()})
        return state, tensors

    monkeypatch.setattr(ckpt, "load", lossy)
    resumed = fit(cfg, *xy, checkpoint=tmp_path, resume=True)
    assert not _same_weights(whole.model.state_dict(), resumed.model.state_dict())


def test_killed_run_resumes_from_python_to_the_same_run_folder(tmp_path):
    data, cfg = _dataset(), _cfg()
    whole = train_and_save(cfg, data, tmp_path / "whole")
    out = tmp_path / "run"
    with pytest.raises(Stop):
        train_and_save(cfg, data, out, callbacks=_stop_after(2))
    assert sorted(p.name for p in out.iterdir()) == [LOCK, ckpt.CHECKPOINT]
    with pytest.raises(RunError, match="unfinished training.*--resume"):  # not silently started again
        train_and_save(cfg, data, out)
    with pytest.raises(ckpt.CheckpointError, match="another configuration"):
        train_and_save(_cfg(lr=0.01), data, out, resume=True)
    other = FashionMNIST(data.train_x.flip(0), *[getattr(data, k) for k in ("train_y", "val_x", "val_y", "test_x", "test_y")], "x")
    with pytest.raises(ckpt.CheckpointError, match="other data"):
        train_and_save(cfg, other, out, resume=True)
    run = fashionclf.train(cfg, out, data, resume=True)
    whole = json.loads(to_json(whole))  # as metrics.json holds it
    assert {k: v for k, v in run.metrics.items() if k not in TIMING} == {k: v for k, v in whole.items() if k not in TIMING}
    a = safetensors.torch.load_file(str(tmp_path / "whole" / WEIGHTS))
    assert _same_weights(a, safetensors.torch.load_file(str(out / WEIGHTS)))
    assert _history_csv(out) == _history_csv(tmp_path / "whole") and len(_history_csv(out)) == 4
    # the finished folder is what a run folder always was: no checkpoint, no lock
    assert sorted(p.name for p in out.iterdir()) == sorted(["history.csv", META, METRICS, WEIGHTS, PREDICTIONS, "config.json", "README.md"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(RunError, match="holds a finished run: nothing to resume"):
        fashionclf.train(cfg, out, data, resume=True)


def test_overwrite_keeps_the_old_run_until_the_new_one_is_complete(tmp_path):
    data, out = _dataset(), tmp_path / "run"
    train_and_save(_cfg(epochs=1), data, out)
    old = (out / WEIGHTS).read_bytes()
    with pytest.raises(Stop):
        train_and_save(_cfg(), data, out, overwrite=True, callbacks=_stop_after(1))
    assert (out / WEIGHTS).read_bytes() == old and fashionclf.load_run(out).config.epochs == 1  # still the old run
    run = fashionclf.train(None, out, data, resume=True)
    assert run.config.epochs == 4 and not (out / ckpt.CHECKPOINT).exists() and (out / WEIGHTS).read_bytes() != old


def test_compare_resumes_a_run_killed_mid_training(tmp_path):
    data = _dataset()
    cfgs = [_cfg(epochs=3), _cfg(epochs=3, seed=1)]
    whole = compare(cfgs, data, tmp_path / "whole")
    seen = []

    def killed_at_the_fifth_epoch(row):  # the second run's epoch 2
        seen.append(row["epoch"])
        if len(seen) == 5:
            raise Stop

    with pytest.raises(Stop):
        compare(cfgs, data, tmp_path / "study", callbacks=Callbacks.of(killed_at_the_fifth_epoch))
    assert (tmp_path / "study" / "runs" / "advanced_cnn-s1" / ckpt.CHECKPOINT).is_dir()
    seen.clear()
    again = compare(cfgs, data, tmp_path / "study", callbacks=Callbacks.of(lambda row: seen.append(row["epoch"])))
    assert seen == [3]  # the first run reused, the second continued after its epoch 2
    keys = ("test_accuracy", "test_loss", "val_loss", "best_epoch", "epochs_run")
    assert [[r[k] for k in keys] for r in again["runs"]] == [[r[k] for k in keys] for r in whole["runs"]]


# --- the command line: a real kill, the lock, refusals -------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small image-folder dataset (4 classes x 40 RGB photos, trained at 16 px): fast, no download."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir()
        for i in range(40):
            img = rng.integers(0, 60, (24, 24, 3)).astype(np.uint8)
            img[:, 4 * c : 4 * c + 5] = 250
            Image.fromarray(img).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def _train_args(folder, out, epochs=30):
    return (
        f"train --data {folder} --image-size 16 --model mlp --epochs {epochs} --early-stopping 0 --precision fp32 --schedule onecycle "
        f"--ema-decay 0.9 --augment --aug-erase 0.5 --aug-cutmix 0.5 --threads 1 --quiet --out {out}"
    ).split()


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_run(tmp_path, folder, capsys):
    """A real `kill -9` of `fashionclf train` once its first checkpoint is on disk, then `train --resume`."""
    assert main(_train_args(folder, tmp_path / "whole")) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fashionclf", *_train_args(folder, out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / ckpt.CHECKPOINT / ckpt.STATE).exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = ckpt.read_state(out / ckpt.CHECKPOINT)["epoch"]
    assert 1 <= done < 30, done  # killed mid-training, not after it
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert "resuming mlp" in capsys.readouterr().err
    a, b = (safetensors.torch.load_file(str(d / WEIGHTS)) for d in (tmp_path / "whole", out))
    assert _same_weights(a, b)
    ma, mb = (json.loads((d / METRICS).read_text()) for d in (tmp_path / "whole", out))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    assert _history_csv(out) == _history_csv(tmp_path / "whole") and len(_history_csv(out)) == 30
    assert not (out / ckpt.CHECKPOINT).exists() and not (out / LOCK).exists()


def test_a_second_training_into_a_claimed_folder_is_refused_before_it_trains(tmp_path, folder, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process, holding the folder as a training does
        [sys.executable, "-c", f"import fcntl, os, sys, time; fd = os.open({str(out / LOCK)!r}, os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        assert main(_train_args(folder, out, epochs=3)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{out} is in use: another training is writing it" in err[0], err  # before loading data
        assert sorted(p.name for p in out.iterdir()) == [LOCK] and time.monotonic() - t0 < 60  # it trained nothing
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with open(out / LOCK) as f:  # the same in one process: flock conflicts between open files, not processes
        fcntl.flock(f, fcntl.LOCK_EX)
        assert main(_train_args(folder, out, epochs=3)) == 2
        assert "is in use" in capsys.readouterr().err
    assert main(_train_args(folder, out, epochs=2)) == 0  # once it is free, the folder trains
    assert not (out / LOCK).exists()


def test_a_folder_claimed_while_the_data_load_is_refused_with_no_training_line(tmp_path, folder, capsys, monkeypatch):
    """The race the early check cannot see: another training takes the folder while this one loads its data. The
    refusal is then the only line: "training ..." is printed once the folder is held, never before."""
    from fashionclf.apps.cli import options

    out, held = tmp_path / "run", []
    load = options.load_data

    def load_then_lose_the_folder(args, cfg):
        data = load(args, cfg)
        out.mkdir(exist_ok=True)
        f = open(out / LOCK, "a")  # noqa: SIM115  (held until the test ends, as another training would hold it)
        fcntl.flock(f, fcntl.LOCK_EX)
        held.append(f)
        return data

    monkeypatch.setattr(options, "load_data", load_then_lose_the_folder)
    assert main(_train_args(folder, out, epochs=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use" in err[0] and not any(line.startswith("training") for line in err), err
    held[0].close()


def test_resume_refusals_are_one_line(tmp_path, folder, capsys):
    out = tmp_path / "run"
    assert main(["train", "--resume", str(out)]) == 2
    assert "holds no checkpoint: nothing to resume" in capsys.readouterr().err
    assert main(_train_args(folder, out, epochs=2)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    assert "holds a finished run: nothing to resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "5", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "leave out --seed, --epochs" in err and len(err.strip().splitlines()) == 1
    # a folder left with a checkpoint is not trained into afresh by accident
    (out / ckpt.CHECKPOINT).mkdir()
    assert main(_train_args(folder, out, epochs=2)) == 2
    assert f"`fashionclf train --resume {out}`" in capsys.readouterr().err


def test_damaged_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    x, y = synthetic_bars(20)
    with pytest.raises(Stop):
        fit(_cfg(), x[:150], y[:150], x[150:], y[150:], callbacks=_stop_after(1), checkpoint=out / ckpt.CHECKPOINT)
    tensors = next((out / ckpt.CHECKPOINT).glob("epoch-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ckpt.CheckpointError, match="does not match .*state.json"):
        fit(_cfg(), x[:150], y[:150], x[150:], y[150:], checkpoint=out / ckpt.CHECKPOINT, resume=True)
    (out / ckpt.CHECKPOINT / ckpt.STATE).write_text("{")
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "state.json is not valid JSON" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    os.unlink(out / ckpt.CHECKPOINT / ckpt.STATE)
    assert main(["train", "--resume", str(out)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def _descendants(pid: int) -> list[int]:
    """Every process below pid (torchrun starts its ranks in sessions of their own: a group kill misses them)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@pytest.mark.slow
def test_torchrun_job_killed_and_resumed_gives_the_uninterrupted_run(tmp_path, folder):
    """Two CPU ranks (gloo): rank 0 writes the checkpoint with both ranks' generator states; after a SIGKILL of the
    launcher and both ranks, `torchrun ... train --resume` continues to the same weights and history."""
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "-m", "fashionclf"]
    args = _train_args(folder, "OUT", epochs=150)[:-2] + ["--batch-size", "32"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    job = subprocess.Popen([*torchrun, *args, "--out", str(out)], stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while not (out / ckpt.CHECKPOINT / ckpt.STATE).exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    for pid in [*_descendants(job.pid), job.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.wait()
    assert 1 <= ckpt.read_state(out / ckpt.CHECKPOINT)["epoch"] < 150
    done = subprocess.run([*torchrun, "train", "--resume", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0 and "resuming mlp" in done.stderr and "in 2 processes" in done.stderr, done.stderr[-3000:]
    a, b = (safetensors.torch.load_file(str(d / WEIGHTS)) for d in (tmp_path / "whole", out))
    assert _same_weights(a, b) and _history_csv(out) == _history_csv(tmp_path / "whole")
    assert json.loads((out / METRICS).read_text())["world_size"] == 2


def test_ctrl_c_names_the_command_that_continues(tmp_path, folder, capsys, monkeypatch):
    from fashionclf.apps.cli import options

    class InterruptedAfter(options.Progress):
        def on_epoch_end(self, row):
            if row["epoch"] == 2:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(options, "Progress", InterruptedAfter)
    assert main(_train_args(folder, out, epochs=3)) == 130
    assert f"interrupted; `fashionclf train --resume {out}` continues after the last finished epoch" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert fashionclf.load_run(out).metrics["epochs_run"] == 3
