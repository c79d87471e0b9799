import dataclasses

import numpy as np
import pytest
import torch

from fashionclf.core.config import DEFAULT_RECIPE, RECOMMENDED_MODEL
from fashionclf.engine.inference import evaluate
from fashionclf.training.loop import ema_step_decay, fit
from fashionclf.training.recipes import list_recipes, load_recipe, resolve_config


def _synthetic(n_per_class=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randint(0, 40, (len(y), 28, 28), generator=g, dtype=torch.uint8)
    for c in range(10):
        x[y == c, 4 + 2 * c : 6 + 2 * c, 4:24] = 255
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def test_resolve_defaults_and_overrides():
    cfg = resolve_config(None, None)  # the default follows the evidence on photos: the `photos` preset
    assert cfg == load_recipe(DEFAULT_RECIPE).config and cfg.model == "resnet" and cfg.aug.photo > 0
    cfg = resolve_config(RECOMMENDED_MODEL, None)  # the seed's Model 4, one flag away
    assert cfg.model == "advanced_cnn" and cfg.augment == load_recipe(RECOMMENDED_MODEL).config.augment is True
    cfg = resolve_config("mlp", None, epochs=3, lr=None, aug_rotation=5.0)
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.aug.rotation) == ("mlp", 3, load_recipe("mlp").config.lr, 5.0)


def test_resolve_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        resolve_config("mlp", "fast")
    with pytest.raises(ValueError, match="unknown config keys.*bogus"):
        resolve_config("mlp", None, bogus=1)
    with pytest.raises(ValueError, match="valid models"):
        resolve_config("nope", None)


@pytest.mark.parametrize("schedule", ["plateau", "onecycle", "cosine"])
def test_fit_learns_synthetic_task(schedule):
    x, y = _synthetic()
    cfg = resolve_config("tuned_cnn", None, epochs=4, batch_size=64, schedule=schedule, early_stopping=0, val_size=0)
    res = fit(cfg, x[:500], y[:500], x[500:], y[500:])
    assert len(res.history) == 4 and res.params > 0
    assert evaluate(res.model, x[500:], y[500:])["accuracy"] > 0.9


def test_early_stopping_restores_best_weights():
    x, y = _synthetic()
    # lr so high that validation loss gets worse after the first epoch; patience 1 stops at epoch 2.
    cfg = resolve_config("mlp", None, epochs=10, lr=5.0, optimizer="sgd", early_stopping=1, plateau_patience=0, precision="fp32")
    res = fit(cfg, x[:500], y[:500], x[500:], y[500:])
    best = min(range(len(res.history)), key=lambda i: res.history[i]["val_loss"])
    assert len(res.history) < 10 and res.best_epoch == best + 1
    final = evaluate(res.model, x[500:], y[500:])["loss"]
    assert final == pytest.approx(res.history[best]["val_loss"], rel=1e-4)


def test_same_seed_same_result_fp32():
    x, y = _synthetic(20)
    cfg = resolve_config("advanced_cnn", None, epochs=1, precision="fp32", batch_size=50)
    a = fit(cfg, x[:150], y[:150], x[150:], y[150:])
    b = fit(cfg, x[:150], y[:150], x[150:], y[150:])
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.slow
@pytest.mark.data
def test_short_real_training_beats_threshold(real_data):
    """One epoch of tuned_cnn on the 54k training split reaches at least 86% on the test set."""
    d = real_data
    cfg = resolve_config("tuned_cnn", None, epochs=1)
    res = fit(cfg, d.train_x, d.train_y, d.val_x, d.val_y)
    acc = evaluate(res.model, d.test_x, d.test_y)["accuracy"]
    assert acc >= 0.86, acc
    assert np.isfinite(res.history[0]["train_loss"])


