"""Inference apart from training: uint8 images in, logits out, in batches (this module never imports the loop)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.engine.device import autocast


def to_unit(x_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float pixels in [0, 1], (N, C, H, W), on device (where augmentation works)."""
    x = x_u8.to(device, non_blocking=True)
    return (x.unsqueeze(1) if x.dim() == 3 else x).float().div_(255)


def normalize(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Pixels in [0, 1] -> the models' input: the dataset's mean and std, optionally channels_last."""
    x = x.sub_(MEAN).div_(STD)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_input(x_u8: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    return normalize(to_unit(x_u8, device), channels_last)


def average_views(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(views, N, classes) logits -> (the log of the views' mean softmax: still logits, the views' mean raw logits)."""
    return views.log_softmax(-1).logsumexp(0) - math.log(len(views)), views.mean(0)


@torch.no_grad()
def infer(
    model: nn.Module,
    x_u8: torch.Tensor,
    batch_size: int = 1024,
    device=None,
    amp_dtype=None,
    channels_last=True,
    tta: bool = False,
    raw: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, classes) as float32 on the CPU, in eval mode.

    With tta, the log of the mean softmax of each image and its horizontal mirror: still valid logits
    for argmax, softmax and cross-entropy. raw=True: (those logits, the raw logits an out-of-distribution
    score takes), from the same forward passes: under tta the mean of the two views' raw logits (the log of a
    mean softmax has logsumexp 0, no energy left in it), else the logits themselves.
    """
    device = device or next(model.parameters()).device
    model.eval()
    out, means = [], []
    batch_size = bounded_batch(model, batch_size)
    for i in range(0, len(x_u8), batch_size):
        x = to_input(x_u8[i : i + batch_size], device, channels_last)
        with autocast(device, amp_dtype):
            logits = model(x).float()
            if tta:
                logits, mean = average_views(torch.stack([logits, model(x.flip(-1)).float()]))
                means.append(mean.cpu())
        out.append(logits.cpu())
    logits = torch.cat(out) if out else torch.empty(0, 10)
    return (logits, torch.cat(means) if means else logits) if raw else logits


def head_view_logits(head: nn.Module, v: torch.Tensor, tta: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, raw) of (n, views, dim) features through a head, as infer(raw=True) gives them for the network the
    head ends: with tta the log of the views' mean softmax and the views' mean raw logits, else the first view's."""
    with torch.no_grad():
        if not tta:
            logits = head(v[:, 0].float())
            return logits, logits
        return average_views(head(v.float()).transpose(0, 1))


FEATURE_PIXELS = 32 * 260 * 260  # frozen backbones: 32 photos of 260 px a batch


def bounded_batch(model, batch_size: int) -> int:
    """Photos at once, at most, for an embed-once network (models/frozen.py): FEATURE_PIXELS at the side its backbones
    work at (a 28x28 scan is enlarged to it). Its three backbones' activations for 1,024 photos of 260 px and their
    mirrors took over 20 GB (a ready-model build was killed). Other networks keep batch_size."""
    sides = getattr(model, "sides", None)
    return max(1, min(batch_size, FEATURE_PIXELS // (max(sides) ** 2))) if sides else batch_size


@torch.no_grad()
def infer_features(model, x_u8, batch_size=1024, device=None, amp_dtype=None, channels_last=True, tta=False) -> torch.Tensor:
    """(N, views, dim) float32 features (model.features, an embed-once network's: models/frozen.py) of each image and,
    with tta, of its mirror, both views in one batch: what `fashionclf embed` stores and what the served run computes."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    batch_size = bounded_batch(model, batch_size)
    for i in range(0, len(x_u8), batch_size):
        x = to_input(x_u8[i : i + batch_size], device, channels_last)
        with autocast(device, amp_dtype):
            f = model.features(torch.cat([x, x.flip(-1)]) if tta else x).float()
        out.append(torch.stack(f.chunk(2 if tta else 1), 1).cpu())
    return torch.cat(out) if out else torch.empty(0, 1 + tta, model.dim)


def evaluate(model: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, **kw) -> dict:
    """Loss and accuracy of a model on a labelled set."""
    logits = infer(model, x_u8, **kw)
    return {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


def measure_inference(model, x_u8, device, amp_dtype, channels_last, tta=False, batch_size=1024) -> float:
    """Images per second of `infer` over x_u8 (one untimed warm-up batch first)."""
    infer(model, x_u8[:batch_size], batch_size, device, amp_dtype, channels_last, tta)
    t0 = time.perf_counter()
    infer(model, x_u8, batch_size, device, amp_dtype, channels_last, tta)
    return len(x_u8) / (time.perf_counter() - t0)
