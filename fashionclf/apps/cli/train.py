"""`fashionclf train`: one model into a run folder (also one process of a torchrun job)."""

from __future__ import annotations

import sys
from pathlib import Path

from fashionclf.apps.cli import options
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE
from fashionclf.models import list_models
from fashionclf.training.recipes import list_recipes

ORDER = 20  # place in `fashionclf --help`


def add_parser(sub) -> None:
    s = sub.add_parser("train", help="train one model into a run folder")
    s.add_argument(
        "--model",
        help=f"one of: {', '.join(list_models())} (default: the recipe's; with no --preset or --config, the `photos` preset "
        "(resnet) on Fashion-MNIST; with --data, a head on the frozen backbones' stored features (frozen_lites, see --store), "
        "measured best, or efficientnet_lite0 fine-tuned where a flag of network training (--epochs, --image-size, --seed, "
        "...) is given; the seed's Model 4 is --model advanced_cnn)",
    )
    s.add_argument(
        "--preset", help=f"a recipe by name: {', '.join(list_recipes())} (fashionclf recipes); its model unless --model is given"
    )
    s.add_argument("--config", metavar="FILE", help="a recipe file (.toml) or a run's meta.json: repeat it exactly; flags override it")
    s.add_argument("--seed", type=int, help="seed of initialisation, order and augmentation (default: the recipe's, 0)")
    s.add_argument("--out", help="run folder (default: runs/<model>-s<seed>-<time>)")
    s.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the training a kill or Ctrl-C left in DIR from its last finished epoch, with its own settings and data "
        "(--data-dir may say where the data are now): the same result as an uninterrupted run",
    )
    s.add_argument("--no-pretrained", action="store_true", help="train a pretrained-capable model (efficientnet_lite0) from scratch")
    s.add_argument(
        "--unknown-share",
        type=float,
        default=DEFAULT_KNOWN_SHARE,
        metavar="SHARE",
        help=f'"none of these": the share of validation images counted known when its threshold is fitted (default {DEFAULT_KNOWN_SHARE})',
    )
    s.add_argument(
        "--unlabelled",
        metavar="FOLDER",
        help="self-training: a teacher trained on the labelled data (into OUT-teacher) labels these photos where its "
        "99%%-precision rule needs no person; the student (OUT) trains on both, with stronger augmentation",
    )
    s.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="RUN",
        help="distillation (with --unlabelled; repeat for several): these finished runs' averaged soft labels on the "
        "unlabelled photos teach the model trained (OUT) instead of a teacher trained first",
    )
    s.add_argument(
        "--store",
        metavar="DIR",
        help="fit a linear head on the frozen backbones' features of --data kept in this embedding store (`fashionclf embed`; "
        "photos it lacks are embedded first): seconds instead of minutes, model frozen_lites (default with --data and no "
        "--model: $FASHIONCLF_STORE, or the store in ~/.cache/fashionclf/embeddings)",
    )
    s.add_argument(
        "--calibrate-on",
        choices=("oof", "val"),
        help="with --store, the photos the review rule is fitted on: oof (default: validation plus every training photo, "
        "scored by one of five heads that did not see it) or val (validation alone)",
    )
    options.add_train_options(s)
    options.add_promise_options(s.add_argument_group("review rule"), fitted_here=True)
    options.add_track_options(s)
    s.set_defaults(func=run)


def resolve(args):
    """The config this command line trains: --config or --preset, then --model, then the flags."""
    from fashionclf.core.config import DEFAULT_FOLDER_MODEL
    from fashionclf.models import model_info
    from fashionclf.training.recipes import load_config_file, resolve_config

    if args.config and args.preset:
        raise ValueError("give --config FILE or --preset NAME, not both")
    base = load_config_file(args.config) if args.config else None
    if args.model is None and args.preset is None and base is None and getattr(args, "data", None):
        args.model = DEFAULT_FOLDER_MODEL  # a shop's photo folders: the pretrained photo model
    probe = resolve_config(args.model, args.preset, base=base)
    kwargs = dict(probe.model_kwargs)
    if args.no_pretrained:
        if not model_info(probe.model).pretrained:
            raise ValueError(f"--no-pretrained: {probe.model} has no pretrained weights to leave out")
        kwargs["pretrained"] = False
    kwargs.update(options.model_kwargs(args, probe.model) or {})
    return resolve_config(args.model, args.preset, base=base, seed=args.seed, model_kwargs=kwargs or None, **options.overrides(args))


# What --resume takes from the checkpoint instead: giving any of these with it is refused.
NOT_WITH_RESUME = (
    "model",
    "preset",
    "config",
    "seed",
    "out",
    "data",
    "val_data",
    "image_size",
    "train_limit",
    "test_limit",
    "drop_path",
    "class_map",
)


