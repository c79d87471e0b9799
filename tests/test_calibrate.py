import math

import pytest
import torch

from fashionclf.evaluation.calibrate import calibrate, calibration_report, coverage_at, ece, fit_temperature, needs_review, review_threshold


def _probs(conf, pred, k=10):
    """Rows with the given max probability on the given class, the rest spread evenly."""
    p = torch.tensor([[(1 - c) / (k - 1)] * k for c in conf])
    p[torch.arange(len(conf)), torch.tensor(pred)] = torch.tensor(conf)
    return p


def test_ece_hand_computed():
    # ten items at confidence 0.9, eight right: |0.8 - 0.9| = 0.1
    probs = _probs([0.9] * 10, [0] * 10)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert ece(probs, labels) == pytest.approx(0.1, abs=1e-6)
    # two bins, half the items each: 0.5 * |1 - 0.6| + 0.5 * |0.8 - 0.95| = 0.275
    probs = _probs([0.6] * 5 + [0.95] * 5, [0] * 10)
    labels = torch.tensor([0] * 5 + [0] * 4 + [1])
    assert ece(probs, labels) == pytest.approx(0.275, abs=1e-6)


def test_review_threshold_and_coverage_hand_computed():
    probs = _probs([0.99, 0.95, 0.9, 0.8, 0.7], [0, 0, 0, 0, 0])
    labels = torch.tensor([0, 0, 0, 1, 0])  # running precision 1, 1, 1, 0.75, 0.8
    assert review_threshold(probs, labels, 0.99) == pytest.approx(0.9)
    assert review_threshold(probs, labels, 0.8) == pytest.approx(0.7)
    cov = coverage_at(probs, labels, 0.9)
    assert cov["coverage"] == pytest.approx(0.6) and cov["precision"] == 1.0
    assert needs_review(probs, 0.9).tolist() == [False, False, False, True, True]
    # nothing reaches the target: no threshold, everything to review
    assert review_threshold(probs, torch.tensor([1, 1, 1, 1, 1]), 0.99) is None
    assert coverage_at(probs, labels, None)["coverage"] == 0.0 and needs_review(probs, None).all()


def test_temperature_recovers_a_known_scale():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=g).flatten()  # labels drawn from softmax(z): z is calibrated
    assert fit_temperature(2.5 * z, labels) == pytest.approx(2.5, rel=0.05)  # overconfident by 2.5x
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.05)


def test_calibration_lowers_ece_and_keeps_predictions():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8000, 10, generator=g) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=g).flatten()
    logits = 3 * z
    cal = calibrate(logits[:4000], labels[:4000], target=0.9)
    rep = calibration_report(logits[4000:], labels[4000:], cal)
    assert rep["ece"] < rep["ece_uncalibrated"] / 3 and rep["ece"] < 0.035  # sampling noise of a 4000-item ECE is ~0.02
    cov = rep["coverage_at_precision"]["0.9"]
    assert 0 < cov["coverage"] < 1 and cov["precision"] >= 0.87  # chosen on other items: near the target, not exactly
    assert math.isclose(sum(b["count"] for b in rep["reliability"]), 4000)
