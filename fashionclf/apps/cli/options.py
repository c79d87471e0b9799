"""What several commands share: training flags generated from the config's fields, progress lines, tracking.

A training setting is declared once, in fashionclf/core/config.py; its flag, help text and --help group come
from there. Options that are not settings (which data, where to write) are written out below.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from fashionclf.core.config import TrainConfig
from fashionclf.core.settings import GROUPS
from fashionclf.data.augment import AugmentConfig
from fashionclf.training.callbacks import Callbacks


def _flag_fields():
    """(dest, flag, field) for every setting that has a flag: TrainConfig's, then AugmentConfig's as --aug-*."""
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("flag"):
            yield f.name, "--" + f.name.replace("_", "-"), f
    for f in dataclasses.fields(AugmentConfig):
        yield f"aug_{f.name}", "--aug-" + f.name.replace("_", "-"), f


def add_train_options(p: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """Every setting as a flag, grouped as --help shows them; the default None means 'the recipe's value'."""
    groups = {k: p.add_argument_group(title) for k, title in GROUPS.items()}
    for dest, flag, f in _flag_fields():
        if dest in exclude:
            continue
        meta, g = f.metadata, groups[f.metadata["group"]]
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=meta["help"])
        else:
            g.add_argument(flag, dest=dest, type={"int": int, "float": float}.get(kind, str), choices=meta["choices"], help=meta["help"])
    g = groups["photos"]
    g.add_argument(
        "--class-map",
        help="with --extra-photos: folder names to classes, e.g. 't-shirt=T-shirt/top,pants=Trouser,hat=-' ('-' leaves a folder out)",
    )
    g = groups["data"]
    g.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files")
    g.add_argument("--data", help="an image-folder dataset instead of Fashion-MNIST: one subfolder of photos per class")
    g.add_argument("--val-data", help="with --data: a folder of the same classes for validation (model choice)")
    g.add_argument("--image-size", type=int, help="with --data: photos are letterboxed to this square size (default 128)")
    g.add_argument(
        "--data-cache",
        choices=("auto", "memory", "disk"),
        default="auto",
        help="with --data: decoded images in memory, or in files mapped from the cache for folders larger than memory "
        "(auto: disk when they would take over 15%% of the available memory)",
    )
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading when the data are not found")
    g.add_argument("--train-limit", type=int, help="train on the first N training images only (quick checks)")
    g.add_argument("--test-limit", type=int, help="score on the first N test images only (quick checks: the test figures are of those N)")
    groups["pretrained"].add_argument(
        "--drop-path", type=float, help="models that take it (efficientnet_lite0): stochastic depth rate, e.g. 0.1"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def overrides(args) -> dict:
    """The settings given on the command line (None: not given), ready for resolve_config."""
    from fashionclf.data.folders import parse_class_map

    given = {dest: getattr(args, dest, None) for dest, _, _ in _flag_fields()}
    if getattr(args, "class_map", None) or given.get("extra_repeat"):
        if not given.get("extra_photos"):
            raise ValueError("--class-map and --extra-repeat go with --extra-photos FOLDER")
    if getattr(args, "class_map", None):
        given["extra_class_map"] = parse_class_map(args.class_map)
    return given


def data_options(args) -> dict:
    """The keyword arguments of fashionclf.api.load_data from the command line."""
    return {
        "data": args.data,
        "val_data": args.val_data,
        "image_size": args.image_size,
        "data_dir": args.data_dir,
        "allow_download": not args.no_download,
        "train_limit": args.train_limit,
        "data_cache": args.data_cache,
        "test_limit": args.test_limit,
    }


def load_data(args, cfg):
    from fashionclf.api import load_data as load

    ds, skipped = load(cfg, **data_options(args))
    for msg in skipped:
        print(f"fashionclf: left out {msg}", file=sys.stderr)
    return ds


def model_kwargs(args, model: str) -> dict | None:
    from fashionclf.api import model_kwargs as kw

    return kw(model, bool(args.data), args.image_size, args.drop_path) or None


def embedding_progress(done: int, todo: int) -> None:
    """`embed` and `train --store`: photos embedded so far, one line rewritten on a terminal, a line each in logs."""
    print(f"embedding: {done}/{todo} photos", file=sys.stderr, end="\r" if sys.stderr.isatty() else "\n")


class Progress(Callbacks):
    """What the commands show while training: one tqdm bar per epoch with running loss and accuracy on a terminal,
    one line per epoch in logs (CI, nohup), nothing with --quiet; `started(cfg, run_dir)` gives the line printed
    once a training holds its folder (each run of a study, self-training's teacher and student), --quiet or not."""

    def __init__(self, quiet: bool, started: Callable | None = None):
        self.quiet, self.bars, self.started, self.bar = quiet, not quiet and sys.stderr.isatty(), started, None

    def on_run_start(self, cfg, run_dir) -> None:
        if self.started is not None:
            print(self.started(cfg, run_dir), file=sys.stderr)

    def on_epoch_start(self, epoch: int, n_batches: int) -> None:
        if self.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=n_batches, desc=f"epoch {epoch}", leave=False, file=sys.stderr, dynamic_ncols=True)

    @property
    def wants_batches(self) -> bool:
        return self.bars

    def on_batch_end(self, batch: int, loss: float, accuracy: float) -> None:
        self.bar.update(1)
        if batch % 20 == 0:
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")

    def on_epoch_end(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            print_epoch(row)


def print_epoch(row: dict) -> None:
    print(
        f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s",
        file=sys.stderr,
    )


def add_track_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment tracking (MLflow)")
    g.add_argument(
        "--track",
        nargs="?",
        const="sqlite:///mlflow.db",
        metavar="URI",
        help="log to MLflow (params, per-epoch metrics, run folder, registered model); URI default sqlite:///mlflow.db",
    )
    g.add_argument("--experiment", default="fashionclf", help="with --track: the MLflow experiment (default fashionclf)")
    g.add_argument("--register", metavar="NAME", help="with --track: registered model name (default fashionclf-<model>)")


def check_tracking(args) -> None:
    if getattr(args, "track", None):
        from fashionclf.apps.tracking import check_store

        check_store(args.track)


def track(args, run_dirs: list[Path], report_files: list[Path] = ()) -> None:
    """Log finished run folders to MLflow when --track was given, one line per run."""
    if not getattr(args, "track", None):
        return
    from fashionclf.apps.tracking import log_runs

    for d, res in log_runs(args.track, args.experiment, args.register, run_dirs, report_files, Path(args.out).name):
        print(f"mlflow: {d} -> run {res['run_id']}, model {res['name']} v{res['model_version']}", file=sys.stderr)


def add_promise_options(p: argparse.ArgumentParser, fitted_here: bool) -> None:
    """--target-precision and --delta: what the review rule guarantees (evaluation/calibrate.py). fitted_here: the
    command fits the rule (train); otherwise it fits the run's rule again on the run's own calibration items."""
    from fashionclf.evaluation.calibrate import DEFAULT_DELTA, DEFAULT_TARGET_PRECISION

    again = "" if fitted_here else "; given, the run's rule is fitted again on its own calibration items (default: the run's own)"
    p.add_argument(
        "--target-precision",
        type=float,
        metavar="P",
        help=f"automatic labels are at least this precise (default {DEFAULT_TARGET_PRECISION}){again}",
    )
    p.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help=f"... with probability 1 - D over the calibration items (default {DEFAULT_DELTA}: 95%% confidence){again}",
    )


def promise(args):
    """The Promise the options ask for (defaults filled in), or None where neither was given."""
    from fashionclf.evaluation.calibrate import DEFAULT_DELTA, DEFAULT_TARGET_PRECISION, Promise

    if args.target_precision is None and args.delta is None:
        return None
    target = DEFAULT_TARGET_PRECISION if args.target_precision is None else args.target_precision
    return Promise(target, DEFAULT_DELTA if args.delta is None else args.delta)
