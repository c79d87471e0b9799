"""Helpers shared by test files (import as `from helpers import ...`; pyproject puts tests/ on the path)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# fp32 results of one function through different kernels (channels_last against NCHW, AVX2 against AVX-512, oneDNN
# against ATen) differ by rounding that grows with depth: about 5e-6 of the outputs' scale was seen for
# EfficientNet-Lite0's logits. A loading or wiring defect changes them by the order of the scale itself.
ACROSS_KERNELS_RTOL = 5e-5


def assert_close_across_kernels(got: torch.Tensor, want: torch.Tensor, rtol: float = ACROSS_KERNELS_RTOL) -> None:
    """Equal up to fp32 rounding of other kernels: every element within rtol of the largest magnitude compared."""
    scale = max(want.abs().max().item(), got.abs().max().item(), 1.0)
    diff = (got - want).abs().max().item()
    assert diff <= rtol * scale, f"max |difference| {diff:.3g} above {rtol:g} x scale {scale:.3g}"


def make_class_folder(root, per_class=12, classes=("pants", "shirt"), size=(40, 30), seed=0):
    """Class 0: a vertical dark bar; class 1: a horizontal dark bar; on light noisy backgrounds."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(220 + rng.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
            if k == 0:
                img[5:35, 10:20] = 40
            else:
                img[15:25, 3:27] = 40
            Image.fromarray(img).save(root / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root
