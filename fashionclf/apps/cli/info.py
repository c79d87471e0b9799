"""`fashionclf models` and `fashionclf recipes`: what can be trained."""

from __future__ import annotations

ORDER = 10  # place in `fashionclf --help`


def add_parser(sub) -> None:
    s = sub.add_parser("models", help="list the registered models and what each declares")
    s.set_defaults(func=models)
    s = sub.add_parser("recipes", help="list the recipe files (each model's defaults and the presets)")
    s.add_argument("name", nargs="?", help="print this recipe's file (what differs from the defaults)")
    s.add_argument("--resolved", action="store_true", help="with NAME: every setting, as JSON (`train --config FILE` reads it)")
    s.set_defaults(func=recipes)


def models(args) -> int:
    from fashionclf.models import count_params, create_model, list_models, model_info

    for name in list_models():
        print(f"{name:18s} {count_params(create_model(name)):>9,d} params  {model_info(name).description}")
    return 0


def recipes(args) -> int:
    from fashionclf.training.recipes import list_recipes, load_recipe, resolved_text

    if args.resolved and not args.name:
        raise ValueError("--resolved prints one recipe's settings: give its NAME (see `fashionclf recipes`)")
    if args.name:
        r = load_recipe(args.name)
        print(resolved_text(r.config) if args.resolved else r.path.read_text(), end="")
        return 0
    for name in list_recipes():
        r = load_recipe(name)
        kind = "model default" if r.is_model_default else "preset"
        print(f"{name:27s} {kind:13s} {r.config.model:18s} {r.description}")
    return 0
