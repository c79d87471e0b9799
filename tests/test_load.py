"""The short version of benchmarks/load_test.py that CI runs: a real server process under concurrent load."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script
from PIL import Image

from fashionclf.engine.runs import save_run
from fashionclf.models import build_model
from fashionclf.training.recipes import resolve_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"


@pytest.mark.slow
def test_300_requests_at_concurrency_16_without_errors(tmp_path):
    load_test = load_script(SCRIPT, "load_test")

    cfg = resolve_config("tuned_cnn", None)
    torch.manual_seed(0)
    run = save_run(
        tmp_path / "run",
        build_model(cfg),
        cfg,
        {"calibration": {"temperature": 1.0, "threshold": 0.5}},
        [],
        [f"c{i}" for i in range(10)],
        {},
    )
    img = np.full((90, 60, 3), 245, np.uint8)
    img[10:80, 15:45] = (50, 60, 120)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    (tmp_path / "item.jpg").write_bytes(buf.getvalue())

    res = load_test.run_load_test(str(run), requests=300, concurrency=[16], image=str(tmp_path / "item.jpg"), backend="torch", warmup=10)
    (level,) = res["levels"]
    assert level["requests"] == 300 and level["errors"] == 0, level["error_examples"]
    assert res["server_pid_unchanged"] and res["healthy_after"]
    assert level["p50_ms"] > 0 and level["requests_per_s"] > 0
    # memory: sampled every 5 ms in the server process; the burst may grow it a little (threads, arenas), no more
    assert level["rss_mb_before"] <= level["rss_mb_peak"] < 1024, level
    assert level["rss_mb_after"] <= 1.15 * level["rss_mb_before"], level
    assert res["rss_mb_after_idle_2s"] <= 1.15 * res["rss_mb_after_warmup"], res
