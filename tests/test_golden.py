"""Golden snapshots taken before the package was reorganised (issue 15): what users see must not change.

- every model x recipe resolves to the same config (apart from the changes listed in golden/config_changes.json);
- every command keeps its options (new ones are listed in golden/help_added.json);
- the small compare study's report.md is rebuilt byte for byte from its stored outputs;
- run folders written before the move load and predict the same probabilities.

`make golden` (FASHIONCLF_WRITE_GOLDEN=1) rewrites the snapshots from today's code, after an intended change: the
resolved configs and the options become the new snapshot and their lists of changes start empty again (the
history is in git). Run it only from the code the snapshots are meant to pin.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
STUDY = GOLDEN / "study"  # `fashionclf compare --models mlp,tuned_cnn:1 --seeds 2 --epochs 1 --train-limit 2000` (real data)
WRITE = os.environ.get("FASHIONCLF_WRITE_GOLDEN") == "1"


def _check(name: str, value) -> None:
    path = GOLDEN / name
    text = json.dumps(value, indent=1, sort_keys=True) + "\n"
    if WRITE:
        path.write_text(text)
    assert json.loads(path.read_text()) == json.loads(text), f"{name} changed"


def _resolved() -> dict:
    from fashionclf.core.config import config_to_dict
    from fashionclf.models import list_models
    from fashionclf.training.recipes import list_recipes, load_recipe, resolve_config

    presets = [r for r in list_recipes() if not load_recipe(r).is_model_default]
    out = {}
    for preset in [None, *presets]:
        for model in [None, *list_models()]:
            out[f"{model or '-'}|{preset or '-'}"] = config_to_dict(resolve_config(model, preset))
    return out


def test_resolved_configs_unchanged():
    """The snapshot with the listed, intended changes applied (golden/config_changes.json says why) is today's."""
    if WRITE:
        (GOLDEN / "configs.json").write_text(json.dumps(_resolved(), indent=1, sort_keys=True) + "\n")
        (GOLDEN / "config_changes.json").write_text(json.dumps({"why": "", "changes": {}}, indent=1) + "\n")
    want = json.loads((GOLDEN / "configs.json").read_text())
    for key, fields in json.loads((GOLDEN / "config_changes.json").read_text())["changes"].items():
        for name, (old, new) in fields.items():
            table, _, sub = name.partition(".")
            holder = want[key][table] if sub else want[key]
            assert holder[sub or table] == old, f"{key} {name}: the snapshot has {holder[sub or table]!r}, not {old!r}"
            holder[sub or table] = new
    assert json.loads(json.dumps(_resolved())) == want


def _options() -> dict:
    from fashionclf.apps.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: sorted(s for a in p._actions for s in a.option_strings) for name, p in sub.choices.items()}


def test_help_options_unchanged():
    """Every option of every command is still there; what was added is listed in golden/help_added.json."""
    if WRITE:
        (GOLDEN / "help_options.json").write_text(json.dumps(_options(), indent=1, sort_keys=True) + "\n")
        (GOLDEN / "help_added.json").write_text(json.dumps({"why": "", "added": {}}, indent=1) + "\n")
    want = json.loads((GOLDEN / "help_options.json").read_text())
    for command, options in json.loads((GOLDEN / "help_added.json").read_text())["added"].items():
        want[command] = sorted(set(want.get(command, [])) | set(options))
    assert _options() == want


@pytest.mark.data
def test_small_study_report_rebuilds_identically(tmp_path, real_data_dir):
    from fashionclf.data.fashion_mnist import load_fashion_mnist
    from fashionclf.study.report import write_report

    out = tmp_path / "study"
    shutil.copytree(STUDY, out, ignore=shutil.ignore_patterns("*.png", "report.*"))
    data = load_fashion_mnist(real_data_dir)
    data.train_x, data.train_y = data.train_x[:2000], data.train_y[:2000]
    write_report(out, json.loads((out / "results.json").read_text()), data)
    assert (out / "report.md").read_text() == (STUDY / "report.md").read_text()


def test_old_run_folders_predict_identically():
    from fashionclf.engine.runs import load_run
    from fashionclf.infer.predict import predict_arrays

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 28, 28), generator=g, dtype=torch.uint8).numpy()
    got = {}
    for run_dir in sorted((STUDY / "runs").iterdir()):
        run = load_run(run_dir)
        run.config.precision = "fp32"  # the same figures on CPUs with and without bf16
        rows = predict_arrays(run, images, top_k=10)
        got[run_dir.name] = [{t["label"]: t["confidence"] for t in r["top_k"]} for r in rows]
    path = GOLDEN / "old_runs_predict.json"
    if WRITE:
        path.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(path.read_text())
    assert want.keys() == got.keys()
    for name in want:
        for w, g_ in zip(want[name], got[name]):
            assert w.keys() == g_.keys()
            assert max(abs(w[k] - g_[k]) for k in w) < 1e-4, name
