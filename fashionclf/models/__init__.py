"""Models by name from a registry that declares each model's input and capabilities (as timm's create_model).

Importing this package registers every model: each module in this folder is imported and its `register`
calls run (the small CNNs in cnn.py, EfficientNet-Lite0/1/2 in efficientnet.py). A new model is one new file here.
"""

import importlib
import pkgutil

from fashionclf.models.registry import (
    ModelInfo,
    at_resolution,
    build_model,
    count_params,
    create_model,
    list_models,
    model_info,
    register,
    resolved_kwargs,
    split_body_head,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "ModelInfo",
    "at_resolution",
    "build_model",
    "count_params",
    "create_model",
    "list_models",
    "model_info",
    "register",
    "resolved_kwargs",
    "split_body_head",
]
