"""fashionclf: train, compare and serve product-photo classifiers, starting from Fashion-MNIST.

The Python API (fashionclf.api), imported lazily so that `import fashionclf` and `fashionclf --version`
stay fast:

    import fashionclf
    run = fashionclf.load_run("runs/shop")                       # any run folder; nothing executes on load
    rows = run.predict(["photo.jpg", "new-photos/"])             # label, confidence, top_k, needs_review
    run = fashionclf.train(fashionclf.recipe("best-cpu", seed=1), out="runs/best")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fashionclf.core import __version__ as __version__  # re-exported

__all__ = [
    "Run",
    "TrainConfig",
    "compare",
    "list_models",
    "list_recipes",
    "load_data",
    "load_run",
    "model_kwargs",
    "recipe",
    "study_configs",
    "train",
]

_WHERE = {
    "Run": "fashionclf.api",
    "compare": "fashionclf.api",
    "load_data": "fashionclf.api",
    "load_run": "fashionclf.api",
    "model_kwargs": "fashionclf.api",
    "recipe": "fashionclf.api",
    "study_configs": "fashionclf.api",
    "train": "fashionclf.api",
    "TrainConfig": "fashionclf.core.config",
    "list_models": "fashionclf.models",
    "list_recipes": "fashionclf.training.recipes",
}

if TYPE_CHECKING:
    from fashionclf.api import Run, compare, load_data, load_run, model_kwargs, recipe, study_configs, train
    from fashionclf.core.config import TrainConfig
    from fashionclf.models import list_models
    from fashionclf.training.recipes import list_recipes


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'fashionclf' has no attribute {name!r}")
