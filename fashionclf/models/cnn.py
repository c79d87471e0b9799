"""The seed study's four models and a ResNet-9-style net, for 28x28 grayscale (or RGB) input.

A pooling layer sits before BatchNorm and ReLU where the order does not change
what the block can express (max-pooling commutes with ReLU): BatchNorm and ReLU,
memory-bound on a CPU, then touch a quarter of the values.
"""

from __future__ import annotations

from torch import nn

from fashionclf.models.registry import register


@register("mlp", "Flatten -> Dense(128, ReLU) -> Dense(10): the seed's Model 1", flexible_size=True, size_arg=True)
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


@register(
    "advanced_cnn", "three conv blocks (32, 64, 128) with BatchNorm, GlobalAveragePooling, Dense: the seed's Model 4", flexible_size=True
)
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


@register(
    "resnet", "ResNet-9-style net for 28x28 (widths 32-64-128-256, two residual blocks): the best-cpu preset's model", flexible_size=True
)
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