def test_frozen_warmup_and_discriminative_lrs():
    x, y = _synthetic(4)
    cfg = resolve_config(
        "efficientnet_lite0", None, epochs=1, batch_size=20, lr=1e-3, freeze_epochs=1, body_lr_mult=0.1, model_kwargs={"pretrained": False}
    )
    torch.manual_seed(cfg.seed)
    from fashionclf.models import create_model, split_body_head
    from fashionclf.training.loop import make_optimizer

    groups = make_optimizer(cfg, create_model("efficientnet_lite0", pretrained=False)).param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(1e-4), 1e-3]

    res = fit(cfg, x[:30], y[:30], x[30:], y[30:])
    torch.manual_seed(cfg.seed)
    start = create_model("efficientnet_lite0", pretrained=False)
    body, head = split_body_head(res.model)
    body0, head0 = split_body_head(start)
    assert all(torch.equal(a, b) for a, b in zip(body, body0))  # frozen for the only epoch
    assert not all(torch.equal(a, b) for a, b in zip(head, head0))
    # frozen means frozen: the body's BatchNorm statistics stay as they were, not drift to this data's
    for (name, a), b in zip(res.model.state_dict().items(), start.state_dict().values()):
        if "running" in name and not name.startswith("net.classifier"):
            assert torch.equal(a, b), name


def test_tta_same_shape_valid_logits_and_no_loss_of_accuracy():
    from fashionclf.engine.inference import infer

    x, y = _synthetic()
    cfg = resolve_config("tuned_cnn", None, epochs=3, batch_size=64, val_size=0)
    model = fit(cfg, x[:500], y[:500], x[500:], y[500:]).model
    plain, tta = infer(model, x[500:], amp_dtype=None), infer(model, x[500:], amp_dtype=None, tta=True)
    assert tta.shape == plain.shape
    assert torch.allclose(tta.logsumexp(1), torch.zeros(len(tta)), atol=1e-5)  # log of a probability distribution
    acc = lambda logits: (logits.argmax(1) == y[500:]).float().mean().item()  # noqa: E731
    assert acc(tta) >= acc(plain) - 0.02  # the synthetic classes are mirror-symmetric: flipping must not hurt


def test_ema_weights_are_what_is_kept():
    x, y = _synthetic()
    base = dict(epochs=2, batch_size=64, val_size=0, precision="fp32", early_stopping=0)
    raw = fit(resolve_config("mlp", None, **base), x[:500], y[:500], x[500:], y[500:])
    ema = fit(resolve_config("mlp", None, ema_decay=0.9, **base), x[:500], y[:500], x[500:], y[500:])
    assert not torch.equal(raw.model[1].weight, ema.model[1].weight)
    assert evaluate(ema.model, x[500:], y[500:])["accuracy"] > 0.9


def test_ema_decay_is_per_128_images_at_any_batch_size():
    assert ema_step_decay(0.999, 128) == 0.999
    # four steps of 128 images or one of 512: the same weight left on the old average
    assert ema_step_decay(0.999, 512) == pytest.approx(0.999**4)
    assert ema_step_decay(0.999, 32) ** 4 == pytest.approx(0.999)
    assert ema_step_decay(0.0, 512) == 0.0


def test_best_cpu_preset_resolves_to_the_documented_recipe():
    """The README's best-cpu recipe, field by field; `train --model resnet` gets the same settings."""
    cfg = resolve_config(None, "best-cpu")
    assert cfg.model == "resnet"
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule) == (24, 128, "sgd", 0.1, 5e-4, "onecycle")
    assert (cfg.label_smoothing, cfg.ema_decay, cfg.tta, cfg.early_stopping) == (0.1, 0.999, True, 0)
    assert cfg.augment and (cfg.aug.shift, cfg.aug.hflip, cfg.aug.erase, cfg.aug.rotation, cfg.aug.zoom) == (0.1, True, 0.25, 0.0, 0.0)
    assert resolve_config("resnet", None) == cfg
    # flags override the preset, the preset's model can be swapped
    assert resolve_config(None, "best-cpu", epochs=3).epochs == 3
    assert resolve_config("tuned_cnn", "best-cpu").model == "tuned_cnn"


