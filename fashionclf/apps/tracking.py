"""Experiment tracking with MLflow: a finished run folder logged as one MLflow run, and registered.

What gets logged: the resolved training config as parameters (nested keys flattened with dots), every
epoch's row of history.csv as metrics at step = epoch, the final scores (test and validation accuracy
and loss, ECE, automatic-labelling coverage, training time), the whole run folder as artifacts under
`run/` (weights in safetensors, metadata in JSON: what `fashionclf evaluate` and `serve` load), and a
model version under a registered name that points at those artifacts.

The default tracking URI is a local SQLite file, `sqlite:///mlflow.db` (the backend MLflow recommends
over plain files); a team passes its server's URI instead. MLflow is an optional dependency, imported
only here, only when tracking is asked for.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "fashionclf"


class TrackingError(ValueError):
    pass


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise TrackingError("--track needs MLflow: pip install 'fashionclf[track]' (or pip install mlflow)") from None
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


def final_metrics(metrics: dict) -> dict[str, float]:
    """The numbers worth a column in MLflow's run table; nested reports stay in the artifacts."""
    keys = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_seconds", "seconds_per_epoch", "params")
    keys += ("epochs_run", "best_epoch", "infer_images_per_s", "world_size")
    out = {k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), (int, float))}
    cal = metrics.get("test_calibration") or {}
    for k in ("ece", "ece_uncalibrated"):
        if isinstance(cal.get(k), (int, float)):
            out[f"test_{k}"] = float(cal[k])
    for target, c in (cal.get("coverage_at_precision") or {}).items():
        if isinstance(c, dict) and isinstance(c.get("coverage"), (int, float)):
            out[f"test_coverage_at_{target}"] = float(c["coverage"])
    # val_* are also per-epoch series (history.csv); the kept model's scores get their own names
    out = {("kept_" + k if k.startswith("val_") else k): v for k, v in out.items()}
    return {k: v for k, v in out.items() if math.isfinite(v)}


def read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        vals = {}
        for k, v in r.items():
            try:
                vals[k] = float(v)
            except (TypeError, ValueError):
                continue
        out.append(vals)
    return out


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def log_run_folder(
    run_dir: str | Path,
    uri: str = DEFAULT_URI,
    experiment: str = DEFAULT_EXPERIMENT,
    register_as: str | None = None,
    parent_run_id: str | None = None,
) -> dict:
    """Log one finished run folder; returns {run_id, experiment_id, model_version (or None)}."""
    mlflow = _mlflow()
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment_id(client, experiment)
    tags = {"fashionclf.run_dir": str(run_dir.resolve()), "fashionclf.model": meta["model"]}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_dir.name, tags=tags)
    rid = run.info.run_id
    try:
        params = flatten({**meta.get("config", {}), "model_kwargs": meta.get("model_kwargs", {})})
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(rid, params=[mlflow.entities.Param(k, v[:6000]) for k, v in items[i : i + 100]])
        history = read_history(run_dir)
        batch = [
            mlflow.entities.Metric(k, v, 0, int(row.get("epoch", i + 1)))
            for i, row in enumerate(history)
            for k, v in row.items()
            if k != "epoch" and math.isfinite(v)
        ]
        batch += [mlflow.entities.Metric(k, v, 0, 0) for k, v in final_metrics(metrics).items()]
        for i in range(0, len(batch), 1000):
            client.log_batch(rid, metrics=batch[i : i + 1000])
        client.log_artifacts(rid, str(run_dir), artifact_path="run")
        version = log_pyfunc(uri, rid, run_dir, register_as)
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return {"run_id": rid, "experiment_id": exp_id, "model_version": version}


def signature():
    """Encoded image bytes in; label, calibrated confidence, review flag and per-class probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    outputs = [ColSpec("string", "label"), ColSpec("double", "confidence"), ColSpec("boolean", "needs_review")]
    return ModelSignature(Schema([ColSpec("binary", "image")]), Schema([*outputs, ColSpec(Array("double"), "probabilities")]))


def example_image() -> bytes:
    """A small PNG (a light item on a dark ground), the input example stored with the model."""
    import io

    import numpy as np
    from PIL import Image

    img = np.zeros((56, 56, 3), np.uint8)
    img[8:48, 16:40] = 200
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def log_pyfunc(uri: str, run_id: str, run_dir: Path, register_as: str | None) -> str | None:
    """Log the run as an MLflow pyfunc model (from code: fashionclf/apps/mlflow_model.py, nothing pickled) with its
    signature and input example, under the MLflow run; register it when a name is given. Returns the version."""
    mlflow = _mlflow()
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    package = Path(__file__).parent  # the fashionclf package
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package / "mlflow_model.py"),
            artifacts={"run": str(run_dir)},
            code_paths=[str(package)],  # the model carries the code that reads its run folder
            signature=signature(),
            input_example=pd.DataFrame({"image": [example_image()]}),
            registered_model_name=register_as,
            pip_requirements=["torch", "safetensors", "pillow", "numpy", "opencv-python-headless", "timm", "pandas"],
        )
    return str(info.registered_model_version) if register_as else None


def start_parent(uri: str, experiment: str, name: str) -> str:
    """An MLflow run that groups a study's runs (compare --track); returns its id."""
    _mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment_id(client, experiment)
    return client.create_run(exp_id, run_name=name).info.run_id


def finish_parent(uri: str, run_id: str, artifacts: list[str | Path], ok: bool = True) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        if ok:
            for a in artifacts:
                if Path(a).exists():
                    client.log_artifact(run_id, str(a))
    finally:
        client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def check_store(uri: str) -> None:
    """Fail before training when MLflow is missing or the tracking store cannot be reached."""
    _mlflow()
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:
        raise TrackingError(f"--track {uri}: the MLflow tracking store cannot be used ({str(e).splitlines()[0][:300]})") from None


def log_runs(uri: str, experiment: str, register: str | None, run_dirs: list[Path], report_files=(), study_name: str = ""):
    """Log finished run folders, one at a time (yields (folder, result)); a study's runs under a parent run
    that gets its report files. The folders on disk are never touched."""
    parent = start_parent(uri, experiment, study_name) if report_files else None
    ok = False
    try:
        for d in run_dirs:
            model = json.loads((Path(d) / "meta.json").read_text())["model"]
            name = register or f"fashionclf-{model}"
            try:
                res = log_run_folder(d, uri, experiment, name, parent_run_id=parent)
            except TrackingError:
                raise
            except Exception as e:  # MLflow's own errors (server gone, permissions): the run folder is safe on disk
                raise TrackingError(f"MLflow at {uri} failed while logging {d}: {str(e).splitlines()[0]}; the run folder is kept") from None
            yield d, {**res, "name": name}
        ok = True
    finally:
        if parent:
            finish_parent(uri, parent, list(report_files), ok)
