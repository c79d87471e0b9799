"""Data-parallel training: shards, and a real 2-rank torchrun job on the CPU (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashionclf.apps.cli import main
from fashionclf.engine import distributed
from fashionclf.engine.runs import load_run


def test_single_process_is_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)


def test_shards_are_disjoint_equal_and_change_every_epoch(monkeypatch):
    n, ws = 103, 4
    monkeypatch.setattr(distributed, "world_size", lambda: ws)
    shards = {}
    for r in range(ws):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards[r] = distributed.shard(n, seed=0, epoch=1)
    assert {len(s) for s in shards.values()} == {n // ws}  # the same number of steps on every rank
    together = torch.cat(list(shards.values()))
    assert len(together.unique()) == len(together) == (n // ws) * ws
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert not torch.equal(distributed.shard(n, 0, 2), shards[0])  # reshuffled per epoch
    assert torch.equal(distributed.shard(n, 0, 1), shards[0])  # and the same on a rerun


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_one_run(tmp_path, real_data_dir):
    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["train", "--model", "tuned_cnn", "--epochs", "2", "--train-limit", "12000", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "fashionclf", *args, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 2 processes" in done.stderr
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    ddp, single = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("ddp", "single"))
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    # Same global batch and schedule, a different shuffle and augmentation: close, not identical.
    assert abs(ddp["test_accuracy"] - single["test_accuracy"]) < 0.02, (ddp["test_accuracy"], single["test_accuracy"])
    assert len((tmp_path / "ddp" / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs, written once
    run = load_run(tmp_path / "ddp")  # a plain single process loads what two ranks trained
    assert run.metrics["test_accuracy"] == ddp["test_accuracy"]
    assert not list(tmp_path.glob(".ddp.tmp-*"))  # no second writer left debris


def test_other_commands_refuse_to_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compare", "--models", "mlp", "--out", "/nonexistent"]) == 2
    assert "only `train` runs under torchrun" in capsys.readouterr().err
