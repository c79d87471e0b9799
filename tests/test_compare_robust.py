"""Robustness in the seed study (issue 21 item 1): the rule that weighs it, the Model 4 paragraph, and compare
scoring every run on the corruption suite and on a folder of labelled photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import study_row, synthetic_bars
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.data.fashion_mnist import CLASSES, DataError, FashionMNIST
from fashionclf.study.report import recommend, recommendation_blocks, summarize
from fashionclf.study.robust import claim_blocks

# --------------------------------------------------------------------------- the rule


def test_rule_takes_the_more_robust_model_within_one_point_even_if_slower():
    runs = [
        study_row("fast", val=0.930, ips=50_000, corrupted=0.60, photo=0.50),
        study_row("robust", val=0.921, ips=900, corrupted=0.70, photo=0.60),  # 0.9 points below the best: in the tier
    ]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "robust" and "**robust**" in text
    assert "within 1.0 points of the best (93.00%)" in text
    assert "the mean of its corrupted mean accuracy and its photo accuracy" in text
    assert "fast (robustness score 55.00%), robust (robustness score 65.00%)" in text
    assert "robustness score 65.00%, 1,000 parameters" in text


def test_rule_score_is_the_mean_of_both_figures():
    # 'a' leads on the corruption suite, 'b' on the mean of both figures: the mean decides
    runs = [study_row("a", corrupted=0.80, photo=0.40), study_row("b", corrupted=0.65, photo=0.65)]
    assert recommend(summarize(runs))[0]["model"] == "b"


def test_a_model_outside_the_tier_never_wins():
    runs = [
        study_row("a", val=0.930, ips=100, corrupted=0.50, photo=0.50),
        study_row("b", val=0.925, ips=100, corrupted=0.55, photo=0.52),
        study_row("c", val=0.915, ips=90_000, corrupted=0.99, photo=0.99),  # 1.5 points below: most robust and fastest
    ]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "b" and "Candidates: a (" in text and "c (" not in text


def test_rule_with_photos_only():
    runs = [study_row("a", ips=5000, photo=0.40), study_row("b", ips=100, photo=0.45)]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "b" and "highest robustness score (its photo accuracy)" in text


def test_rule_with_the_corruption_suite_only():
    runs = [study_row("a", ips=5000, corrupted=0.62), study_row("b", ips=100, corrupted=0.61)]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "a" and "highest robustness score (its corrupted mean accuracy)" in text


def test_rule_weighs_only_figures_every_candidate_has():
    # photos were scored for 'a' only: comparing its two-figure mean with b's corruption figure would be unfair
    runs = [study_row("a", corrupted=0.60, photo=0.90), study_row("b", corrupted=0.70)]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "b" and "(its corrupted mean accuracy)" in text


def test_ties_in_robustness_go_to_the_faster_model():
    runs = [study_row("slow", ips=100, corrupted=0.6, photo=0.5), study_row("quick", ips=200, corrupted=0.5, photo=0.6)]
    assert recommend(summarize(runs))[0]["model"] == "quick"


def test_unmeasured_robustness_keeps_the_old_rule_and_wording():
    runs = [study_row("a", val=0.930, ips=100), study_row("b", val=0.925, ips=900)]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "b"
    assert "take the one with the fastest inference, then the fewest parameters (robustness not measured in this study)" in text
    assert "robustness score" not in text


def test_summarize_gives_mean_and_std_of_each_figure_over_seeds():
    rows = summarize(
        [study_row("a", 0, corrupted=0.60, photo=0.5), study_row("a", 1, corrupted=0.70), study_row("b", corrupted=0.5, photo=0.4)]
    )
    a, b = rows
    assert abs(a["corrupted"] - 0.65) < 1e-12 and abs(a["corrupted_std"] - 0.0707106781) < 1e-8
    assert a["photo"] is None  # seed 1 has no photo figure: not measured for the model
    assert (b["corrupted"], b["corrupted_std"], b["photo"], b["photo_std"]) == (0.5, 0.0, 0.4, 0.0)


# --------------------------------------------------------------------------- the Model 4 paragraph


def _ladder(advanced: tuple[float, float], seeds: int = 1) -> list[dict]:
    figures = {"mlp": (0.50, 0.40), "tuned_cnn": (0.60, 0.50), "advanced_cnn": advanced}
    return summarize([study_row(m, s, corrupted=c + 0.01 * s, photo=p - 0.01 * s) for m, (c, p) in figures.items() for s in range(seeds)])


def _claim_text(rows) -> str:
    blocks = claim_blocks(rows)
    assert len(blocks) == 2 and blocks[0].text == "Is Model 4 the robust one?"
    return blocks[1].text


def test_model4_paragraph_when_advanced_cnn_is_the_most_robust():
    text = _claim_text(_ladder((0.72, 0.55)))
    assert '"makes it robust to imperfect real-world input"' in text
    assert "its corrupted mean accuracy is 72.00% against mlp 50.00%, tuned_cnn 60.00%: the highest of the 3 models" in text
    assert "its photo accuracy is 55.00% against mlp 40.00%, tuned_cnn 50.00%: the highest of the 3 models" in text
    assert "advanced_cnn is the most robust model of this study" in text and "63.50% against 55.00% for the next, tuned_cnn" in text


def test_model4_paragraph_when_advanced_cnn_is_not_the_most_robust():
    text = _claim_text(_ladder((0.56, 0.52)))
    assert "its corrupted mean accuracy is 56.00% against mlp 50.00%, tuned_cnn 60.00%: rank 2 of 3, 4.00 points below tuned_cnn" in text
    assert "its photo accuracy is 52.00% against mlp 40.00%, tuned_cnn 50.00%: the highest of the 3 models" in text
    assert "advanced_cnn is not the most robust model of this study: tuned_cnn has the highest robustness score" in text
    assert "55.00% against 54.00%" in text and "most robust model of this study:" in text
    # level on the mean of both figures: neither sentence, a shared first place
    tie = _claim_text(_ladder((0.58, 0.52)))
    assert "shares the highest robustness score" in tie and "with tuned_cnn, 55.00%" in tie


def test_model4_paragraph_weighs_the_gap_against_the_seeds_spread():
    rows = _ladder((0.61, 0.50), seeds=2)  # 0.5 points ahead, the seeds 1 point apart
    text = _claim_text(rows)
    assert "is the most robust model" in text and "the gap is within the spread over seeds" in text
    assert "larger than the spread" in _claim_text(_ladder((0.80, 0.70), seeds=2))


def test_model4_paragraph_only_with_advanced_cnn_and_measured_robustness():
    assert claim_blocks(summarize([study_row("mlp", corrupted=0.5), study_row("tuned_cnn", corrupted=0.6)])) == []
    assert claim_blocks(summarize([study_row("mlp"), study_row("advanced_cnn")])) == []
    blocks = recommendation_blocks(_ladder((0.72, 0.55)))
    assert [type(b).__name__ for b in blocks] == ["Heading", "Paragraph", "Heading", "Paragraph"]


# --------------------------------------------------------------------------- compare, for real


def _photos(root, names=("tee", "pants", "bag", "hat"), per=3):
    """Labelled photos: a dark item on a light background, one subfolder per name, a few sizes each."""
    for k, n in enumerate(names):
        (root / n).mkdir(parents=True)
        for i in range(per):
            img = np.full((96, 80 + 8 * i, 3), 235, np.uint8)
            img[15 + 5 * k : 80, 20 + 3 * i : 60] = 30 + 20 * k
            Image.fromarray(img).save(root / n / f"{i}.png")
    return root


def _synthetic() -> FashionMNIST:
    x, y = synthetic_bars(20)
    return FashionMNIST(x[:120], y[:120], x[120:160], y[120:160], x[160:], y[160:], "synthetic", classes=CLASSES)


def test_photos_are_checked_before_anything_trains(tmp_path):
    from fashionclf import api, recipe

    photos = _photos(tmp_path / "photos")
    configs = [recipe("mlp", epochs=1, precision="fp32")]
    cases = [
        (tmp_path / "missing", None, "is not a folder"),
        (photos, {"tee": "T-shirt/top", "pants": "Trouser"}, "match no class"),  # 'hat' left unmapped
        (photos, {"tee": "Tee-shirt", "pants": "Trouser", "hat": None}, "not classes of this model"),
        (photos, {"tee": None, "pants": None, "hat": None, "bag": None}, "leaves no folder in"),
    ]
    for folder, class_map, words in cases:
        with pytest.raises(DataError, match=words):
            api.compare(configs, _synthetic(), tmp_path / "study", photos=folder, class_map=class_map)
        assert not (tmp_path / "study" / "runs").exists()


def test_the_corruption_suite_is_on_by_default_and_refused_for_image_folder_data(tmp_path):
    from fashionclf.study.compare import compare

    rgb = FashionMNIST(*(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4)) * 3, "photos", classes=("a", "b", "c", "d"))
    assert compare([], rgb, tmp_path / "a", robustness_images=None) == {"runs": []}  # the default leaves it off there
    with pytest.raises(DataError, match="28x28 grayscale"):
        compare([], rgb, tmp_path / "b", robustness_images=100)


@pytest.mark.slow
@pytest.mark.data
def test_compare_scores_every_run_on_corruptions_and_photos(tmp_path, capsys, real_data_dir):
    import fashionclf

    photos = _photos(tmp_path / "photos")
    out = tmp_path / "study"
    study = ["compare", "--models", "mlp", "--seeds", "2", "--epochs", "1", "--train-limit", "1000", "--val-size", "500"]
    study += ["--robustness", "60", "--photos", str(photos), "--precision", "fp32", "--quiet", "--data-dir", str(real_data_dir)]
    args = [*study, "--class-map", "tee=T-shirt/top,pants=Trouser,hat=-", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["photos"]["folder"] == str(photos) and results["photos"]["images"] == 9  # hat's 3 left out by the map
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    for r in results["runs"]:
        assert 0 < r["robustness"] < 1 and 0 <= r["photo_accuracy"] <= 1
        # the photos converted as predict converts them: what Run.evaluate(data=FOLDER) says
        rep = fashionclf.load_run(out / r["run_dir"]).evaluate(
            data=photos, class_map={"tee": "T-shirt/top", "pants": "Trouser", "hat": None}
        )
        assert r["photo_accuracy"] == rep["accuracy"]
        assert json.loads((out / r["run_dir"] / "robustness.json").read_text())["images"] == 60
    md = (out / "report.md").read_text()
    assert "| corrupted mean % | photo acc % |" in md
    photo = [r["photo_accuracy"] * 100 for r in results["runs"]]
    assert f"{np.mean(photo):.2f} ± {np.std(photo, ddof=1):.2f}" in md
    assert f"the 9 labelled photos of {photos}" in md and "on the first 60 validation images" in md
    assert "within 1.0 points of the best" in md and "(the mean of its corrupted mean accuracy and its photo accuracy)" in md
    assert "corrupted" in printed and "photos" in printed

    # Run again: both runs are reused, and the photo figure is computed for them all the same
    (out / "results.json").unlink()
    mtime = (out / "runs" / "mlp-s0" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert (out / "runs" / "mlp-s0" / "model.safetensors").stat().st_mtime_ns == mtime
    assert [r["photo_accuracy"] for r in again["runs"]] == [r["photo_accuracy"] for r in results["runs"]]
    capsys.readouterr()

    # A class map naming no class of the data: one clear error, nothing trained
    assert main([*study, "--class-map", "tee=Tee-shirt,hat=-", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "not classes of this model" in err and "Traceback" not in err and not (tmp_path / "other").exists()
