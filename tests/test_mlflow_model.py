"""The run as an MLflow pyfunc model: registered, loaded with MLflow's own loader, served by `mlflow models serve`."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mlflow")
import mlflow  # noqa: E402
from conftest import synthetic_bars  # noqa: E402

import fashionclf  # noqa: E402
from fashionclf.apps.tracking import log_run_folder  # noqa: E402
from fashionclf.data.fashion_mnist import FashionMNIST  # noqa: E402


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).resize((84, 84)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    x, y = synthetic_bars()
    data = FashionMNIST(x[:300], y[:300], x[300:350], y[300:350], x[350:], y[350:], "synthetic")
    run = fashionclf.train(fashionclf.recipe("mlp", epochs=3, precision="fp32"), out=tmp / "run", data=data)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(tmp)  # MLflow's default artifact store is relative to the working directory
    try:
        res = log_run_folder(tmp / "run", uri, "t", "shop-model")
    finally:
        os.chdir(cwd)
    photos = []
    for i in range(4):  # the item light on a dark ground, as Fashion-MNIST; predict cuts it out like any photo
        (tmp / f"p{i}.png").write_bytes(_png(np.repeat(data.test_x[i].numpy()[..., None], 3, 2)))
        photos.append(tmp / f"p{i}.png")
    return run, uri, res, photos, tmp


def test_registered_pyfunc_predicts_as_fashionclf_predict(registered, monkeypatch):
    run, uri, res, photos, tmp = registered
    assert res["model_version"] == "1"
    monkeypatch.chdir(tmp)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/shop-model/1")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image"]
    import pandas as pd

    out = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos]}))
    want = run.predict(photos, top_k=len(run.classes))
    assert list(out["label"]) == [w["label"] for w in want]
    for got, w in zip(out.itertuples(), want):
        assert got.confidence == pytest.approx(w["confidence"], abs=1e-6) and got.needs_review == w["needs_review"]
        by_class = {t["label"]: t["confidence"] for t in w["top_k"]}
        assert np.allclose(got.probabilities, [by_class[c] for c in run.classes], atol=1e-6)


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_request(registered):
    run, uri, _, photos, tmp = registered
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # MLflow starts uvicorn by name: the venv's bin folder must be on PATH, as it is in an activated venv
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    cmd = [*mlflow_cli, "models", "serve", "-m", "models:/shop-model/1", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200:
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow models serve did not start: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(1)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(p.read_bytes()).decode()] for p in photos]}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        preds = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        assert [p["label"] for p in preds] == [w["label"] for w in run.predict(photos)]
    finally:
        server.terminate()
        server.wait(timeout=30)
