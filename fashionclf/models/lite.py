"""EfficientNet-Lite in plain torch, parameter for parameter the network timm builds as tf_efficientnet_lite{0,1,2}.

Why not timm itself: importing timm imports torchvision, whose `ops` import torch._dynamo: seconds of
start-up for `fashionclf predict photo.jpg` (docs/results/ready-model.md has the measurement). This file
imports nothing but torch, so a photo is categorised in about the time torch takes to import. timm stays the
reference: tests/test_lite.py loads one state dict into both networks and checks the same names in the same
order, the same shapes and the same logits, in eval and in train mode, for every variant; `--weights timm`
(the hub) still builds timm's network.

What timm's builder does for these three variants (timm/models/efficientnet.py, _gen_efficientnet_lite,
with the tf_ defaults): TF "same" padding (computed from the input size for strided convolutions,
symmetric and static otherwise), BatchNorm eps 1e-3, ReLU6, no squeeze-excitation, a 32-channel stem and
a 1280-channel head at every width, channels rounded to multiples of 8, stochastic depth growing linearly
with the block's index over all blocks, and TF's initialisation (normal(0, sqrt(2 / fan_out)) for
convolutions, uniform(+-1/sqrt(out)) for the classifier).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (kind, kernel, stride, expansion, channels) per stage: timm's arch_def for EfficientNet-Lite.
STAGES = (
    ("ds", 3, 1, 1, 16),
    ("ir", 3, 2, 6, 24),
    ("ir", 5, 2, 6, 40),
    ("ir", 3, 2, 6, 80),
    ("ir", 5, 1, 6, 112),
    ("ir", 5, 2, 6, 192),
    ("ir", 3, 1, 6, 320),
)
STEM, HEAD = 32, 1280
BN_EPS = 1e-3


def round_channels(channels: float, multiplier: float = 1.0, divisor: int = 8) -> int:
    """timm's round_channels / make_divisible: nearest multiple of 8, never more than 10% below."""
    v = channels * multiplier
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


class SameConv(nn.Conv2d):
    """A bias-free convolution with TF's 'same' padding (timm's create_conv2d(padding='same'))."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        self.dynamic = stride > 1 or (kernel - 1) % 2 == 1
        pad = 0 if self.dynamic else (kernel - 1) // 2
        super().__init__(cin, cout, kernel, stride, pad, groups=groups, bias=False)

    def forward(self, x):
        if self.dynamic:
            x = F.pad(x, _same_padding(x.shape[-2:], self.kernel_size[0], self.stride[0]))
        return super().forward(x)


def _same_padding(size, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) so that the output is ceil(size / stride), as TF's 'SAME'."""
    ph, pw = (max((math.ceil(int(s) / stride) - 1) * stride + kernel - int(s), 0) for s in size)
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


class BNAct(nn.BatchNorm2d):
    """BatchNorm then ReLU6 (or nothing): timm's BatchNormAct2d, with the same parameter names."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.act(super().forward(x))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a sample with probability p (timm's DropPath)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Separable(nn.Module):
    """Depthwise then pointwise (timm's DepthwiseSeparableConv): the first stage."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, drop: float):
        super().__init__()
        self.conv_dw = SameConv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = BNAct(cin)
        self.conv_pw = SameConv(cin, cout, 1)
        self.bn2 = BNAct(cout, act=False)
        self.skip, self.drop = stride == 1 and cin == cout, drop

    def forward(self, x):
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return x + drop_path(y, self.drop, self.training) if self.skip else y


class Inverted(nn.Module):
    """Expand, depthwise, project (timm's InvertedResidual without squeeze-excitation)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop: float):
        super().__init__()
        mid = round_channels(cin * expand)
        self.conv_pw = SameConv(cin, mid, 1)
        self.bn1 = BNAct(mid)
        self.conv_dw = SameConv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = BNAct(mid)
        self.conv_pwl = SameConv(mid, cout, 1)
        self.bn3 = BNAct(cout, act=False)
        self.skip, self.drop = stride == 1 and cin == cout, drop

    def forward(self, x):
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return x + drop_path(y, self.drop, self.training) if self.skip else y


class LiteNet(nn.Module):
    """EfficientNet-Lite with timm's names: conv_stem, bn1, blocks.<stage>.<i>.*, conv_head, bn2, classifier."""

    def __init__(self, depths, width: float = 1.0, num_classes: int = 1000, in_chans: int = 3, drop_path_rate: float = 0.0):
        super().__init__()
        if len(depths) != len(STAGES):
            raise ValueError(f"EfficientNet-Lite has {len(STAGES)} stages, got depths {tuple(depths)}")
        self.conv_stem = SameConv(in_chans, STEM, 3, 2)
        self.bn1 = BNAct(STEM)
        total, index, cin = sum(depths), 0, STEM
        stages = []
        for (kind, kernel, stride, expand, channels), depth in zip(STAGES, depths):
            cout, blocks = round_channels(channels, width), []
            for i in range(depth):
                drop, s = drop_path_rate * index / total, stride if i == 0 else 1
                blocks.append(Separable(cin, cout, kernel, s, drop) if kind == "ds" else Inverted(cin, cout, kernel, s, expand, drop))
                cin, index = cout, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv(cin, HEAD, 1)
        self.bn2 = BNAct(HEAD)
        self.num_features = HEAD
        self.classifier = nn.Linear(HEAD, num_classes)
        self.apply(_init_tf)

    def forward_features(self, x):
        return self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))

    def forward_head(self, x, pre_logits: bool = False):
        """Global average pooling, then the classifier unless pre_logits (timm's API)."""
        x = x.mean((2, 3))
        return x if pre_logits else self.classifier(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The head (timm's API): what trains from the first epoch and at the full learning rate."""
        return self.classifier


def _init_tf(m: nn.Module) -> None:
    """TF's EfficientNet initialisation, as timm's _init_weight_goog (fan-out per group)."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        r = 1.0 / math.sqrt(m.weight.size(0))
        nn.init.uniform_(m.weight, -r, r)
        nn.init.zeros_(m.bias)


def adapt_stem(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """An RGB stem's filters for in_chans channels: summed for grayscale (timm's adapt_input_conv for 1)."""
    if in_chans == weight.shape[1]:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(f"the ImageNet stem takes 3 channels; adapting it to {in_chans} is not supported (use 1 or 3)")
