"""training/refit.py: the head and review rule after a person's decisions, from stored vectors."""

import pytest
import torch

from fashionclf.engine.inference import head_view_logits
from fashionclf.training.embedded import fit_head, fit_linear, to_raw, to_standardised
from fashionclf.training.refit import ReviewHead, fit_heads


def _vectors(n_per_class=60, classes=3, dim=16, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(classes, dim, generator=g) + 10  # raw features far from 0: standardising matters
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y][:, None, :] + spread * torch.randn(len(y), 2, dim, generator=g)  # two views per photo
    return x, y


def test_fold_and_unfold_are_inverse():
    h = torch.nn.Linear(8, 3)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    back = to_standardised(to_raw(h, mean, std), mean, std)
    torch.testing.assert_close(back.weight, h.weight)
    torch.testing.assert_close(back.bias, h.bias, atol=1e-5, rtol=1e-5)


def test_a_refit_learns_the_decisions_and_keeps_its_promise_on_new_rows():
    x, y = _vectors(n_per_class=300)  # the guaranteed rule needs a few hundred calibration items to label anything
    held = torch.arange(len(y)) % 3 == 0
    fit = ReviewHead(x[~held], y[~held], 3, 1e-3)
    assert fit.rule["temperature"] > 0 and fit.seconds > 0 and len(fit.cal_logits) == (~held).sum()
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
    torch.testing.assert_close(head_view_logits(warm, x)[0], head_view_logits(cold, x)[0], atol=2e-3, rtol=1e-3)


def test_decisions_that_do_not_match_their_vectors_are_refused():
    x, y = _vectors()
    with pytest.raises(ValueError, match="n labels"):
        ReviewHead(x, y[:-1], 3, 1e-3)
    with pytest.raises(ValueError, match="n labels"):
        ReviewHead(x[:, 0], y, 3, 1e-3)
    head = ReviewHead(x, y, 3, 1e-3)
    with pytest.raises(ValueError, match="class indices 0..2"):
        head.add(x[:2], torch.tensor([0, 3]))
    assert len(head.labels) == len(y)  # a refused decision changes nothing


def test_decisions_train_every_head_but_never_become_calibration_items():
    """The desk's decided photos are a sample the model chose (its least sure): they train, and the rule stays
    calibrated on the run's own photos, each scored by the fold head that left it out and learned the decisions."""
    x, y = _vectors(n_per_class=100, spread=4.0)
    first, rest = torch.arange(len(y)) % 5 != 0, torch.arange(len(y)) % 5 == 0
    head = ReviewHead(x[first], y[first], 3, 1e-3, views="rows")
    before = head.cal_logits.clone()
    head.add(x[rest][:20], y[rest][:20])
    assert len(head.labels) == first.sum() + 20 and len(head.cal_logits) == first.sum()
    assert not torch.equal(head.cal_logits, before)  # the fold heads learned the decisions
    # fold 0's logits are those of a head fitted without fold 0's photos, with the decisions (warm start: same optimum),
    # on features standardised by the run's rows
    out = head.part == 0
    xs = torch.cat([x[first][~out], x[rest][:20]]).reshape(-1, 16)
    ys = torch.cat([y[first][~out], y[rest][:20]]).repeat_interleave(2)
    fresh = to_raw(fit_linear((xs - head.mean) / head.std, ys, 3, 1e-3), head.mean, head.std)
    torch.testing.assert_close(head.cal_logits[out], head_view_logits(fresh, x[first][out])[0], atol=2e-3, rtol=1e-3)
    # and the head is the fit on all rows (on the same standardisation)
    xs = torch.cat([x[first], x[rest][:20]]).reshape(-1, 16)
    ys = torch.cat([y[first], y[rest][:20]]).repeat_interleave(2)
    cold = to_raw(fit_linear((xs - head.mean) / head.std, ys, 3, 1e-3), head.mean, head.std)
    torch.testing.assert_close(head_view_logits(head.head, x)[0], head_view_logits(cold, x)[0], atol=2e-3, rtol=1e-3)
    assert 0 < head.head_seconds <= head.seconds


def test_heads_fitted_together_are_each_heads_own_fit():
    """fit_heads shares one L-BFGS among heads with their own rows; each must end where fitting it alone ends."""
    x, y = _vectors(spread=6.0)
    rows, ys = x.reshape(-1, 16), y.repeat_interleave(2)
    xs = (rows - rows.mean(0)) / rows.std(0)
    every = torch.arange(len(ys))
    masks = torch.stack([every >= 0, every % 3 != 0, every % 10 < 4])  # each head sees every class
    together = fit_heads(xs, ys, masks, 1e-2, torch.zeros(3, 3, 17))
    for k in range(3):
        alone = fit_linear(xs[masks[k]], ys[masks[k]], 3, 1e-2)
        torch.testing.assert_close(together[k, :, :-1] @ xs.T + together[k, :, -1:], alone(xs).T, atol=2e-3, rtol=1e-3)


def test_a_head_fitted_on_averaged_views_learns_decisions_as_averaged_views():
    """The default, as store runs fit their head since 2026-12-07 (embedded.fit_rows): one row per photo, the mean of
    its views, for the run's photos and the decided ones alike; the refitted head is that fit's."""
    x, y = _vectors(n_per_class=60, spread=4.0)
    head = ReviewHead(x[10:], y[10:], 3, 1e-3)
    head.add(x[:10], y[:10])
    assert head.xs.shape == (len(y), 16) and len(head.labels) == len(y)  # one row per photo
    xs, ys = torch.cat([x[10:], x[:10]]).mean(1), torch.cat([y[10:], y[:10]])
    cold = to_raw(fit_linear((xs - head.mean) / head.std, ys, 3, 1e-3), head.mean, head.std)
    torch.testing.assert_close(head_view_logits(head.head, x)[0], head_view_logits(cold, x)[0], atol=2e-3, rtol=1e-3)
