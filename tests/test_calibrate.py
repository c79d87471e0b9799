import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from fashionclf.evaluation.calibrate import (
    RULE,
    Promise,
    calibrate,
    calibration_report,
    coverage_at,
    ece,
    error_upper_bound,
    fit_temperature,
    guaranteed_rule,
    min_items,
    needs_review,
    point_estimate_threshold,
    promise,
    review_threshold,
    sequence_starts,
)


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


def test_old_point_estimate_and_coverage_hand_computed():
    probs = _probs([0.99, 0.95, 0.9, 0.8, 0.7], [0, 0, 0, 0, 0])
    labels = torch.tensor([0, 0, 0, 1, 0])  # running precision 1, 1, 1, 0.75, 0.8
    assert point_estimate_threshold(probs, labels, 0.99) == pytest.approx(0.9)
    assert point_estimate_threshold(probs, labels, 0.8) == pytest.approx(0.7)
    assert review_threshold(probs, labels, 0.99) is None  # five items promise nothing
    cov = coverage_at(probs, labels, 0.9)
    assert cov["coverage"] == pytest.approx(0.6) and cov["precision"] == 1.0
    assert needs_review(probs, 0.9).tolist() == [False, False, False, True, True]
    # nothing reaches the target: no threshold, everything to review
    assert point_estimate_threshold(probs, torch.tensor([1, 1, 1, 1, 1]), 0.99) is None
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
    cal = calibrate(logits[:4000], labels[:4000], target=0.8)
    rep = calibration_report(logits[4000:], labels[4000:], cal)
    assert rep["ece"] < rep["ece_uncalibrated"] / 3 and rep["ece"] < 0.035  # sampling noise of a 4000-item ECE is ~0.02
    cov = rep["coverage_at_precision"]["0.8"]
    assert 0 < cov["coverage"] < 1 and cov["precision"] >= 0.8  # guaranteed on other items drawn alike
    assert math.isclose(sum(b["count"] for b in rep["reliability"]), 4000)


def test_the_bound_is_clopper_pearsons_and_the_least_count_is_299():
    """The upper bound is where the exact binomial test rejects at delta; with no errors 1 - delta**(1/n)."""
    for k, n in [(0, 10), (0, 299), (3, 500), (20, 1000)]:
        ub = float(error_upper_bound(k, n, 0.05))
        assert binomtest(k, n, ub, alternative="less").pvalue == pytest.approx(0.05, rel=1e-6)
    assert float(error_upper_bound(0, 50, 0.05)) == pytest.approx(1 - 0.05 ** (1 / 50))
    assert error_upper_bound(5, 5, 0.05) == 1.0 and error_upper_bound(0, 0, 0.05) == 1.0
    assert min_items(0.99, 0.05) == 299 and float(error_upper_bound(0, 299, 0.05)) <= 0.01 < float(error_upper_bound(0, 298, 0.05))
    assert min_items(0.95, 0.1) == 45


def test_guaranteed_rule_hand_computed():
    """600 items by falling confidence, errors at ranks 400 and 450. 600 items allow two sequences (starts at 368
    and 736 items, each at delta / 2 = 0.025): the first passes up to 399 items (no error: bound 1 - 0.025**(1/399)
    = 0.92%) and stops at 400 (one error: 1.4%); the second starts beyond the items."""
    conf = torch.linspace(1, 0.4, 600)
    correct = torch.ones(600, dtype=torch.bool)
    correct[[399, 449]] = False
    assert sequence_starts(600, 0.99, 0.05) == ([368, 736], 0.025)
    assert float(error_upper_bound(0, 399, 0.025)) <= 0.01 < float(error_upper_bound(1, 400, 0.025))
    rule = guaranteed_rule(conf, correct, 0.99, 0.05)
    assert rule["accepted"] == 399 and rule["accepted_errors"] == 0 and rule["threshold"] == pytest.approx(float(conf[398]))
    assert rule["error_bound"] == pytest.approx(1 - 0.025 ** (1 / 399))
    assert rule["rule"] == RULE and rule["calibration_items"] == 600 and rule["needed"] == 0


