"""A corruption suite in the spirit of Fashion-MNIST-C / MNIST-C: what imperfect input does to a model.

Each corruption maps uint8 images (N, 28, 28) to uint8 images of the same shape at a severity 1-5,
deterministically for a given seed, as batched tensor operations. Severity 1 is mild, 5 is harsh;
the parameters below are the whole definition of the suite, so its numbers can be reproduced.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)


def _unit(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float().unsqueeze(1) / 255


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8)


def _affine(x_u8, angle_deg=0.0, shear=0.0, scale=1.0, shift=0.0, seed=0):
    """One warp per image; the sign of each rotation/shear/shift is drawn per image (seeded)."""
    n = len(x_u8)
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    a = sign * math.radians(angle_deg)
    sh = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) * shear
    direction = torch.rand(n, generator=g) * 2 * math.pi
    tx, ty = torch.cos(direction) * shift * 2 / 28, torch.sin(direction) * shift * 2 / 28  # shift in pixels -> grid units
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    theta = torch.stack([torch.stack([cos, -sin + sh / scale, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    x = _unit(x_u8)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return _u8(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def gaussian_noise(x_u8, severity, seed=0):
    sigma = (0.04, 0.08, 0.12, 0.18, 0.26)[severity - 1]
    g = torch.Generator().manual_seed(seed)
    x = _unit(x_u8)
    return _u8(x + torch.randn(x.shape, generator=g) * sigma)


def impulse_noise(x_u8, severity, seed=0):
    p = (0.01, 0.03, 0.05, 0.08, 0.12)[severity - 1]  # share of pixels set to black or white
    g = torch.Generator().manual_seed(seed)
    x = x_u8.clone()
    r = torch.rand(x.shape, generator=g)
    x[r < p / 2] = 0
    x[(r >= p / 2) & (r < p)] = 255
    return x


def gaussian_blur(x_u8, severity, seed=0):
    sigma = (0.5, 0.75, 1.0, 1.25, 1.5)[severity - 1]
    k = 2 * math.ceil(3 * sigma) + 1
    t = torch.arange(k) - k // 2
    w = torch.exp(-(t.float() ** 2) / (2 * sigma**2))
    w = w / w.sum()
    x = _unit(x_u8)
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="replicate"), w.view(1, 1, 1, k))
    x = F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="replicate"), w.view(1, 1, k, 1))
    return _u8(x)


def rotation(x_u8, severity, seed=0):
    return _affine(x_u8, angle_deg=(10, 20, 30, 45, 60)[severity - 1], seed=seed)


def shear(x_u8, severity, seed=0):
    return _affine(x_u8, shear=(0.1, 0.2, 0.3, 0.45, 0.6)[severity - 1], seed=seed)


def scale(x_u8, severity, seed=0):
    """Zoom out: the item shrinks towards the centre, as in a photo taken from further away."""
    return _affine(x_u8, scale=(0.9, 0.8, 0.7, 0.6, 0.5)[severity - 1], seed=seed)


def translation(x_u8, severity, seed=0):
    return _affine(x_u8, shift=(2, 3, 4, 5, 6)[severity - 1], seed=seed)


def brightness(x_u8, severity, seed=0):
    """Lifts every pixel: a gray background where Fashion-MNIST has black."""
    return _u8(_unit(x_u8) + (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1])


def contrast(x_u8, severity, seed=0):
    c = (0.7, 0.5, 0.35, 0.25, 0.15)[severity - 1]
    x = _unit(x_u8)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return _u8((x - mean) * c + mean)


def jpeg(x_u8, severity, seed=0):
    quality = (60, 35, 20, 12, 7)[severity - 1]
    out = np.empty_like(x_u8.numpy())
    for i, img in enumerate(x_u8.numpy()):  # PIL encodes one image at a time
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    return torch.from_numpy(out)


def pixelate(x_u8, severity, seed=0):
    size = (20, 16, 12, 10, 8)[severity - 1]
    x = _unit(x_u8)
    return _u8(F.interpolate(F.interpolate(x, size=(size, size), mode="area"), size=(28, 28), mode="nearest"))


def flip_vertical(x_u8, severity, seed=0):
    """Upside down: a share of the images (severity / 5) is flipped."""
    n = len(x_u8)
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(n, generator=g) < severity / 5
    x = x_u8.clone()
    x[pick] = x[pick].flip(-2)
    return x


def inversion(x_u8, severity, seed=0):
    """Dark on light, as a product photo on white is before conversion: a blend towards the negative."""
    a = (0.2, 0.4, 0.6, 0.8, 1.0)[severity - 1]
    x = _unit(x_u8)
    return _u8((1 - a) * x + a * (1 - x))


def occlusion(x_u8, severity, seed=0):
    """A black square at a random place: a hand, a tag, a cropped edge."""
    side = (6, 8, 10, 12, 14)[severity - 1]
    n = len(x_u8)
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randint(0, 28 - side + 1, (n,), generator=g).view(n, 1, 1)
    x0 = torch.randint(0, 28 - side + 1, (n,), generator=g).view(n, 1, 1)
    ys, xs = torch.arange(28).view(1, 28, 1), torch.arange(28).view(1, 1, 28)
    mask = (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)
    return x_u8.masked_fill(mask, 0)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "impulse_noise": impulse_noise,
    "gaussian_blur": gaussian_blur,
    "rotation": rotation,
    "shear": shear,
    "scale": scale,
    "translation": translation,
    "brightness": brightness,
    "contrast": contrast,
    "jpeg": jpeg,
    "pixelate": pixelate,
    "flip_vertical": flip_vertical,
    "inversion": inversion,
    "occlusion": occlusion,
}


def corrupt(x_u8: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: expected 1-5")
    return CORRUPTIONS[name](x_u8, severity, seed)
