import torch

from fashionclf.data.augment import AugmentConfig, augment_batch, random_affine, random_erase


def _batch():
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 8:20, 10:18] = 1.0
    return x


def test_shape_range_and_determinism():
    cfg = AugmentConfig(rotation=15, zoom=0.1, shift=0.1, hflip=True, erase=0.5)
    a = augment_batch(_batch(), cfg, torch.Generator().manual_seed(1))
    b = augment_batch(_batch(), cfg, torch.Generator().manual_seed(1))
    c = augment_batch(_batch(), cfg, torch.Generator().manual_seed(2))
    assert a.shape == (16, 1, 28, 28)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_parameters_differ_per_sample():
    out = random_affine(_batch(), AugmentConfig(), torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten().round(decimals=3).tolist()) for o in out}) == 16


def test_identity_when_disabled():
    x = _batch()
    out = random_affine(x, AugmentConfig(rotation=0, zoom=0, shift=0, hflip=False), torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_only_mirrors():
    x = torch.rand(64, 1, 28, 28)
    out = random_affine(x, AugmentConfig(rotation=0, zoom=0, shift=0, hflip=True), torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x)])
    same = torch.tensor([torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)])
    assert (flipped | same).all() and 10 < flipped.sum() < 54


def test_erase_zeroes_a_rectangle_in_some_images():
    x = torch.ones(100, 1, 28, 28)
    out = random_erase(x, 0.5, torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).any(1)
    assert 25 < erased.sum() < 75
    assert torch.equal(out[~erased], x[~erased])


def test_photo_degradation_share_range_and_determinism():
    from fashionclf.data.augment import random_photo

    x = torch.rand(400, 1, 28, 28)
    x[:, :, :6] = 0  # a black band, as Fashion-MNIST's background
    y1 = random_photo(x, 0.5, torch.Generator().manual_seed(1))
    y2 = random_photo(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(y1, y2) and y1.min() >= 0 and y1.max() <= 1
    changed = (y1 - x).abs().flatten(1).amax(1) > 1e-6
    assert 0.4 < changed.float().mean() < 0.6  # about the share asked for
    assert y1[changed][:, :, :6].mean() > 0.005  # haze and noise lift the black background
    assert torch.equal(random_photo(x, 0.0, torch.Generator().manual_seed(1)), x)


def test_cutmix_pastes_one_box_from_a_partner_and_reports_its_share():
    from fashionclf.data.augment import cutmix

    n = 32
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 20, 24).clone()  # image i is all i
    out, partner, lam = cutmix(x, 1.0, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and 0 <= lam < 1
    kept = (out == x).all(1)  # (N, H, W): pixels that are still the image's own
    moved = partner != torch.arange(n)
    assert torch.equal(kept[~moved].all(-1).all(-1), torch.ones(int((~moved).sum()), dtype=torch.bool))
    share = kept[moved].float().mean(dim=(1, 2))
    assert torch.allclose(share, torch.full_like(share, lam))  # lam is exactly the share of own pixels
    pasted = ~kept[moved]
    assert torch.equal(out[moved][:, 0][pasted], partner[moved].float().view(-1, 1, 1).expand_as(pasted)[pasted])
    again = cutmix(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], out) and again[2] == lam


def test_cutmix_leaves_batches_alone_at_p_zero_and_mixes_about_p_of_them():
    from fashionclf.data.augment import cutmix

    x = torch.rand(8, 1, 28, 28)
    out, partner, lam = cutmix(x, 0.0, torch.Generator().manual_seed(0))
    assert out is x and lam == 1.0 and torch.equal(partner, torch.arange(8))
    g = torch.Generator().manual_seed(0)
    mixed = sum(cutmix(x, 0.3, g)[2] < 1 for _ in range(400))
    assert 80 < mixed < 160


def test_vflip_only_turns_upside_down_and_leaves_the_random_stream_alone_when_off():
    x = torch.rand(64, 1, 28, 28)
    cfg = AugmentConfig(rotation=0, zoom=0, shift=0, hflip=False, vflip=0.5)
    out = random_affine(x, cfg, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.allclose(o, i.flip(-2), atol=1e-5) for o, i in zip(out, x)])
    same = torch.tensor([torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)])
    assert (flipped | same).all() and 10 < flipped.sum() < 54
    # vflip 0 draws nothing: a config without it augments exactly as before the option existed,
    # whose five draws of n numbers were rotation, zoom, shift x, shift y and the mirror
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    random_affine(x, AugmentConfig(), g1)
    for _ in range(5):
        torch.rand(len(x), generator=g2)
    assert torch.equal(torch.rand(8, generator=g1), torch.rand(8, generator=g2))


def test_levels_remaps_black_and_white_and_reverses_about_half():
    from fashionclf.data.augment import levels

    n = 2000
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 8:20, 8:20] = 1.0  # a white item on black
    y = levels(x, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(y, levels(x, 0.5, torch.Generator().manual_seed(0)))
    assert y.min() >= 0 and y.max() <= 1
    ground, item = y[:, 0, 0, 0], y[:, 0, 10, 10]
    changed = (ground != 0) | (item != 1)
    assert 0.45 < changed.float().mean() < 0.55  # about the share asked for
    assert torch.equal(y[~changed], x[~changed])
    gap = (item - ground)[changed]
    assert (gap.abs() >= 0.15 - 1e-6).all()  # some contrast always survives
    reversed_ = (gap < 0).float().mean()
    assert 0.4 < reversed_ < 0.6  # dark on light about half the time
    assert ground[changed & (item > ground)].max() <= 0.5 + 1e-6  # black lifted at most to mid-gray
    assert torch.equal(levels(x, 0.0, torch.Generator().manual_seed(0)), x)
