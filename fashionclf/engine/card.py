"""Hub-style files for a run folder: `config.json` (what a loader needs) and a model card `README.md`.

Both are derived from the run's own meta.json and metrics.json, so they can be written for any run,
new or old (`fashionclf card RUN` is not needed: `write_hub_files(run_dir)` does it, and `save_run`
calls it). `load_run` never needs them: a folder with or without them loads the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from fashionclf.core.io import atomic_write_text, to_json

CONFIG, CARD = "config.json", "README.md"


def hub_config(meta: dict, metrics: dict) -> dict:
    """architecture, id2label / label2id, input, normalisation and calibration, as model hubs read them."""
    classes = list(meta["classes"])
    spec = meta.get("input") or {}
    cal = metrics.get("calibration") or {}
    return {
        "library_name": "fashionclf",
        "architecture": meta["model"],
        "model_kwargs": meta.get("model_kwargs", {}),
        "num_labels": len(classes),
        "id2label": {str(i): c for i, c in enumerate(classes)},
        "label2id": {c: i for i, c in enumerate(classes)},
        "input": {
            "channels": spec.get("channels", 1),
            "height": spec.get("height", 28),
            "width": spec.get("width", 28),
            "kind": spec.get("kind", "fashion-mnist-28x28"),
            "pixels": "uint8, scaled to [0, 1], then normalised",
        },
        "normalization": meta.get("normalization"),
        "calibration": {
            "temperature": cal.get("temperature"),
            "review_threshold": cal.get("threshold"),
            "target_precision": cal.get("target_precision"),
        },
        "weights": "model.safetensors",
        # frozen backbones kept by digest, not copied: the pip packages' ImageNet weights (engine/runs.py)
        **({"weights_by_reference": meta["weights_by_reference"]} if meta.get("weights_by_reference") else {}),
        "fashionclf_version": (meta.get("versions") or {}).get("fashionclf"),
    }


def hub_mismatch(run_dir: str | Path, metrics: dict) -> str | None:
    """Why config.json disagrees with metrics.json's calibration (an edited temperature), or None. metrics.json holds
    the truth, what predict applies; config.json is written from it for model hubs, so a value changed there alone
    would be silently ignored: load_run refuses it instead."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        written = json.loads(path.read_text()).get("calibration") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return f"{path} is not the JSON object fashionclf writes; delete it (it is written from metrics.json for model hubs)"
    cal = metrics.get("calibration") or {}
    for hub, key in (("temperature", "temperature"), ("review_threshold", "threshold"), ("target_precision", "target_precision")):
        if isinstance(written, dict) and hub in written and written[hub] != cal.get(key):
            return (
                f"{path}: calibration.{hub} = {written[hub]!r}, but metrics.json's is {cal.get(key)!r}; metrics.json is what "
                "predict applies and config.json is written from it: put config.json's value back, or delete config.json"
            )
    return None


def _pct(v) -> str:
    return f"{v * 100:.2f}%" if isinstance(v, (int, float)) else "not measured"


def model_card(meta: dict, metrics: dict, name: str = "") -> str:
    """A model card in Markdown: intended use, data, metrics, calibration and review share, limits, how to load."""
    cfg = meta.get("config") or {}
    data = meta.get("data") or {}
    cal = metrics.get("test_calibration") or {}
    cov = next(iter((cal.get("coverage_at_precision") or {}).values()), {})
    # the rule's words as fitted (evaluation/calibrate.promise); runs from before the guarantee have none
    rule = (metrics.get("calibration") or {}).get("promise") or "fitted by the old point estimate, with no guarantee"
    photos = (meta.get("input") or {}).get("kind") == "rgb-letterbox"
    weakest = sorted(metrics.get("test_per_class") or [], key=lambda c: c.get("recall", 1))[:2]
    weak = ", ".join(f"{c['class']} (recall {_pct(c.get('recall'))})" for c in weakest) or "not measured"
    seen = "an RGB photo letterboxed to a square." if photos else "a 28x28 grayscale image, Fashion-MNIST style (photos are cut out first)."
    lines = [
        "---",
        "library_name: fashionclf",
        "tags: [image-classification, fashion, product-photos]",
        "---",
        f"# {name or meta['model']}: {meta['model']} for {len(meta['classes'])} product categories",
        "",
        "## Intended use",
        "Categorising product photos for a shop's catalogue, with a calibrated confidence per answer and a",
        "`needs_review` flag: items below the review threshold go to a person. Not for anything but the classes below.",
        "",
        f"Classes: {', '.join(meta['classes'])}.",
        "",
        "## Data",
        f"Trained on {data.get('source', 'unknown data')} ({data.get('train', '?')} training, {data.get('val', '?')} validation, "
        f"{data.get('test', '?')} test images; split seed {data.get('split_seed', '?')}). Input: {seen}",
        "",
        "## Metrics (this run: one seed)",
        "| split | accuracy | loss |",
        "|---|---|---|",
        f"| test | {_pct(metrics.get('test_accuracy'))} | {metrics.get('test_loss', float('nan')):.4f} |",
        f"| validation | {_pct(metrics.get('val_accuracy'))} | {metrics.get('val_loss', float('nan')):.4f} |",
        "",
        "One run has no spread: the project's mean ± std over seeds for each recipe is in its docs/results pages.",
        "",
        "## Calibration and review",
        f"Temperature {((metrics.get('calibration') or {}).get('temperature'))}, fitted on validation; ECE on test "
        f"{_pct(cal.get('ece'))} (before calibration {_pct(cal.get('ece_uncalibrated'))}).",
        f"Review rule: {rule}. Under it, {_pct(cov.get('coverage'))} of the test images are labelled automatically, at a "
        f"realised precision of {_pct(cov.get('precision'))}; the rest go to a person.",
        "",
        "## Known limits",
        f"- Weakest classes on test: {weak}.",
        "- Shirt is confused with T-shirt/top, Pullover and Coat more than any other class.",
        "- The threshold was fitted on clean validation images: on phone photos, clutter and unusual lighting the realised "
        "precision of automatic labels is lower. Check it on the shop's own photos before trusting it.",
        "- Items of none of these classes still get one of them.",
        "",
        "## How to load",
        "```python",
        "import fashionclf",
        "run = fashionclf.load_run('PATH/TO/THIS/FOLDER')   # safetensors + JSON: nothing executes on load",
        "run.predict(['photo.jpg'])",
        "```",
        f"Recipe: `{cfg.get('model', meta['model'])}`, {cfg.get('epochs', '?')} epochs, seed {cfg.get('seed', '?')}; "
        "the resolved config is in meta.json (`fashionclf train --config meta.json` repeats it).",
        "",
    ]
    return "\n".join(lines)


def write_hub_files(run_dir: str | Path, name: str | None = None) -> list[Path]:
    """Write config.json and README.md into a run folder (atomically), from its meta.json and metrics.json.
    name: the run's name in the card (default: the folder's; save_run writes into a temporary folder)."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    atomic_write_text(run_dir / CONFIG, to_json(hub_config(meta, metrics)))
    atomic_write_text(run_dir / CARD, model_card(meta, metrics, name or run_dir.name))
    return [run_dir / CONFIG, run_dir / CARD]
