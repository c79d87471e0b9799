"""training/refit.py: the head and review rule after a person's decisions, from stored vectors."""

import pytest
import torch

from fashionclf.training.embedded import _fold, _unfold, fit_head, view_logits
from fashionclf.training.refit import refit


def _vectors(n_per_class=60, classes=3, dim=16, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(classes, dim, generator=g) + 10  # raw features far from 0: standardising matters
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y][:, None, :] + spread * torch.randn(len(y), 2, dim, generator=g)  # two views per photo
    return x, y


def test_fold_and_unfold_are_inverse():
    h = torch.nn.Linear(8, 3)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    back = _unfold(_fold(h, mean, std), mean, std)
    torch.testing.assert_close(back.weight, h.weight)
    torch.testing.assert_close(back.bias, h.bias, atol=1e-5, rtol=1e-5)


def test_a_refit_learns_the_decisions_and_keeps_its_promise_on_new_rows():
    x, y = _vectors(n_per_class=300)  # the guaranteed rule needs a few hundred calibration items to label anything
    held = torch.arange(len(y)) % 3 == 0
    fit = refit(x[~held], y[~held], 3, 1e-3)
    assert fit.rule["temperature"] > 0 and fit.seconds > 0
    new_x, new_y = x[held], y[held]
    pred, conf, auto = fit.decide(new_x)
    assert (pred == new_y).float().mean() > 0.95
    assert auto.any() and (pred[auto] == new_y[auto]).float().mean() >= 0.99


def test_a_warm_start_reaches_the_cold_fit():
    """Starting from the last head changes how many steps it takes, not where the convex fit ends."""
    x, y = _vectors(spread=6.0)  # overlapping classes: the optimum is a finite, unique point
    none = torch.empty(0, 2, 16), torch.empty(0, dtype=torch.long)
    cold, _ = fit_head(x, y, *none, 3, decays=(1e-2,))
    start, _ = fit_head(x[:90], y[:90], *none, 3, decays=(1e-2,))
    warm, _ = fit_head(x, y, *none, 3, decays=(1e-2,), init=start)
    torch.testing.assert_close(view_logits(warm, x)[0], view_logits(cold, x)[0], atol=2e-3, rtol=1e-3)


def test_decisions_that_do_not_match_their_vectors_are_refused():
    x, y = _vectors()
    with pytest.raises(ValueError, match="n labels"):
        refit(x, y[:-1], 3, 1e-3)
    with pytest.raises(ValueError, match="n labels"):
        refit(x[:, 0], y, 3, 1e-3)