def test_transfer_preset_freezes_then_fine_tunes_with_a_slower_body():
    cfg = resolve_config(None, "transfer")
    assert cfg.model == "efficientnet_lite0" and cfg.freeze_epochs >= 1 and 0 < cfg.body_lr_mult < 1
    scratch = resolve_config("efficientnet_lite0_scratch", None)
    assert (scratch.freeze_epochs, scratch.body_lr_mult) == (0, 1.0)
    assert (scratch.epochs, scratch.lr, scratch.optimizer) == (cfg.epochs - 1, cfg.lr, cfg.optimizer)
    assert set(list_recipes()) >= {"best-cpu", "transfer", "photos", "robust"}


def test_photos_preset_is_best_cpu_with_photo_augmentation():
    cfg, base = resolve_config(None, "photos"), resolve_config(None, "best-cpu")
    assert (cfg.aug.rotation, cfg.aug.zoom, cfg.aug.photo) == (15.0, 0.15, 0.5)
    assert (cfg.aug.shift, cfg.aug.hflip, cfg.aug.erase) == (base.aug.shift, base.aug.hflip, base.aug.erase)
    assert dataclasses.replace(cfg, aug=base.aug) == base  # nothing else differs


def test_low_resolution_run_trains_and_reloads(tmp_path):
    from fashionclf.engine.inference import infer
    from fashionclf.engine.runs import load_run, save_run

    x, y = _synthetic()
    cfg = resolve_config("tuned_cnn", None, epochs=2, batch_size=64, val_size=0, resolution=14, precision="fp32")
    res = fit(cfg, x[:500], y[:500], x[500:], y[500:])
    save_run(tmp_path / "r", res.model, cfg, {"test_accuracy": 0.5}, res.history, [str(i) for i in range(10)], {})
    run = load_run(tmp_path / "r")
    assert run.config.resolution == 14
    assert torch.allclose(infer(run.model, x[500:], amp_dtype=None), infer(res.model, x[500:], amp_dtype=None), atol=1e-5)


def test_keep_freed_memory_applies_on_glibc():
    import platform

    from fashionclf.engine.device import keep_freed_memory

    applied = keep_freed_memory()
    # glibc takes the settings (older versions through the 32 MiB fallback); elsewhere nothing is touched
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_cutmix_mixes_the_training_targets():
    # with every batch CutMixed the targets are soft, so the training loss stays well above the plain run's
    x, y = _synthetic()
    plain = dict(epochs=3, batch_size=50, early_stopping=0, augment=True, aug_rotation=0.0, aug_zoom=0.0, aug_shift=0.0, aug_hflip=False)
    losses = {}
    for p in (0.0, 1.0):
        res = fit(resolve_config("mlp", None, **plain, aug_cutmix=p), x[:500], y[:500], x[500:], y[500:])
        losses[p] = res.history[-1]["train_loss"]
    assert losses[1.0] > losses[0.0] + 0.2, losses


def test_robust_preset_is_photos_with_the_three_weaknesses_taught_and_more_epochs():
    cfg, base = resolve_config(None, "robust"), resolve_config(None, "photos")
    assert (cfg.aug.rotation, cfg.aug.vflip, cfg.aug.levels, cfg.epochs) == (30.0, 0.25, 0.5, 40)
    assert dataclasses.replace(cfg.aug, rotation=base.aug.rotation, vflip=0.0, levels=0.0) == base.aug
    assert dataclasses.replace(cfg, aug=base.aug, epochs=base.epochs) == base  # nothing else differs


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--batch-size", "0"], "batch_size = 0: expected a value in [2, 65536]"),
        (["--epochs", "0"], "epochs = 0: expected a value in [1, 10000]"),
        (["--train-limit", "-5"], "--train-limit -5: expected a positive number of images"),
        (["--train-limit", "0"], "--train-limit 0: expected a positive number of images"),
        (["--lr", "nan"], "lr = nan: expected a finite number"),
    ],
)
def test_bad_training_numbers_are_one_line_before_any_work(tmp_path, capsys, flags, says):
    """Issue 19: --batch-size 0 was a ZeroDivisionError, --epochs 0 torch's own message, --train-limit -5 trained on
    53,995 images. Each is refused by the real CLI with one line (exit 2), and nothing is written."""
    from fashionclf.apps.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--out", str(out), "--no-download", *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
