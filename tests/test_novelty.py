"""evaluation/novelty.py: the embedding "none of these" score, on simulated features where the truth is known."""

from __future__ import annotations

import pytest
import torch

from fashionclf.evaluation import novelty
from fashionclf.evaluation.novelty import PARTS, check_novelty, embedding_score, fit_novelty, part_scores
from fashionclf.evaluation.unknown import threshold_for

DIM, CLASSES = 48, 3


def _photos(centres: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, 2 views, DIM): a class centre plus the photo's own noise, and a mirror view a little off it."""
    g = torch.Generator().manual_seed(seed)
    x = centres[labels] + torch.randn(len(labels), DIM, generator=g)
    return torch.stack([x, x + 0.1 * torch.randn(x.shape, generator=g)], 1)


def _world(seed: int = 0):
    g = torch.Generator().manual_seed(100 + seed)
    centres = 4 * torch.randn(CLASSES + 1, DIM, generator=g)  # the last: a kind of photo the run never saw
    head = centres[:CLASSES]  # a head that prefers the nearest known centre: its raw logits

    def draw(n, cls, s):
        y = torch.arange(n) % len(cls)
        v = _photos(centres, torch.tensor(cls)[y], s)
        return v, torch.tensor(cls)[y], v.mean(1) @ head.T / DIM

    return draw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_threshold_on_validation_keeps_its_share_known_and_flags_the_unseen(seed):
    """The promise the unknown rule makes: about known_share (95%) of new photos of the run's classes counted known,
    here measured on 3,000 fresh ones, while photos of a kind never seen score above the threshold."""
    draw = _world(seed)
    tv, ty, _ = draw(600, [0, 1, 2], 10 * seed)
    vv, _, vraw = draw(400, [0, 1, 2], 10 * seed + 1)
    nov = fit_novelty(tv, ty, vv, vraw)
    threshold = threshold_for(embedding_score(nov, vv, vraw), 0.95)
    new_v, _, new_raw = draw(3000, [0, 1, 2], 10 * seed + 2)
    known = (embedding_score(nov, new_v, new_raw) <= threshold).float().mean().item()
    assert 0.92 <= known <= 0.98
    unseen_v, _, unseen_raw = draw(500, [3], 10 * seed + 3)
    assert (embedding_score(nov, unseen_v, unseen_raw) > threshold).float().mean().item() >= 0.95
    # each distance alone already tells the unseen kind apart; the validation photos' parts are scaled to mean 0, sd 1
    parts, seen = part_scores(nov, unseen_v, unseen_raw), part_scores(nov, new_v, new_raw)
    for name in ("knn", "mahalanobis"):
        assert parts[name].median() > seen[name].quantile(0.99)
    z = embedding_score(nov, vv, vraw)
    assert abs(z.mean().item()) < 1e-3 and nov["scale"].shape == (len(PARTS), 2)


def test_the_knn_bank_keeps_at_most_bank_rows_training_photos(monkeypatch):
    draw = _world()
    tv, ty, _ = draw(300, [0, 1, 2], 0)
    vv, _, vraw = draw(50, [0, 1, 2], 1)
    monkeypatch.setattr(novelty, "BANK_ROWS", 40)
    nov = fit_novelty(tv, ty, vv, vraw)
    assert nov["bank"].shape == (40, DIM) and nov["bank"].dtype == torch.float16
    assert torch.isfinite(embedding_score(nov, vv, vraw)).all()


def test_damaged_tensors_are_named():
    draw = _world()
    tv, ty, _ = draw(120, [0, 1, 2], 0)
    vv, _, vraw = draw(30, [0, 1, 2], 1)
    nov = fit_novelty(tv, ty, vv, vraw)
    assert check_novelty(nov) is None
    assert "lacks bank" in check_novelty({k: t for k, t in nov.items() if k != "bank"})
    assert "std has shape (5,)" in check_novelty({**nov, "std": nov["std"][:5]})
    assert "precision has shape" in check_novelty({**nov, "proj": nov["proj"][:, :3]})
    assert "NaN" in check_novelty({**nov, "mean": nov["mean"] * float("nan")})
    with pytest.raises(ValueError, match="at least 2 validation photos"):
        fit_novelty(tv, ty, vv[:1], vraw[:1])