def check_resume_args(args) -> None:
    """--resume DIR continues with the checkpoint's settings and data; a flag that would change them is refused."""
    given = [n for n in NOT_WITH_RESUME if getattr(args, n, None) is not None]
    given += [n for n in ("overwrite", "no_pretrained") if getattr(args, n, False)]
    given += [dest for dest, v in options.overrides(args).items() if v is not None]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise ValueError(f"--resume continues with the settings and data saved in {args.resume}; leave out {flags}")
    args.out = args.resume  # where it writes, and what --track names


def run(args) -> int:
    from fashionclf.engine import distributed

    if args.resume:
        check_resume_args(args)
    options.check_tracking(args)  # before any training: a wrong URI or a missing MLflow should not cost a run
    if distributed.init_from_env(args.device or "auto"):  # started by torchrun: one process of several
        ok, main_rank = False, distributed.is_main()
        try:
            out = _train(args, quiet=args.quiet or not main_rank)
            ok = True
        finally:
            distributed.shutdown(ok)
        if main_rank:  # rank 0 wrote the run
            options.track(args, [out])  # after leaving the group: an upload must not hold the other ranks
        return 0
    try:
        out = _train(args, quiet=args.quiet)
    except KeyboardInterrupt:
        from fashionclf.engine.checkpoint import CHECKPOINT, STATE

        if args.out and (Path(args.out) / CHECKPOINT / STATE).exists():
            print(
                f"fashionclf: interrupted; `fashionclf train --resume {args.out}` continues after the last finished epoch", file=sys.stderr
            )
        else:
            print("fashionclf: interrupted before the first epoch ended; nothing was kept", file=sys.stderr)
        return 130
    options.track(args, [out])
    return 0


def _resumed(args):
    """The config and data of the training saved in --resume DIR."""
    from fashionclf import api
    from fashionclf.training.supervised import resume_plan

    cfg, loaded = resume_plan(args.resume)
    if loaded is None:
        raise ValueError(f"{args.resume}: its training was given its data from Python; resume it there: fashionclf.train(..., resume=True)")
    loaded = {**loaded, "allow_download": not args.no_download}
    if args.data_dir:  # the same files, found elsewhere now (their checksums are checked)
        loaded["data_dir"] = args.data_dir
    ds, skipped = api.load_data(cfg, **loaded)
    for msg in skipped:
        print(f"fashionclf: left out {msg}", file=sys.stderr)
    return cfg, ds


def _train(args, quiet: bool) -> Path:
    from fashionclf import api
    from fashionclf.engine import distributed
    from fashionclf.engine.runs import check_writable
    from fashionclf.evaluation.calibrate import Promise

    options.promise(args)  # a bad --target-precision or --delta: one clear line before the data are loaded
    if not 0 < args.unknown_share <= 1:  # before the data are loaded
        raise ValueError(f"--unknown-share {args.unknown_share}: expected a share in (0, 1], e.g. {DEFAULT_KNOWN_SHARE}")
    if args.teacher and not args.unlabelled:  # before the data are loaded
        raise ValueError("--teacher needs --unlabelled FOLDER: the photos whose soft labels the teachers give the student")
    if args.store or on_store_by_default(args):
        return _train_on_store(args, quiet)
    if args.calibrate_on:
        raise ValueError("--calibrate-on goes with --store (a head on stored embeddings); other runs calibrate on validation")
    resume = bool(args.resume)
    if resume:
        cfg, data = _resumed(args)
        out = Path(args.resume)
    else:
        cfg = resolve(args)
        out = Path(args.out) if args.out else api.default_out(cfg)
        args.out = str(out)  # where an interrupted run tells the user to resume from
        check_writable(out, args.overwrite)
        data = options.load_data(args, cfg)
    ws = distributed.world_size()
    procs, verb = f" in {ws} processes" if ws > 1 else "", "resuming" if resume else "training"

    def started(run_cfg, run_dir) -> str:  # printed once the folder is held (a refused training prints nothing first)
        return f"{verb} {run_cfg.model} (seed {run_cfg.seed}) on {len(data.train_x)} images from {data.source}{procs} -> {run_dir}"

    progress = options.Progress(quiet, started)
    more = {"unknown_share": args.unknown_share, "unlabelled": args.unlabelled, "teachers": args.teacher}
    more["promise"] = options.promise(args) or Promise()
    run = api.train(cfg, out, data, args.overwrite, progress, resume=resume, **more)
    if run is None:  # a helper rank of a torchrun job
        return out
    m = run.metrics
    print(
        f"{cfg.model}: test accuracy {m['test_accuracy']:.4f}  test loss {m['test_loss']:.4f}  "
        f"val accuracy {m['val_accuracy']:.4f}  {m['epochs_run']} epochs in {m['train_seconds']:.1f}s  "
        f"({m['params']:,d} params, {m['precision']} on {m['device']})"
    )
    st = run.meta.get("self_training")
    if st:
        left = f"{st['review']} left for review, {st['unknown']} unknown, {st['unreadable']} unreadable"
        print(
            f"teacher: test accuracy {st['teacher_test_accuracy']:.4f} ({st['teacher']}); {st['kept']} of {st['considered']} kept ({left})"
        )
    ds = run.meta.get("distillation")
    if ds:
        accs = ", ".join(f"{t['model']} {t['test_accuracy']:.4f}" for t in ds["teachers"])
        left = f"{ds['unknown']} unknown, {ds['unreadable']} unreadable"
        print(f"teachers (test accuracy): {accs}; soft labels on {ds['kept']} of {ds['considered']} photos ({left})")
    print(f"review rule: {(m.get('calibration') or {}).get('promise', 'none: no validation split to fit it on')}")
    print(f"run folder: {out}")
    return out


