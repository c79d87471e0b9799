"""Batched augmentation on tensors: one affine warp per batch, parameters drawn per sample.

The settings are core.config.AugmentConfig (a new augmentation is a field there, its function here and a
line in augment_batch). Everything here takes and returns float tensors (N, C, H, W) and a torch.Generator,
so a seed fixes the result and no Python loop runs over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fashionclf.core.config import AugmentConfig


def random_affine(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate, zoom, shift and flip each image of the batch with its own parameters (zero padding)."""
    n = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180)
    scale = uniform(1 - cfg.zoom, 1 + cfg.zoom)
    tx, ty = uniform(-cfg.shift, cfg.shift) * 2, uniform(-cfg.shift, cfg.shift) * 2  # grid units span [-1, 1]
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    # Drawn only when asked for, so configs without it keep the random stream (and results) they had.
    vflip = torch.where(torch.rand(n, generator=generator) < cfg.vflip, -1.0, 1.0) if cfg.vflip > 0 else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output coordinates to input coordinates; the flips negate the x and y input axes.
    theta = torch.stack([torch.stack([cos * flip, -sin * flip, tx], 1), torch.stack([sin * vflip, cos * vflip, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator | None = None, area=(0.02, 0.25)) -> torch.Tensor:
    """Zero a random rectangle in a fraction p of the images (Zhong et al., 2017), as one masked op."""
    n, _, h, w = x.shape
    a = torch.empty(n).uniform_(*area, generator=generator) * h * w
    ratio = torch.exp(torch.empty(n).uniform_(math.log(0.3), math.log(3.3), generator=generator))
    eh = (a * ratio).sqrt().clamp(1, h).round()
    ew = (a / ratio).sqrt().clamp(1, w).round()
    y0 = (torch.rand(n, generator=generator) * (h - eh + 1)).floor()
    x0 = (torch.rand(n, generator=generator) * (w - ew + 1)).floor()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    mask = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1)) & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1))
    mask &= (torch.rand(n, generator=generator) < p).view(n, 1, 1)
    return x.masked_fill(mask.unsqueeze(1).to(x.device), 0.0)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (separable, 5 taps) with its own sigma; sigma 0 leaves the image as it is."""
    t = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    w = torch.exp(-(t[None, :] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # (N, 5)
    n, c, h, wd = x.shape
    xp = F.pad(x.reshape(1, n * c, h, wd), (2, 2, 2, 2), mode="replicate")
    kx = w.repeat_interleave(c, 0).view(n * c, 1, 1, 5)
    ky = w.repeat_interleave(c, 0).view(n * c, 1, 5, 1)
    y = F.conv2d(F.conv2d(xp, kx, groups=n * c), ky, groups=n * c)
    return y.view(n, c, h, wd)


def random_photo(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """What converting a phone photo leaves behind, on a fraction p of the images (pixels in [0, 1]).

    Defocus blur, sensor noise, lower contrast, and a haze of leftover background lifting the black.
    Each degraded image draws its own strength of each; the rest pass unchanged.
    """
    n = x.shape[0]

    def u(lo, hi):
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(x.device).view(n, 1, 1, 1)

    pick = (torch.rand(n, generator=generator) < p).to(x.device).view(n, 1, 1, 1)
    y = _blur(x, u(0.0, 1.2).flatten())
    y = y * u(0.55, 1.0) + u(0.0, 0.25) * (1 - y) * u(0.0, 1.0)  # contrast down, haze where the image is dark
    noise = torch.randn(x.shape, generator=generator).to(x.device) * u(0.0, 0.08)
    y = (y + noise).clamp(0, 1)
    return torch.where(pick, y, x)


def levels(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """New black and white points on a fraction p of the images (pixels in [0, 1]), reversed half the time.

    Black maps to a level drawn in [0, 0.5] and white to one drawn at least 0.15 above it, up to 1:
    a gray background (a lifted black), washed-out contrast, or both. Half of the remapped images swap
    the two levels, so the item turns dark on light, the polarity a wrong background guess in the
    cut-out gives, at every contrast from a faint blend to a full negative.
    """
    n = x.shape[0]
    pick = torch.rand(n, generator=generator) < p
    lo = torch.rand(n, generator=generator) * 0.5
    hi = lo + 0.15 + torch.rand(n, generator=generator) * (1 - 0.15 - lo)
    swap = torch.rand(n, generator=generator) < 0.5
    black, white = torch.where(swap, hi, lo), torch.where(swap, lo, hi)
    black, white = torch.where(pick, black, 0.0), torch.where(pick, white, 1.0)  # the rest keep 0 -> 0, 1 -> 1
    shape = (n,) + (1,) * (x.dim() - 1)
    return black.to(x).view(shape) + (white - black).to(x).view(shape) * x


def cutmix(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al., 2019) on a fraction p of batches: one box, drawn per batch, of every image is
    replaced by the same box of a partner image from the batch.

    Returns (images, partner index per image, lam): the loss is lam * CE(own label) + (1 - lam) *
    CE(partner's label), lam being the share of pixels each image keeps. A batch left alone has lam 1.
    """
    n, _, h, w = x.shape
    if p <= 0 or torch.rand(1, generator=generator).item() >= p:
        return x, torch.arange(n, device=x.device), 1.0
    cut = math.sqrt(1 - torch.rand(1, generator=generator).item())  # box side / image side; lam ~ Beta(1, 1)
    ch, cw = round(h * cut), round(w * cut)
    cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)  # the box may overhang the image: clip it
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    partner = torch.randperm(n, generator=generator).to(x.device)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
    return x, partner, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    x = random_affine(x, cfg, generator)
    if cfg.erase > 0:
        x = random_erase(x, cfg.erase, generator)
    if cfg.photo > 0:
        x = random_photo(x, cfg.photo, generator)
    if cfg.levels > 0:  # after the photo haze, so a reversed image's haze is a light veil on a light ground
        x = levels(x, cfg.levels, generator)
    return x