def test_one_confident_mistake_does_not_stop_every_sequence():
    """2,400 items, all right but the fifth most confident: the first sequence fails at its start, the second
    (from 874 items, where one error is within the bound) runs to the end; a single sequence would label nothing."""
    conf = torch.linspace(1, 0.5, 2400)
    correct = torch.ones(2400, dtype=torch.bool)
    correct[4] = False
    starts, level = sequence_starts(2400, 0.99, 0.05)
    assert len(starts) == 4 and level == 0.0125
    assert float(error_upper_bound(1, starts[0], level)) > 0.01 >= float(error_upper_bound(1, starts[1], level))
    rule = guaranteed_rule(conf, correct)
    assert rule["accepted"] == 2400 and rule["accepted_errors"] == 1 and rule["threshold"] == pytest.approx(0.5)


def test_ties_are_accepted_together():
    conf = torch.cat([torch.full((400,), 0.97), torch.full((400,), 0.9)])
    correct = torch.ones(800, dtype=torch.bool)
    correct[-30:] = False  # the 0.9 group is 92.5% right: it cannot join
    rule = guaranteed_rule(conf, correct)
    assert rule["threshold"] == pytest.approx(0.97) and rule["accepted"] == 400


def test_too_few_items_label_nothing_and_say_how_many_more():
    conf, correct = torch.rand(30, generator=torch.Generator().manual_seed(0)), torch.ones(30, dtype=torch.bool)
    rule = guaranteed_rule(conf, correct)
    assert rule["threshold"] is None and rule["needed"] == 299 - 30
    assert "30 calibration items are too few" in rule["promise"] and "269 more" in rule["promise"]
    assert needs_review(_probs([0.999] * 3, [0] * 3), rule["threshold"]).all()
    # enough items but too many errors at the top: says so, also nothing automatic
    rule = guaranteed_rule(torch.linspace(1, 0, 1000), torch.arange(1000) % 10 != 0)
    assert rule["threshold"] is None and rule["needed"] == 0 and "too many errors" in rule["promise"]
    ok = guaranteed_rule(torch.linspace(1, 0.5, 400), torch.ones(400, dtype=torch.bool))
    assert ok["threshold"] == pytest.approx(0.5) and "at least 99% precise with 95% confidence" in ok["promise"]
    assert "old point estimate" in promise({"temperature": 1.0, "threshold": 0.9, "target_precision": 0.99})


def test_bad_promises_are_refused_clearly():
    for target, delta in [(1.0, 0.05), (0.0, 0.05), (0.99, 0.0), (0.99, 1.5)]:
        with pytest.raises(ValueError, match="target precision|delta"):
            Promise(target, delta)


def _draw(n, rng):
    """Synthetic calibration items whose true precision curve is known: confidence s ~ U(0, 1), right with
    probability 1 - 0.3 (1 - s)^3, so the precision of the items above t is 1 - 0.075 (1 - t)^3 (99% at t = 0.489)."""
    s = rng.random(n)
    return s, rng.random(n) < 1 - 0.3 * (1 - s) ** 3


def _true_precision(t):
    return 1.0 if t is None else 1 - 0.075 * (1 - t) ** 3


def test_the_guarantee_holds_in_simulation_and_the_old_rule_does_not():
    """Over 1,000 draws of 2,000 calibration items, the guaranteed rule's true precision is at least 99% in at least
    95% of draws (less 1.5 points of Monte Carlo slack); measured the same way the old point estimate reaches it in
    about half. The guaranteed rule must also label something in most draws, or the test would pass vacuously."""
    rng = np.random.default_rng(0)
    draws = [_draw(2000, rng) for _ in range(1000)]
    new = [guaranteed_rule(torch.from_numpy(s), torch.from_numpy(c))["threshold"] for s, c in draws]
    old = [point_estimate_threshold(_probs_of(s), _labels_of(c), 0.99) for s, c in draws]
    old = [None if t is None else 2 * t - 1 for t in old]  # back from the probability 0.5 + s / 2 to s
    held = np.mean([_true_precision(t) >= 0.99 for t in new])
    assert held >= 0.95 - 0.015, held
    assert np.mean([t is not None for t in new]) > 0.5
    assert 0.3 < np.mean([_true_precision(t) >= 0.99 for t in old]) < 0.7


def _probs_of(s):
    """Two-class probabilities whose top class 0 has confidence s, floored at 1/2 (the same order as s)."""
    top = torch.from_numpy(0.5 + s / 2)
    return torch.stack([top, 1 - top], 1)


def _labels_of(correct):
    return torch.from_numpy((~correct).astype(np.int64))
