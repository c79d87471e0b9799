"""Where the model looked: Grad-CAM (Selvaraju et al., 2017) on the run's last convolution, over the image the
model saw (the 28x28 cut-out for Fashion-MNIST-style runs, the letterboxed photo for RGB runs).

Implemented here in a few lines on forward/backward hooks, so the review desk needs no extra package;
tests/test_review.py checks it against the `grad-cam` package (pytorch_grad_cam). A model without a
convolution (mlp) has no map: `grad_cam` returns None. Test-time augmentation is not applied here.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from fashionclf.engine.inference import to_input


def last_conv(model: nn.Module) -> nn.Module | None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def grad_cam(model: nn.Module, image_u8: np.ndarray, target: int, layer: nn.Module | None = None) -> np.ndarray | None:
    """(H, W) float map in [0, 1] of the evidence for class `target`, at the input's size; None without a conv layer.

    image_u8: what the model takes, (H, W) gray or (C, H, W).
    """
    layer = layer or last_conv(model)
    if layer is None:
        return None
    kept: dict[str, torch.Tensor] = {}

    def forward_hook(module, inputs, out):  # a hook on the output tensor: safe with in-place activations after it
        kept["act"] = out
        out.register_hook(lambda g: kept.__setitem__("grad", g))

    hooks = [layer.register_forward_hook(forward_hook)]
    was_training = model.training
    model.eval()
    try:
        x = to_input(torch.as_tensor(image_u8)[None], next(model.parameters()).device, channels_last=False).requires_grad_(True)
        with torch.enable_grad():
            model.zero_grad(set_to_none=True)
            model(x)[0, target].backward()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    act, grad = kept["act"].detach()[0].float(), kept["grad"].detach()[0].float()
    cam = torch.relu((grad.mean(dim=(1, 2), keepdim=True) * act).sum(0)).numpy()
    h, w = image_u8.shape[-2:]
    cam = cv2.resize(_unit(cam), (w, h), interpolation=cv2.INTER_LINEAR)  # scaled, resized, scaled: as pytorch_grad_cam does
    return _unit(cam)


def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.min()
    return (a / (1e-7 + a.max())).astype(np.float32)


def overlay(image_u8: np.ndarray, cam: np.ndarray, size: int = 224, alpha: float = 0.45) -> np.ndarray:
    """(size, size, 3) RGB: the model's input scaled up (nearest, so 28x28 pixels stay visible) under a jet-coloured map."""
    rgb = image_u8.transpose(1, 2, 0) if image_u8.ndim == 3 else np.repeat(image_u8[..., None], 3, axis=2)
    base = cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    heat = cv2.applyColorMap((cv2.resize(cam, (size, size)) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.clip((1 - alpha) * base + alpha * heat.astype(np.float32), 0, 255).astype(np.uint8)