def network_flags(args) -> list[str]:
    """The flags given that only a network's training uses (--epochs, --image-size, --seed, ...): with --store they are
    refused, and with --data and no --model they choose fine-tuning efficientnet_lite0 over the store route."""
    neutral = ("split_seed", "precision", "device", "threads", "extra_class_map")  # the store route's too; --class-map below
    given = [dest for dest, v in options.overrides(args).items() if v is not None and dest not in neutral]
    given += [
        n
        for n in ("seed", "image_size", "train_limit", "test_limit", "drop_path", "class_map", "data_dir")
        if getattr(args, n, None) is not None
    ]
    given += [n for n in ("no_pretrained",) if getattr(args, n, False)]
    given += ["data_cache"] if getattr(args, "data_cache", "auto") != "auto" else []
    return ["--" + n.replace("_", "-") for n in given]


def on_store_by_default(args) -> bool:
    """train --data FOLDER with nothing that asks for a network: the store route, measured best on a shop's photos
    (docs/results/embed-once.md), in the default store (embed.extract.default_store)."""
    from fashionclf.embed.extract import default_store

    chosen = (args.model, args.preset, args.config, args.resume, args.unlabelled, args.teacher)
    if not args.data or any(chosen) or network_flags(args):
        return False
    args.store = str(default_store())
    if not args.quiet:
        print(
            f"no --model: a head on the frozen backbones' features; vectors kept in {args.store} (--store DIR to choose)", file=sys.stderr
        )
    return True


def _train_on_store(args, quiet: bool) -> Path:
    """train --data FOLDER --store DIR: a head on stored embeddings (training/embedded.py)."""
    from datetime import datetime

    from fashionclf import api
    from fashionclf.evaluation.calibrate import Promise

    if not args.data:
        raise ValueError("--store fits a head on the stored features of --data FOLDER: give the labelled photos")
    other = [f for f, v in (("--resume", args.resume), ("--unlabelled", args.unlabelled), ("--teacher", args.teacher)) if v]
    if args.model not in (None, "frozen_lites") or args.preset or args.config or other:
        given = other + [f for f, v in (("--model", args.model), ("--preset", args.preset), ("--config", args.config)) if v]
        raise ValueError(f"--store trains model frozen_lites on the store's features; leave out {', '.join(given)}")
    if flags := network_flags(args):
        raise ValueError(f"--store fits a head on stored features, not a network: leave out {', '.join(flags)}")
    if args.precision not in (None, "auto", "fp32") or args.device not in (None, "auto", "cpu"):
        raise ValueError("--store runs embed and fit on the CPU in --precision auto or fp32; leave out --device and other precisions")
    out = Path(args.out) if args.out else Path(f"runs/frozen_lites-s{args.split_seed or 0}-{datetime.now():%Y%m%d-%H%M%S}")

    progress = options.embedding_progress
    run = api.train_on_store(
        args.data, out, args.store, val_data=args.val_data, split_seed=args.split_seed or 0, overwrite=args.overwrite,
        promise=options.promise(args) or Promise(), unknown_share=args.unknown_share, on_embed=None if quiet else progress,
        calibration=args.calibrate_on or "oof", precision=args.precision or "auto",
    )  # fmt: skip
    m, t = run.metrics, run.meta["trainer"]
    print(
        f"frozen_lites ({t['store_spec']['backbones']}): test accuracy {m['test_accuracy']:.4f}  val accuracy {m['val_accuracy']:.4f}  "
        f"head fitted in {m['train_seconds']:.1f}s (L2 {t['decay']:g}, chosen on validation)"
    )
    items = (m.get("calibration") or {}).get("calibration_items")
    print(f"review rule ({items} calibration photos, {run.meta['calibration_items']}): {(m.get('calibration') or {}).get('promise')}")
    unknown = m.get("unknown") or {}
    if unknown.get("score") == "embedding":
        share = unknown["known_share"]
        print(f"none of these: distances to the training photos (kNN, Mahalanobis) and the energy; {share:.0%} of validation counted known")
    print(f"run folder: {out}")
    return out
