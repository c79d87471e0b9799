import pytest
import torch

from fashionclf.data.corrupt import CORRUPTIONS, SEVERITIES, corrupt


def _items(n=64, seed=0):
    """Light garment-like shapes on black: a filled ellipse of random size and a textured stripe."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    a = 6 + torch.rand(n, 1, 1, generator=g) * 6
    b = 4 + torch.rand(n, 1, 1, generator=g) * 8
    inside = ((ys - 14) / a) ** 2 + ((xs - 14) / b) ** 2 <= 1
    texture = 150 + 100 * torch.rand(n, 28, 28, generator=g)
    x = torch.where(inside, texture, torch.zeros(()))
    x[:, 8:10, :] = torch.where(inside[:, 8:10, :], torch.full((), 60.0), x[:, 8:10, :])
    return x.round().to(torch.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_range_determinism_and_severity_order(name):
    x = _items()
    outs = [corrupt(x, name, s, seed=3) for s in SEVERITIES]
    for o in outs:
        assert o.shape == x.shape and o.dtype == torch.uint8
    assert torch.equal(outs[2], corrupt(x, name, 3, seed=3))  # same seed, same result
    dist = [(o.float() - x.float()).abs().mean().item() for o in outs]
    assert dist[0] > 0, f"{name} at severity 1 changed nothing"
    # harsher severities move the images further from the clean ones
    assert all(b >= a * 0.98 for a, b in zip(dist, dist[1:])), (name, dist)
    assert dist[-1] > dist[0] * 1.3, (name, dist)


def test_unknown_names_and_severities():
    with pytest.raises(ValueError, match="unknown corruption 'fog'.*gaussian_noise"):
        corrupt(_items(2), "fog", 1)
    with pytest.raises(ValueError, match="severity 6"):
        corrupt(_items(2), "rotation", 6)
