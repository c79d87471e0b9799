"""Recipes: TOML files beside this module, each stating only what differs from TrainConfig's defaults.

A recipe named after a model (`mlp.toml`, `resnet.toml`, ...) holds that model's defaults: what
`train --model NAME` trains (a model without a file trains TrainConfig's defaults). The others
(`best-cpu.toml`, `photos.toml`, ...) are presets: what `train --preset NAME` trains. No recipe builds on
another: a file is TrainConfig's defaults plus what it says (as nanoGPT's config files are), and
`fashionclf recipes NAME --resolved` prints every setting (resolved_text).

Resolution order: the recipe (the preset if given, else the model's own, else the defaults of
TrainConfig), then --model (a preset trained with another model keeps every other setting of the
preset), then explicit overrides.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from fashionclf.core.config import DEFAULT_RECIPE, TrainConfig, config_from_dict, config_to_dict, replace

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: TrainConfig
    path: Path

    @property
    def is_model_default(self) -> bool:
        return self.name == self.config.model


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e})") from None


def _recipe_from(path: Path, name: str) -> Recipe:
    d = _read_toml(path)
    description = d.pop("description", "")
    try:
        cfg = config_from_dict(d, strict=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    return Recipe(name, description, cfg, path)


def list_recipes() -> list[str]:
    """Every recipe shipped with the package: the models' defaults and the presets."""
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load_recipe(name: str, kind: str = "recipe") -> Recipe:
    path = HERE / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(list_recipes())}")
    return _recipe_from(path, name)


def recipe(name: str, **overrides) -> TrainConfig:
    """A recipe's config by name, with overrides (e.g. seed=1, epochs=5, aug_rotation=15)."""
    return replace(load_recipe(name).config, **overrides)


def resolved_text(cfg: TrainConfig) -> str:
    """Every setting of a config as JSON, one per line: what `recipes NAME --resolved` prints and `train --config` reads."""
    return json.dumps(config_to_dict(cfg), indent=1) + "\n"


def load_config_file(path: str | Path) -> TrainConfig:
    """A config from a recipe file (.toml), a run's meta.json (its resolved "config"), or a JSON dict of settings."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file; give a recipe (.toml) or a run's meta.json")
    if path.suffix == ".toml":
        return _recipe_from(path, path.stem).config
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path} is neither TOML nor valid JSON ({e})") from None
    if isinstance(d, dict) and "config" in d:  # a run's meta.json
        d = {**d["config"], "model": d.get("model", d["config"].get("model"))} if isinstance(d["config"], dict) else d["config"]
    try:
        return config_from_dict(d, strict=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--config {path}: {e}") from None


def resolve_config(model: str | None = None, preset: str | None = None, base: TrainConfig | None = None, **overrides) -> TrainConfig:
    """A recipe (base, or the preset, or the model's own), then --model, then overrides (None = not given)."""
    from fashionclf.models import model_info

    if base is None and preset is not None:
        base = load_recipe(preset, kind="preset").config
    if model is not None:
        model_info(model)  # fail early, listing valid names
    if base is None and model is None:
        base = load_recipe(DEFAULT_RECIPE, kind="preset").config
    if base is None:
        base = load_recipe(model).config if (HERE / f"{model}.toml").is_file() else TrainConfig(model=model)
    name = model or base.model
    model_info(name)
    return replace(base, model=name, **overrides)
