"""The model registry: each model is registered by name with a declaration of what it takes.

As timm's pretrained configs do, a declaration says what the rest of the code may assume without
building the network: its native input side, whether it takes other sides, whether its constructor
takes the side as an argument, pretrained weights, stochastic depth, and a pretrained body with a new
head. tests/test_models.py checks every declaration against the real module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fashionclf.core.config import TrainConfig


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable[..., nn.Module]
    description: str
    input_size: int = 28  # the square side it is built for by default
    flexible_size: bool = False  # takes other square sides (global pooling or an image_size argument)
    size_arg: bool = False  # the constructor takes image_size (and is then built for that side)
    in_chans: tuple[int, ...] = (1, 3)  # input channels it can be built for (in_chans=...)
    pretrained: bool = False  # takes pretrained=...; run folders rebuild it with pretrained=False, then load their weights
    drop_path: bool = False  # takes drop_path=... (stochastic depth)
    body_head: bool = False  # a pretrained body and a new head: frozen epochs and a body learning rate apply


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, description: str, **declared):
    """Decorator: register a builder fn(num_classes, in_chans, **kwargs) -> nn.Module under name."""

    def deco(fn):
        _REGISTRY[name] = ModelInfo(name, fn, description, **declared)
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


def build_model(cfg: TrainConfig, num_classes: int = 10, pretrained: bool | None = None, empty: bool = False) -> nn.Module:
    """The network a config trains: the registered model with its kwargs, at the config's resolution.

    pretrained=False rebuilds a pretrained model without fetching weights (a run folder's replace them).
    empty=True builds it on the meta device, with no storage and no random initialisation, for
    load_state_dict(state, assign=True) to fill: loading a run skips an initialisation it would overwrite.
    """
    kwargs = dict(cfg.model_kwargs)
    if pretrained is not None and model_info(cfg.model).pretrained:
        kwargs["pretrained"] = pretrained
    with torch.device("meta") if empty else contextlib.nullcontext():
        return at_resolution(create_model(cfg.model, num_classes=num_classes, **kwargs), cfg.resolution)


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
    """(pretrained body parameters, head parameters); a model without a body/head split is all head.

    A model with a pretrained body exposes it as `get_classifier()` on `model.net` (timm's API) or on itself.
    """
    net = getattr(model, "net", model)
    if not hasattr(net, "get_classifier"):
        return [], list(model.parameters())
    head = list(net.get_classifier().parameters())
    ids = {id(p) for p in head}
    return [p for p in model.parameters() if id(p) not in ids], head


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_kwargs(model: str, folder_data: bool = False, image_size: int | None = None, drop_path: float | None = None) -> dict:
    """Constructor arguments for a model from what its registry entry declares: RGB input and its size for
    image folders, stochastic depth where the model has it. A clear ValueError where it cannot."""
    info = model_info(model)
    kwargs: dict = {}
    if folder_data:
        size = image_size or 128
        if not info.flexible_size:
            takes = [n for n in list_models() if model_info(n).flexible_size]
            raise ValueError(
                f"model {model} cannot take {size}x{size} RGB images (it is built for {info.input_size} px); "
                f"models that can: {', '.join(takes)}"
            )
        kwargs["in_chans"] = 3
        if info.size_arg:
            kwargs["image_size"] = size
    elif image_size:
        raise ValueError("--val-data and --image-size go with --data FOLDER (an image-folder dataset)")
    if drop_path is not None:
        if not info.drop_path:
            takes = [n for n in list_models() if model_info(n).drop_path]
            raise ValueError(f"--drop-path: {model} has no stochastic depth; models that take it: {', '.join(takes)}")
        if not 0 <= drop_path < 1:
            raise ValueError(f"--drop-path {drop_path}: expected a rate in [0, 1)")
        kwargs["drop_path"] = drop_path
    return kwargs
