"""Hub-style run folders: config.json and a model card, derived from the run's own files; loading needs neither."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fashionclf.api import load_run
from fashionclf.engine.card import write_hub_files

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


def test_save_run_writes_the_hub_files_under_the_runs_own_name(tmp_path):
    import torch

    from fashionclf.engine.runs import save_run
    from fashionclf.models import create_model
    from fashionclf.training.recipes import resolve_config

    classes = [f"c{i}" for i in range(10)]
    out = save_run(tmp_path / "shop-v1", create_model("mlp").eval(), resolve_config("mlp", None), {}, [], classes, {})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"]["3"] == "c3" and cfg["architecture"] == "mlp"
    card = (out / "README.md").read_text()
    assert "shop-v1" in card and ".tmp-" not in card  # named after the folder it lands in, not the temporary one
    assert (out / "config.json").stat().st_mode & 0o777 == (out / "meta.json").stat().st_mode & 0o777
    run = load_run(out)
    assert run.predict(torch.zeros(2, 28, 28, dtype=torch.uint8).numpy())[0]["label"] in classes


def test_a_temperature_edited_in_config_json_alone_is_refused_naming_both_files(tmp_path, capsys):
    """metrics.json holds the calibration predict applies; config.json is written from it. An edit to config.json's
    copy would be silently ignored, so loading refuses it with one line, and deleting config.json loads again."""
    import pytest

    from fashionclf.apps.cli import main
    from fashionclf.engine.runs import RunError

    run_dir = tmp_path / "run"
    shutil.copytree(GOLDEN, run_dir)
    write_hub_files(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["calibration"]["temperature"] = 5.0
    (run_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match=r"config.json: calibration.temperature = 5.0, but metrics.json's is"):
        load_run(run_dir)
    assert main(["evaluate", str(run_dir)]) == 2 and "put config.json's value back, or delete config.json" in capsys.readouterr().err
    (run_dir / "config.json").write_text("[1, 2")
    with pytest.raises(RunError, match="not the JSON object"):
        load_run(run_dir)
    (run_dir / "config.json").unlink()
    assert load_run(run_dir).metrics["calibration"]["temperature"] > 0
