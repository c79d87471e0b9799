"""The Python API as a user calls it (not through the CLI): recipes, train, load_run, predict, evaluate, export."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_bars
from PIL import Image

import fashionclf
from fashionclf.apps.cli import main
from fashionclf.data.fashion_mnist import FashionMNIST


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = synthetic_bars()
    data = FashionMNIST(x[:300], y[:300], x[300:350], y[300:350], x[350:], y[350:], "synthetic")
    out = tmp_path_factory.mktemp("api") / "run"
    cfg = fashionclf.recipe("mlp", epochs=3, precision="fp32", seed=1)
    run = fashionclf.train(cfg, out=out, data=data)
    return run, data, out


def test_public_names_are_exported():
    for name in fashionclf.__all__:
        assert getattr(fashionclf, name) is not None
    with pytest.raises(AttributeError):
        fashionclf.no_such_thing  # noqa: B018


def test_recipe_overrides_and_unknown_names():
    cfg = fashionclf.recipe("best-cpu", seed=3, epochs=2, aug_rotation=5.0)
    assert (cfg.model, cfg.seed, cfg.epochs, cfg.aug.rotation, cfg.optimizer) == ("resnet", 3, 2, 5.0, "sgd")
    with pytest.raises(ValueError, match="unknown recipe 'nope'; valid recipes: .*best-cpu"):
        fashionclf.recipe("nope")
    with pytest.raises(ValueError, match=r"unknown config keys \['bogus'\]"):
        fashionclf.recipe("mlp", bogus=1)
    with pytest.raises(ValueError, match=r"batch_size = 0: expected a value in \[2, "):
        fashionclf.recipe("mlp", batch_size=0)
    with pytest.raises(ValueError, match="lr = nan: expected a finite number"):
        fashionclf.recipe("mlp", lr=float("nan"))
    assert set(fashionclf.list_recipes()) >= {"best-cpu", "transfer", "photos", "robust"}
    from fashionclf.training.recipes import resolve_config

    for name in fashionclf.list_models():  # a model needs no recipe file: without one it trains TrainConfig's defaults
        assert resolve_config(name).model == name


def test_every_recipe_file_states_only_what_differs():
    """A recipe holds its description, its model and only the settings that differ from TrainConfig's defaults (as
    nanoGPT's config files do); `recipes NAME --resolved` prints every setting, and loads back as the same config."""
    import tomllib

    from fashionclf.core.config import TrainConfig, config_to_dict
    from fashionclf.training.recipes import load_config_file, load_recipe, resolved_text

    defaults = config_to_dict(TrainConfig())
    for name in fashionclf.list_recipes():
        r = load_recipe(name)
        d = tomllib.loads(r.path.read_text())
        for key, value in d.items():
            if key == "aug":
                assert all(defaults["aug"][k] != v for k, v in value.items()), (name, value)
            elif key not in ("description", "model"):
                assert defaults[key] != value, (name, key, value)
        text = resolved_text(r.config)
        assert set(json.loads(text)) == set(defaults)
        path = Path(tempfile.mkdtemp()) / f"{name}.json"
        path.write_text(text)
        assert load_config_file(path) == r.config


def test_train_returns_a_loaded_run_that_predicts_and_evaluates(trained):
    run, data, out = trained
    assert isinstance(run, fashionclf.Run) and run.path == out and run.metrics["epochs_run"] == 3
    again = fashionclf.load_run(out)
    rows = again.predict(data.test_x.numpy(), top_k=2)
    assert len(rows) == len(data.test_y) and all(len(r["top_k"]) == 2 for r in rows)
    acc = np.mean([r["index"] == int(t) for r, t in zip(rows, data.test_y)])
    rep = again.evaluate(images=data.test_x, labels=data.test_y)
    assert rep["n"] == len(data.test_y) and abs(rep["accuracy"] - acc) < 1e-9 and rep["accuracy"] > 0.5


def test_predict_files_and_folders(trained, tmp_path):
    run, data, _ = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(255 - data.test_x[i].numpy()).resize((112, 112)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    rows = run.predict([folder], method="threshold")
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["broken.jpg", "p0.png", "p1.png", "p2.png"]
    assert "error" in rows[0] and all("label" in r for r in rows[1:])
    assert run.predict(folder / "p0.png", method="threshold")[0]["label"] == rows[1]["label"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        run.predict([tmp_path / "empty"])
    assert "error" in run.predict(tmp_path / "missing.jpg")[0]  # reported per file, as predict does


def test_export_writes_once_and_refuses_to_overwrite(trained, tmp_path):
    run, _, _ = trained
    model, report = run.export(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model and all(r["same_argmax"] for r in report["parity"])
    with pytest.raises(ValueError, match="already exists"):
        run.export(tmp_path / "m.onnx")


def test_config_file_repeats_a_run_exactly(trained, tmp_path):
    """train --config RUN/meta.json resolves to the run's own config; flags still override it."""
    from fashionclf.apps.cli import build_parser
    from fashionclf.apps.cli.train import resolve

    _, _, out = trained
    meta = json.loads((out / "meta.json").read_text())
    args = build_parser().parse_args(["train", "--config", str(out / "meta.json")])
    assert fashionclf.api.as_config(out / "meta.json").__eq__(resolve(args))
    from fashionclf.core.config import config_to_dict

    assert config_to_dict(resolve(args)) == {**meta["config"], "model": meta["model"]}
    args = build_parser().parse_args(["train", "--config", str(out / "meta.json"), "--epochs", "7"])
    assert resolve(args).epochs == 7 and resolve(args).seed == 1
    recipe_file = fashionclf.training.recipes.load_recipe("best-cpu").path
    args = build_parser().parse_args(["train", "--config", str(recipe_file)])
    assert resolve(args) == fashionclf.recipe("best-cpu")


def test_bad_config_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "mlp"\nepochs = "ten"\n')
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "epochs = 'ten': expected a whole number" in err and "Traceback" not in err
    bad.write_text("[aug]\nspin = 3\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "aug.spin" in capsys.readouterr().err
    meta = tmp_path / "meta.json"
    meta.write_text("5")
    assert main(["train", "--config", str(meta), "--out", str(tmp_path / "r")]) == 2
    assert "a config must be a table of settings" in capsys.readouterr().err


def test_recipes_command_lists_and_prints(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "best-cpu" in out and "preset" in out and "model default" in out
    assert main(["recipes", "robust"]) == 0
    assert 'model = "resnet"' in capsys.readouterr().out


def test_model_kwargs_come_from_the_declarations():
    assert fashionclf.model_kwargs("efficientnet_lite0", folder_data=True, image_size=96) == {"in_chans": 3, "image_size": 96}
    assert fashionclf.model_kwargs("resnet", folder_data=True) == {"in_chans": 3}
    with pytest.raises(ValueError, match="tuned_cnn cannot take 128x128 RGB images.*resnet"):
        fashionclf.model_kwargs("tuned_cnn", folder_data=True)
    with pytest.raises(ValueError, match="mlp has no stochastic depth; models that take it: efficientnet_lite0"):
        fashionclf.model_kwargs("mlp", drop_path=0.1)
