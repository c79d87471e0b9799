"""Frozen ImageNet features of several EfficientNet-Lites, concatenated, and one linear head: the embed-once route.

The backbones never learn here. Each sees the photo at its own native side (Lite0 224, Lite1 240, Lite2 260 px;
at the input's side where that is smaller),
its globally pooled features (1280 numbers each) are concatenated, and a linear head maps them to the classes.
`fashionclf embed` stores the features of every photo once (fashionclf/embed/), and a head fitted on the stored
vectors in seconds (fashionclf/training/embedded.py) is put into this module, so that a run folder holds an
ordinary network and predict, serve, evaluate and export need nothing new. `features` is what the store holds,
computed by this same code, so a stored vector and the served network cannot drift apart.
"""

from __future__ import annotations

import hashlib
import importlib.metadata

import torch
from torch import nn

from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.models.efficientnet import IMAGENET_MEAN, IMAGENET_STD, create_lite, variant
from fashionclf.models.registry import register

DEFAULT_BACKBONES = "lite0+lite1+lite2"  # chosen by measurement: docs/results/embed-once.md


def backbone_keys(backbones: str) -> list[str]:
    keys = [k.strip() for k in backbones.split("+") if k.strip()]
    for k in keys:
        variant(k)  # a ValueError naming the valid keys
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"backbones {backbones!r}: expected distinct keys joined by '+', e.g. {DEFAULT_BACKBONES}")
    return keys


class FrozenLites(nn.Module):
    """(N, 3, S, S) photos normalised as every fashionclf run takes them -> logits; `features` -> (N, 1280 x backbones)."""

    def __init__(self, backbones: str = DEFAULT_BACKBONES, num_classes: int = 10, pretrained: bool = True, image_size: int = 260):
        super().__init__()
        self.keys = backbone_keys(backbones)
        self.sides = [min(variant(k).native_size, image_size) for k in self.keys]  # never upsampled past the input
        self.nets = nn.ModuleList(create_lite(k, 1, 3, pretrained) for k in self.keys)
        for net in self.nets:
            net.classifier = nn.Identity()  # the features are what is kept; the head below replaces every classifier
            net.requires_grad_(False)
        # the digest of the packages' ImageNet weights as built: a run whose backbones still hold them saves the head only
        self.package_sha256 = self.backbones_sha256() if pretrained else None
        self.image_size = image_size
        self.dim = sum(net.num_features for net in self.nets)
        self.head = nn.Linear(self.dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def backbones_sha256(self) -> str:
        """SHA-256 of the backbones' tensors (names, dtypes, shapes and bytes, in name order)."""
        h = hashlib.sha256()
        for k, t in sorted(self.nets.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def weights_by_reference(self) -> dict | None:
        """What a run folder records instead of the backbones, when they are the pip packages' ImageNet weights
        unchanged: their key prefix and digest (engine/runs.py then saves the head alone, 150 KB instead of 50 MB,
        and loading rebuilds the backbones from the packages, refusing them if the digest differs). None otherwise."""
        if self.package_sha256 is None or self.backbones_sha256() != self.package_sha256:
            return None
        packages = {}
        for k in self.keys:
            try:
                packages[variant(k).package] = importlib.metadata.version(variant(k).package)
            except importlib.metadata.PackageNotFoundError:  # weights read from a file given otherwise
                packages[variant(k).package] = None
        return {"prefix": "nets.", "sha256": self.package_sha256, "backbones": "+".join(self.keys), "packages": packages}

    def train(self, mode: bool = True):
        super().train(mode)
        self.nets.eval()  # frozen: batch norm keeps ImageNet's statistics whatever the caller does
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x * STD + MEAN).expand(-1, 3, -1, -1)  # a gray scan is its own three channels
        x = (pixels - IMAGENET_MEAN) / IMAGENET_STD
        out = []
        for net, side in zip(self.nets, self.sides):
            v = x if x.shape[-1] == side else nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
            out.append(net.forward_head(net.forward_features(v), pre_logits=True))
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).to(self.head.weight.dtype))

    def get_classifier(self) -> nn.Module:
        return self.head


@register(
    "frozen_lites",
    "Frozen ImageNet features of EfficientNet-Lite0/1/2 at their native sizes and a linear head (`fashionclf embed`, `train --store`)",
    input_size=260,
    flexible_size=True,
    size_arg=True,
    pretrained=True,
    body_head=True,
)
def frozen_lites(num_classes=10, in_chans=1, pretrained=True, image_size=260, backbones=DEFAULT_BACKBONES):
    # in_chans: 3 for photos (train --store); 1 takes 28x28 scans as gray photos, as every registered model can
    if in_chans not in (1, 3):
        raise ValueError(f"frozen_lites takes 1 or 3 input channels, not {in_chans}")
    return FrozenLites(backbones, num_classes, pretrained, image_size)
