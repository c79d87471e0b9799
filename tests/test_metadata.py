"""Run metadata is validated on load: a damaged or out-of-range field of meta.json or metrics.json is one line
naming the file, the field and what is valid (exit status 2), and a NaN never reaches a prediction."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.engine.runs import META, METRICS, RunError, load_run
from fashionclf.infer.predict import joint_results, results_from_probs
from fashionclf.training.supervised import usable_calibration

GOLDEN = Path(__file__).parent / "golden" / "study" / "runs"


def _set(file: str, path: str, value):
    """A damage: set the field at dotted `path` of `file` (the whole file for path '')."""

    def damage(run: Path):
        if not path:
            (run / file).write_text(json.dumps(value))
            return
        doc = json.loads((run / file).read_text())
        *parents, last = path.split(".")
        holder = doc
        for p in parents:
            holder = holder[p]
        holder[last] = value
        (run / file).write_text(json.dumps(doc))  # json writes NaN as NaN, which Python's reader takes back

    return damage


# (damage, the file, what the one line must say) -- the findings first, then more of the same kind
CASES = {
    "meta.json is 5": (_set(META, "", 5), META, "holds 5, not a JSON object"),
    "config is a list": (_set(META, "config", [1, 2]), META, "config = [1, 2]: expected a table of named fields"),
    "unknown aug key": (_set(META, "config.aug.bogus", 1), META, "unknown config keys ['aug.bogus']; valid in aug: cutmix"),
    "negative hidden size": (_set(META, "model_kwargs.hidden", -5), META, "model_kwargs.hidden = -5: expected a whole number in [1, 4096]"),
    "string temperature": (
        _set(METRICS, "calibration.temperature", "1.0"),
        METRICS,
        "calibration.temperature = '1.0': expected a finite number",
    ),
    "temperature 0": (_set(METRICS, "calibration.temperature", 0), METRICS, "calibration.temperature = 0: expected a number above 0"),
    "NaN threshold": (
        _set(METRICS, "calibration.threshold", math.nan),
        METRICS,
        "calibration.threshold = nan: expected a finite number",
    ),
    "threshold above 1": (
        _set(METRICS, "calibration.threshold", 1.5),
        METRICS,
        "calibration.threshold = 1.5: expected a value in [0, 1]",
    ),
    "infinite temperature": (
        _set(METRICS, "calibration.temperature", math.inf),
        METRICS,
        "calibration.temperature = inf: expected a finite number",
    ),
    "metrics.json a list": (_set(METRICS, "", []), METRICS, "holds [], not a JSON object"),
    "no classes": (_set(META, "classes", []), META, "classes = []: expected a non-empty list of names"),
    "classes not strings": (_set(META, "classes", [1, 2]), META, "classes = [1, 2]: expected a non-empty list of names"),
    "no model": (_set(META, "model", None), META, "model = None: expected a string"),
    "input channels 2": (_set(META, "input.channels", 2), META, "input.channels = 2: expected one of 1, 3"),
    "config lr out of range": (_set(META, "config.lr", -1), META, "lr = -1: expected a value in [0, 100]"),
    "config epochs a string": (_set(META, "config.epochs", "10"), META, "epochs = '10': expected a whole number"),
    "config unknown setting": (_set(META, "config.bogus", 1), META, "unknown config keys ['bogus']"),
    "model kwarg unknown": (_set(META, "model_kwargs.depth", 3), META, "model_kwargs.depth: mlp takes no such argument"),
    "model kwarg bool for size": (_set(META, "model_kwargs.image_size", True), META, "model_kwargs.image_size = True: expected a whole"),
    "format 2": (_set(META, "format", 2), META, "format = 2: expected one of 1"),
}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "shirt.png"
    img = np.full((60, 40, 3), 235, np.uint8)
    img[10:50, 8:32] = 60
    Image.fromarray(img).save(path)
    return path


@pytest.mark.parametrize("case", CASES)
def test_damaged_metadata_is_one_line_through_the_cli(tmp_path, photo, capsys, case):
    damage, file, says = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "mlp-s0", run)
    damage(run)
    assert main(["predict", str(run), str(photo), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing predicted with a damaged run
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"fashionclf: error: {run / file}") and says in lines[0], lines[0]


def test_golden_runs_written_by_earlier_versions_load(photo, capsys):
    for run in sorted(GOLDEN.iterdir()):
        assert load_run(run).metrics["calibration"]["temperature"] > 0
        assert main(["predict", str(run), str(photo), "--json"]) == 0
        row = json.loads(capsys.readouterr().out)
        assert 0 < row["confidence"] <= 1 and isinstance(row["needs_review"], bool)


def test_a_run_without_calibration_or_threshold_still_loads(tmp_path):
    """Runs saved before calibration existed (no "calibration"), or whose threshold reached no precision (null)."""
    run = tmp_path / "run"
    shutil.copytree(GOLDEN / "mlp-s0", run)
    _set(METRICS, "calibration.threshold", None)(run)
    assert load_run(run).metrics["calibration"]["threshold"] is None
    _set(METRICS, "calibration", None)(run)
    assert load_run(run).metrics["calibration"] is None
    (run / METRICS).unlink()
    assert load_run(run).metrics == {}


class _Run:
    classes = [f"c{i}" for i in range(4)]

    def __init__(self, threshold):
        self.metrics = {"calibration": {"temperature": 1.0, "threshold": threshold}}


@pytest.mark.parametrize("threshold", [0.0, 0.5, None])
def test_a_row_that_is_not_finite_is_flagged_and_never_nan(threshold):
    """Defence in depth behind the load checks: NaN or infinite probabilities (a damaged model) are confidence 0,
    flagged for review at any threshold (0 included), and the results are valid JSON."""
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [math.nan] * 4, [0.25, math.inf, 0.0, 0.0]])
    rows = results_from_probs(_Run(threshold), probs, top_k=2)
    assert [r["needs_review"] for r in rows][1:] == [True, True]
    assert rows[0]["needs_review"] == (threshold is None or 0.7 < threshold) and rows[0]["confidence"] == pytest.approx(0.7)
    assert all(r["confidence"] == 0 and all(t["confidence"] == 0 for t in r["top_k"]) for r in rows[1:])
    json.dumps(rows, allow_nan=False)  # raises on a NaN or an infinity
    joint = joint_results([_Run(threshold), _Run(threshold)], [probs, probs.clone()], top_k=2)
    assert [r["needs_review"] for r in joint][1:] == [True, True]
    json.dumps(joint, allow_nan=False)


def test_a_calibration_that_could_not_be_fitted_is_left_out_not_saved_as_nan():
    assert usable_calibration({"temperature": 1.2, "threshold": 0.9, "target_precision": 0.99}) is not None
    assert usable_calibration({"temperature": math.nan, "threshold": None, "target_precision": 0.99}) is None
    assert usable_calibration(None) is None


def test_save_run_refuses_to_write_what_load_run_would_refuse(tmp_path):
    from fashionclf.engine.runs import save_run
    from fashionclf.models import create_model
    from fashionclf.training.recipes import resolve_config

    cfg = resolve_config("mlp", None)
    with pytest.raises(RunError, match="calibration.temperature = -1.0"):
        save_run(tmp_path / "run", create_model("mlp"), cfg, {"calibration": {"temperature": -1.0}}, [], list("abcdefghij"), {})
    assert not (tmp_path / "run").exists()
