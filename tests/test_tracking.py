"""MLflow tracking against a temporary SQLite store, read back with MLflow's own client."""

import json

import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from fashionclf.apps.cli import main  # noqa: E402


@pytest.mark.slow
def test_train_and_compare_track_params_metrics_artifacts_and_model(tmp_path, monkeypatch, real_data_dir):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact store is relative to the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--epochs", "2", "--train-limit", "3000", "--test-limit", "1000", "--quiet", "--track", uri, "--experiment", "t"]
    assert main(["train", "--model", "mlp", "--out", "r1", *common, "--register", "shop-mlp"]) == 0

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("t")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["model"] == "mlp" and run.data.params["epochs"] == "2"
    assert run.data.params["aug.rotation"] == "10.0"  # nested config keys are flattened
    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    steps = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in steps) == [1, 2]
    files = {f.path for f in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/model.safetensors", "run/meta.json", "run/metrics.json", "run/history.csv"} <= files
    (version,) = client.search_model_versions("name='shop-mlp'")
    assert version.run_id == run.info.run_id  # the pyfunc model logged under that run (tests/test_mlflow_model.py loads one)
    assert {"model"} <= {m.name for m in client.search_logged_models([exp.experiment_id])}

    # compare --track: every run of the study under one experiment, grouped under a parent with the report
    args = ["compare", "--models", "mlp,simple_cnn", "--seeds", "1", "--out", "study", *common]
    assert main(args) == 0
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.parentRunId != ''")
    assert sorted(r.info.run_name for r in runs) == ["mlp-s0", "simple_cnn-s0"]
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert "results.json" in {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert client.search_model_versions("name='fashionclf-simple_cnn'")


def test_missing_mlflow_is_a_clear_error(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *a, **kw):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    # refused before data are read or anything is trained: the data folder does not even exist
    args = ["train", "--model", "mlp", "--data-dir", "/nonexistent-data", "--no-download", "--out", "/nonexistent-out/r", "--track"]
    assert main(args) == 2
    assert "pip install" in capsys.readouterr().err


def test_unusable_tracking_store_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "not-a-dir").write_text("x")
    uri = f"sqlite:///{tmp_path / 'not-a-dir' / 'mlflow.db'}"
    args = ["train", "--model", "mlp", "--data-dir", "/nonexistent-data", "--no-download", "--out", str(tmp_path / "r"), "--track", uri]
    assert main(args) == 2
    assert "tracking store cannot be used" in capsys.readouterr().err and not (tmp_path / "r").exists()
