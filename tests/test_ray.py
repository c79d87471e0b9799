"""Ray batch inference on a local Ray instance agrees exactly with `fashionclf predict` on the same files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray")

from fashionclf.engine.runs import load_run, save_run  # noqa: E402
from fashionclf.infer.predict import predict_files  # noqa: E402
from fashionclf.infer.ray import predict_paths  # noqa: E402
from fashionclf.models import build_model  # noqa: E402
from fashionclf.training.recipes import resolve_config  # noqa: E402


@pytest.mark.slow
def test_ray_map_batches_matches_predict(tmp_path):
    cfg = resolve_config("tuned_cnn", None)
    torch.manual_seed(0)
    cal = {"temperature": 0.8, "threshold": 0.3, "target_precision": 0.99}
    run_dir = save_run(tmp_path / "run", build_model(cfg), cfg, {"calibration": cal}, [], [f"c{i}" for i in range(10)], {})
    rng = np.random.default_rng(0)
    paths = []
    for i in range(300):
        img = np.full((72, 56, 3), rng.integers(200, 256), np.uint8)
        h, w = rng.integers(20, 60), rng.integers(12, 44)
        img[6 : 6 + h, 6 : 6 + w] = rng.integers(0, 140, 3)
        paths.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(img).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    paths.insert(150, tmp_path / "bad.jpg")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = predict_paths(paths, run_dir, batch_size=64, concurrency=2, top_k=3)
    finally:
        ray.shutdown()

    expected = list(predict_files(load_run(run_dir), paths, top_k=3))
    assert [r["path"] for r in rows] == [e["file"] for e in expected]
    for r, e in zip(rows, expected):
        if "error" in e:
            assert r["error"] == e["error"] and r["index"] == -1
            continue
        assert r["error"] == "" and r["label"] == e["label"] and r["index"] == e["index"]
        assert r["confidence"] == pytest.approx(e["confidence"], abs=1e-6) and r["needs_review"] == e["needs_review"]
        assert [t["index"] for t in json.loads(r["top_k"])] == [t["index"] for t in e["top_k"]]
