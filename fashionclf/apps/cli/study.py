"""`fashionclf compare`, `resolution` and `label-issues`: studies of many runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fashionclf.apps.cli import options
from fashionclf.models import list_models

ORDER = 60  # place in `fashionclf --help`


def add_parser(sub) -> None:
    s = sub.add_parser("label-issues", help="find likely label errors in the training data with k-fold out-of-fold predictions")
    s.add_argument("--model", default="tuned_cnn", help="the model each fold trains (default: tuned_cnn, ~1 minute per fold here)")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="label-issues", help="output folder (default: label-issues)")
    options.add_train_options(s)
    s.set_defaults(func=label_issues)

    # conflict_handler: compare's --class-map (below) replaces the train options' one, to say it also maps --photos
    s = sub.add_parser("compare", help="the seed study: train several models over seeds and write a report", conflict_handler="resolve")
    s.add_argument(
        "--models",
        help=f"comma-separated, NAME:SEEDS for a model's own seed count (default: mlp,simple_cnn,tuned_cnn,advanced_cnn); "
        f"valid: {', '.join(list_models())}",
    )
    s.add_argument("--seeds", type=int, default=1, help="seeds per model (0..N-1)")
    s.add_argument("--out", default="study", help="output folder (default: study)")
    s.add_argument(
        "--quick",
        action="store_true",
        help="the seed study in minutes (`make run`): each model for fewer epochs than its recipe (study/plan.py's QUICK, "
        "chosen by measurement: docs/results/quick-study.md); the report says so",
    )
    s.add_argument(
        "--robustness",
        type=int,
        metavar="N",
        help="score every run on the corruption suite (14 corruptions x 5 severities) on N validation images, into the "
        "report's table and recommendation; default 1000, which added about 11 s per mlp run and 40 s per tuned_cnn run on "
        "2 CPU cores shared with training jobs (docs/study.md); 0 turns it off; Fashion-MNIST only (off with --data)",
    )
    s.add_argument(
        "--photos",
        metavar="FOLDER",
        help="also score every run on these labelled photos (one subfolder per class, converted as predict converts "
        "photos), into the report's table and recommendation; checked before anything trains",
    )
    s.add_argument(
        "--choose-by",
        choices=("accuracy", "auto-share"),
        default="accuracy",
        help="the report's recommendation rule: accuracy (equally accurate within 1 point, then the most robust, then the "
        "fastest; the default) or auto-share (the largest share of validation photos labelled with no person at 99%% "
        "precision, cross-fitted, then accuracy)",
    )
    options.add_train_options(s)
    s.add_argument(
        "--class-map",
        metavar="MAP",
        help="with --photos (and with --extra-photos, one map for both): folder names to classes, "
        "e.g. 't-shirt=T-shirt/top,pants=Trouser,hat=-' ('-' leaves a folder out)",
    )
    options.add_track_options(s)
    s.set_defaults(func=compare)

    s = sub.add_parser("resolution", help="train one model at several resolutions: does accuracy still climb at 28 px?")
    s.add_argument("--model", default="tuned_cnn", help=f"one of: {', '.join(list_models())} (default: tuned_cnn)")
    s.add_argument("--sizes", default="7,14,21,28", help="pixels per side, comma-separated (default: 7,14,21,28)")
    s.add_argument("--seeds", type=int, default=1, help="seeds per size (0..N-1)")
    s.add_argument("--out", default="resolution", help="output folder (default: resolution)")
    options.add_train_options(s)
    s.set_defaults(func=resolution)


def model_seeds(text: str, default: int) -> list[tuple[str, int]]:
    """'mlp,resnet:3' -> [('mlp', default), ('resnet', 3)]: a model may have its own number of seeds."""
    from fashionclf.models import model_info

    plan = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, k = item.partition(":")
        model_info(name)
        if k and (not k.isdigit() or int(k) < 1):
            raise ValueError(f"--models {item!r}: the seed count after ':' must be a whole number of at least 1")
        plan.append((name, int(k) if k else default))
    return plan


def compare(args) -> int:
    from fashionclf import api
    from fashionclf.data.folders import parse_class_map
    from fashionclf.study.compare import DEFAULT_MODELS, run_folder
    from fashionclf.study.report import summarize

    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    if args.robustness is not None and args.robustness < 0:
        raise ValueError(f"--robustness {args.robustness}: expected a number of validation images (0 turns the suite off)")
    if args.class_map and not (args.photos or args.extra_photos):
        raise ValueError("--class-map goes with --photos FOLDER or --extra-photos FOLDER (labelled photos whose folder names it maps)")
    photo_map = parse_class_map(args.class_map) if args.photos and args.class_map else None
    plan = model_seeds(args.models, args.seeds) if args.models else [(n, args.seeds) for n in DEFAULT_MODELS]
    kwargs = {n: options.model_kwargs(args, n) for n, _ in plan}  # checked once per model, not per seed
    given = options.overrides(args if args.extra_photos else argparse.Namespace(**{**vars(args), "class_map": None}))
    configs = [c for n, k in plan for c in api.study_configs([(n, k)], model_kwargs=kwargs[n], **given)]
    study = None
    if args.quick:
        from fashionclf.study.plan import quick, quick_record

        full, configs = configs, quick(configs)
        study = quick_record(full, configs)
    out = Path(args.out)
    options.check_tracking(args)
    data = options.load_data(args, configs[0])
    timed = api.plan_study(configs, data, out, args.overwrite, args.robustness)
    if not args.quiet:
        print_plan(timed)
    progress = StudyProgress(args.quiet, timed)
    results, paths = api.compare(
        configs, data, out, args.overwrite, args.robustness, progress, args.photos, photo_map, args.choose_by, study
    )
    progress.close()
    options.track(args, [run_folder(out, c) for c in configs], [out / "results.json", *paths])
    for msg in results.get("photos", {}).get("left_out", []):
        print(f"fashionclf: left out {msg}", file=sys.stderr)
    shown = (("corrupted", "corrupted"), ("photo", "photos"), ("val_auto", "automatic (val, cross-fitted)"))
    for row in summarize(results["runs"]):
        robust = "".join(f"  {label} {row[k] * 100:.2f}" for k, label in shown if row[k] is not None)
        print(
            f"{row['model']:14s} test acc {row['acc_mean'] * 100:6.2f} ± {row['acc_std'] * 100:.2f}{robust}  "
            f"({row['n']} seed{'s' if row['n'] > 1 else ''}, {row['train_seconds']:.0f}s train, {row['params']:,d} params)"
        )
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def print_plan(timed) -> None:
    """The plan before anything trains: each run's epochs and estimated time, and the study's in all."""
    from fashionclf.study.plan import clock_text

    print("plan (times estimated from the step cost measured on this machine):", file=sys.stderr)
    for p in timed:
        what = "finished before: reused" if p.reused else f"{p.epochs:3d} epochs  about {clock_text(p.seconds)}"
        print(f"  {p.model:14s} seed {p.seed}  {what}", file=sys.stderr)
    print(f"  in all about {clock_text(sum(p.seconds for p in timed))}", file=sys.stderr)


class StudyProgress(options.Progress):
    """The commands' progress, plus one line for the whole study: elapsed and remaining time (study/plan.py's clock),
    a tqdm bar on a terminal, a line after each epoch in logs."""

    def __init__(self, quiet: bool, timed):
        from fashionclf.study.plan import StudyClock

        super().__init__(quiet, lambda cfg, run_dir: f"== {cfg.model} seed {cfg.seed} -> {run_dir}")
        self.clock, self.study_bar, self.n_batches = StudyClock(timed), None, 1
        if self.bars:
            from tqdm import tqdm

            self.study_bar = tqdm(total=1000, position=0, file=sys.stderr, bar_format="study {bar} {desc}", dynamic_ncols=True)

    def on_run_start(self, cfg, run_dir) -> None:
        super().on_run_start(cfg, run_dir)
        self.clock.run_started(cfg.model, cfg.seed)

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        super().on_epoch_start(epoch, n_batches)
        self.n_batches = max(1, n_batches)

    def on_batch_end(self, batch: int, loss: float, accuracy: float) -> None:
        super().on_batch_end(batch, loss, accuracy)
        if batch % 20 == 0:
            self._show((batch + 1) / self.n_batches)

    def on_epoch_end(self, row: dict) -> None:
        super().on_epoch_end(row)
        self.clock.epoch_done()
        self._show(0.0)
        if not self.quiet and self.study_bar is None:
            print(f"study: {self._text(self.clock.elapsed(), self.clock.remaining())}", file=sys.stderr)

    def _text(self, elapsed: float, left: float) -> str:
        from fashionclf.study.plan import clock_text

        return f"{clock_text(elapsed)} elapsed, about {clock_text(left)} left"

    def _show(self, part: float) -> None:
        if self.study_bar is not None:
            elapsed, left = self.clock.elapsed(), self.clock.remaining(part)
            self.study_bar.n = round(1000 * elapsed / max(elapsed + left, 1e-9))
            self.study_bar.set_description_str(self._text(elapsed, left))

    def close(self) -> None:
        if self.study_bar is not None:
            self.study_bar.close()


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 7,14,21,28") from None
    if not values or values[0] < 1 or values[-1] > 28:
        raise ValueError(f"{flag} {text!r}: expected sizes between 1 and 28 pixels")
    return values


def resolution(args) -> int:
    from fashionclf import api

    if args.data:
        # the study downsamples 28x28 scans to 7-28 px; photos have their own size (train --image-size)
        raise ValueError("resolution studies Fashion-MNIST's 28x28 images; leave out --data (photos: compare runs of train --image-size)")
    sizes = int_list(args.sizes, "--sizes")
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    given = {k: v for k, v in options.overrides(args).items() if k != "resolution"}
    from fashionclf.study.compare import resolution_configs

    data = options.load_data(args, resolution_configs(args.model, sizes[:1], 1, **given)[0])
    progress = options.Progress(args.quiet, lambda cfg, run_dir: f"== {cfg.model} at {cfg.resolution} px, seed {cfg.seed} -> {run_dir}")
    _, paths, summary = api.resolution_study(args.model, sizes, args.seeds, data, args.out, args.overwrite, progress, **given)
    print(f"{'px':>4s} {'test acc %':>10s}  " + "  ".join(f"{c[:11]:>11s}" for c in summary["recall"][sizes[0]]))
    for px in summary["sizes"]:
        print(f"{px:4d} {summary['overall'][px] * 100:10.2f}  " + "  ".join(f"{v * 100:11.1f}" for v in summary["recall"][px].values()))
    for c, v in summary["last_step"].items():
        seeds = f"{v['significant_pairs']}/{v['pairs']} seeds significant"
        print(f"{c}: {v['gain_points']:+.2f} points over the last step ({seeds}): {v['verdict']}")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def label_issues(args) -> int:
    from fashionclf import api
    from fashionclf.engine.runs import check_writable
    from fashionclf.training.recipes import resolve_config

    if args.extra_photos:
        # repeated photos would sit in several folds at once, so their out-of-fold predictions would not be
        raise ValueError("label-issues searches the training data alone; leave out --extra-photos (run it on the photos with --data)")
    out = Path(args.out)
    check_writable(out, args.overwrite)
    kwargs = options.model_kwargs(args, args.model)
    cfg = resolve_config(args.model, None, seed=args.seed, model_kwargs=kwargs, **{**options.overrides(args), "early_stopping": 0})
    data = options.load_data(args, cfg)
    n = len(data.train_y) + len(data.val_y)

    def on_fold(f, k):
        print(f"== fold {f + 1}/{k}: {cfg.model} on {n - n // k:,d} images", file=sys.stderr)

    found = api.find_label_issues(cfg, data, out, args.folds, on_fold)
    issues = found["issues"]
    acc, n = found["accuracy"] * 100, found["n"]
    print(f"out-of-fold accuracy {acc:.2f}% on {n:,d} training images; {len(issues)} flagged as likely label errors")
    for i in issues[:10]:
        print(f"  #{i['index']:5d}  {data.classes[i['label']]:12s} -> {data.classes[i['suggested']]:12s}  p {i['p_suggested']:.3f}")
    print("report: " + ", ".join(str(p) for p in found["paths"]))
    return 0
