"""The study's plan (epochs and estimated time per run, from the measured step cost) and its clock."""

import types

import pytest
import torch

from fashionclf.study import plan
from fashionclf.training.recipes import resolve_config


def _run(model, seed=0, epochs=4, epoch=10.0, after=5.0, reused=False):
    return plan.PlannedRun(model, seed, epochs, epoch, after, reused)


def test_quick_takes_the_table_and_never_adds_epochs():
    configs = [resolve_config(m, None) for m in ("mlp", "simple_cnn", "tuned_cnn", "advanced_cnn")]
    got = plan.quick(configs)
    assert [c.epochs for c in got] == [min(c.epochs, plan.QUICK[c.model]["epochs"]) for c in configs]
    assert all(q.epochs <= c.epochs for q, c in zip(got, configs)) and any(q.epochs < c.epochs for q, c in zip(got, configs))
    for q, c in zip(got, configs):  # nothing else changes but what the table names
        assert {k for k, v in vars(q).items() if vars(c)[k] != v} <= set(plan.QUICK[c.model])
    short = resolve_config("advanced_cnn", None, epochs=1)
    assert plan.quick([short])[0].epochs == 1
    assert plan.quick([resolve_config("resnet", None)])[0] == resolve_config("resnet", None)


def test_clock_counts_epochs_at_the_estimate_and_rescales_what_is_left():
    now = [0.0]
    runs = [_run("mlp"), _run("mlp", seed=1, reused=True), _run("tuned_cnn", epoch=20.0, after=10.0)]
    clock = plan.StudyClock(runs, clock=lambda: now[0])
    assert clock.total == 45 + 90 and clock.remaining() == 135  # nothing done: the plan as it stands
    clock.run_started("mlp", 0)
    for _ in range(2):
        now[0] += 20.0  # twice as slow as estimated
        clock.epoch_done()
    # done: 20 s of estimate in 40 s; left: 2 mlp epochs + its after + all of tuned_cnn = 25 + 90, at x2
    assert clock.remaining() == pytest.approx((25 + 90) * 2)
    clock.run_started("tuned_cnn", 0)  # mlp stopped early after 2 epochs: its after counts as done, its 2 epochs vanish
    assert clock.remaining() == pytest.approx(90 * 40 / 25)
    assert clock.elapsed() == 40.0
    assert plan.clock_text(3725) == "1:02:05" and plan.clock_text(65.2) == "1:06" and plan.clock_text(-3) == "0:00"


def test_an_unplanned_run_moves_nothing():
    clock = plan.StudyClock([_run("mlp")], clock=lambda: 0.0)
    clock.run_started("resnet", 0)
    clock.epoch_done()
    assert clock.remaining() == 45


def test_estimate_measures_each_model_once_and_skips_reused_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(plan, "image_seconds", lambda cfg, x: calls.append(cfg.model) or 0.001)  # 1 ms an image
    data = types.SimpleNamespace(train_y=torch.zeros(6000), val_y=torch.zeros(600), test_y=torch.zeros(1000), train_x=None)
    configs = [resolve_config("mlp", None, seed=s, epochs=3) for s in (0, 1)] + [resolve_config("simple_cnn", None, epochs=2)]
    got = plan.estimate(configs, data, robustness_images=100, reused=lambda c: c.seed == 1)
    assert calls == ["mlp", "simple_cnn"]
    epoch = 6.0 + 0.6 * plan.FORWARD_SHARE
    after = (1000 + 1200 + plan.CORRUPTIONS * 100) * 0.001 * plan.FORWARD_SHARE
    assert got[0].epoch_seconds == pytest.approx(epoch) and got[0].after_seconds == pytest.approx(after)
    assert got[0].seconds == pytest.approx(3 * epoch + after) and got[1].reused and got[1].seconds == 0
    assert got[2].seconds == pytest.approx(2 * epoch + after)


def test_image_seconds_times_a_real_step(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHIONCLF_CACHE", str(tmp_path))
    x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    for precision in ("fp32", "auto"):  # forced: timed here; auto: the measurement training makes (and caches)
        s = plan.image_seconds(resolve_config("mlp", None, precision=precision), x)
        assert 0 < s < 5 / 64


@pytest.mark.data
def test_quick_compare_prints_its_plan_and_one_study_line_and_the_report_says_so(tmp_path, capsys, real_data_dir):
    import json

    from fashionclf.apps.cli import main

    out = tmp_path / "study"
    args = [
        "compare",
        "--quick",
        "--models",
        "mlp,simple_cnn",
        "--train-limit",
        "600",
        "--val-size",
        "300",
        "--robustness",
        "0",
        "--test-limit",
        "1000",
    ]
    args += ["--out", str(out), "--data-dir", str(real_data_dir)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "plan (times estimated" in err and "in all about" in err
    assert f"simple_cnn     seed 0    {plan.QUICK['simple_cnn']['epochs']} epochs  about" in err
    studied = [line for line in err.splitlines() if line.startswith("study: ")]
    assert len(studied) == 10 + plan.QUICK["simple_cnn"]["epochs"] and "elapsed, about" in studied[-1]  # one per epoch
    results = json.loads((out / "results.json").read_text())
    assert results["study"] == {
        "kind": "quick",
        "epochs": {"mlp": 10, "simple_cnn": plan.QUICK["simple_cnn"]["epochs"]},
        "recipe_epochs": {"mlp": 10, "simple_cnn": 10},
        "changed": {},
    }
    assert [r["epochs_run"] for r in results["runs"]] == [10, plan.QUICK["simple_cnn"]["epochs"]]
    assert "This is the quick seed study" in (out / "report.md").read_text()
    assert main(args) == 0  # again: both runs are reused, and the plan says so
    assert capsys.readouterr().err.count("finished before: reused") == 2
