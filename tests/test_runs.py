import json

import pytest
import torch

from fashionclf.data.fashion_mnist import CLASSES
from fashionclf.engine.inference import infer
from fashionclf.engine.runs import META, WEIGHTS, RunError, load_run, save_run
from fashionclf.models import create_model, list_models
from fashionclf.training.recipes import resolve_config


def _save(path, **kw):
    torch.manual_seed(0)
    cfg = resolve_config("tuned_cnn", None, epochs=1)
    model = create_model("tuned_cnn").eval()
    save_run(path, model, cfg, {"test_accuracy": 0.5}, [{"epoch": 1, "val_loss": 1.0}], CLASSES, {"source": "synthetic"}, **kw)
    return model


@pytest.mark.parametrize("name", list_models())
def test_every_model_round_trips(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():  # move BatchNorm statistics off their defaults so a reload that ignores them shows
        model.train()(torch.randn(8, 1, 28, 28))
    model.eval()
    save_run(tmp_path / "run", model, resolve_config(name, None), {}, [], CLASSES, {})
    run = load_run(tmp_path / "run")
    model.to(memory_format=torch.channels_last)  # as load_run returns it (trained that way): same kernels, same bits
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    assert torch.equal(infer(model, x, amp_dtype=None), infer(run.model, x, amp_dtype=None))


def test_round_trip_same_predictions(tmp_path):
    model = _save(tmp_path / "run")
    run = load_run(tmp_path / "run")
    model.to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    assert torch.equal(infer(model, x, amp_dtype=None), infer(run.model, x, amp_dtype=None))
    meta = json.loads((tmp_path / "run" / META).read_text())
    assert meta["model"] == "tuned_cnn" and meta["classes"] == list(CLASSES)
    assert meta["config"]["epochs"] == 1 and "torch" in meta["versions"] and "mean" in meta["normalization"]
    assert run.config.epochs == 1
    assert (tmp_path / "run" / "history.csv").read_text().startswith("epoch,val_loss")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_existing_run_not_overwritten(tmp_path):
    _save(tmp_path / "run")
    before = (tmp_path / "run" / WEIGHTS).read_bytes()
    with pytest.raises(RunError, match="already holds files.*--overwrite"):
        _save(tmp_path / "run")
    assert (tmp_path / "run" / WEIGHTS).read_bytes() == before
    _save(tmp_path / "run", overwrite=True)
    assert load_run(tmp_path / "run").meta["model"] == "tuned_cnn"


def test_weights_are_safetensors_not_pickle(tmp_path):
    _save(tmp_path / "run")
    head = (tmp_path / "run" / WEIGHTS).read_bytes()[:16]
    assert not head.startswith(b"PK") and not head.startswith(b"\x80")  # neither zip nor pickle


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda p: (p / META).unlink(), "meta.json is missing"),
        (lambda p: (p / META).write_text("{"), "not valid JSON"),
        (lambda p: (p / META).write_text('{"model": "nope", "classes": ["a", "b"]}'), "unknown model 'nope'"),
        (lambda p: (p / WEIGHTS).unlink(), "model.safetensors is missing"),
        (lambda p: (p / WEIGHTS).write_bytes(b"garbage"), "not a valid safetensors"),
    ],
)
def test_damaged_runs_are_clear(tmp_path, damage, match):
    _save(tmp_path / "run")
    damage(tmp_path / "run")
    with pytest.raises(RunError, match=match):
        load_run(tmp_path / "run")


def test_weights_of_another_model(tmp_path):
    _save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / META).read_text())
    meta["model"] = "mlp"
    (tmp_path / "run" / META).write_text(json.dumps(meta))
    with pytest.raises(RunError, match="model_kwargs.dropout: mlp takes no such argument"):
        load_run(tmp_path / "run")
    meta["model_kwargs"] = {"in_chans": 1, "hidden": 128, "image_size": 28}  # mlp's own arguments: now the weights are wrong
    (tmp_path / "run" / META).write_text(json.dumps(meta))
    with pytest.raises(RunError, match="does not fit model 'mlp'"):
        load_run(tmp_path / "run")


def test_not_a_folder(tmp_path):
    with pytest.raises(RunError, match="not a folder"):
        load_run(tmp_path / "missing")


def test_every_file_has_the_permissions_open_would_give(tmp_path):
    """safetensors creates its files 0600; a run folder's files are all 0666 & ~umask (readable by another account)."""
    import os

    from fashionclf.core.io import UMASK

    _save(tmp_path / "run")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert WEIGHTS in modes and modes == dict.fromkeys(modes, 0o666 & ~UMASK), modes
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~UMASK
    assert os.access(tmp_path / "run" / WEIGHTS, os.R_OK)


def test_weights_that_are_not_numbers_are_refused(tmp_path):
    import safetensors.torch

    model = _save(tmp_path / "run")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    safetensors.torch.save_file(state, str(tmp_path / "run" / WEIGHTS))
    with pytest.raises(RunError, match=f"tensor '{name}' holds NaN or infinite values"):
        load_run(tmp_path / "run")
