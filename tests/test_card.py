"""Hub-style run folders: config.json and a model card, derived from the run's own files; loading needs neither."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fashionclf.api import load_run
from fashionclf.card import write_hub_files

GOLDEN = Path(__file__).parent / "golden" / "study" / "runs" / "tuned_cnn-s0"


def test_config_and_card_from_an_old_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(GOLDEN, run_dir)
    before = load_run(run_dir).predict(load_run(run_dir).dataset().test_x[:8].numpy())
    write_hub_files(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert cfg["architecture"] == "tuned_cnn" and cfg["num_labels"] == 10
    assert cfg["id2label"]["6"] == "Shirt" and cfg["label2id"]["Shirt"] == 6
    assert cfg["input"]["height"] == 28 and cfg["normalization"] == meta["normalization"]
    assert cfg["calibration"]["temperature"] == metrics["calibration"]["temperature"]
    card = (run_dir / "README.md").read_text()
    assert f"{metrics['test_accuracy'] * 100:.2f}%" in card and "## Known limits" in card and "fashionclf.load_run" in card
    cov = metrics["test_calibration"]["coverage_at_precision"]["0.99"]["coverage"]
    assert f"{cov * 100:.2f}%" in card
    assert load_run(run_dir).predict(load_run(run_dir).dataset().test_x[:8].numpy()) == before  # extra files change nothing
