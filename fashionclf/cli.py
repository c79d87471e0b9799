"""The `fashionclf` command line: parses arguments, calls the library, prints.

Errors a user can fix (bad data, bad run folder, unknown names) print one
line saying what and how, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from .data import DataError, load_fashion_mnist, load_split
from .images import ImageError
from .models import count_params, create_model, list_models, model_info
from .runs import RunError, atomic_write_text, check_writable, load_run
from .train import PRESETS, RECOMMENDED_MODEL, keep_freed_memory, resolve_config


def _progress(quiet: bool):
    """tqdm callbacks for fit(): one bar per epoch with running loss and accuracy."""
    if quiet:
        return None, None
    if not sys.stderr.isatty():  # logs (CI, nohup) get one line per epoch, no bar
        return _print_epoch, None
    from tqdm import tqdm

    state = {}

    def on_batch_factory(epoch, n_batches):
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}", leave=False, file=sys.stderr, dynamic_ncols=True)
        state["bar"] = bar

        def on_batch(b, loss, acc):
            bar.update(1)
            if b % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")

        return on_batch

    def on_epoch(row):
        if "bar" in state:
            state["bar"].close()
        _print_epoch(row)

    return on_epoch, on_batch_factory


def _print_epoch(row: dict) -> None:
    print(
        f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s",
        file=sys.stderr,
    )


def _folder_kwargs(args, model: str) -> dict | None:
    """Model arguments for an image-folder dataset: RGB input at --image-size (None for Fashion-MNIST)."""
    if not getattr(args, "data", None):
        if getattr(args, "val_data", None) or getattr(args, "image_size", None):
            raise ValueError("--val-data and --image-size go with --data FOLDER (an image-folder dataset)")
        return None
    kwargs = {"in_chans": 3}
    if "image_size" in _build_args(model):
        kwargs["image_size"] = args.image_size or 128
    return kwargs


def _build_args(model: str) -> set[str]:
    import inspect

    return set(inspect.signature(model_info(model).build).parameters)


def _model_kwargs(args, model: str) -> dict | None:
    """--data's input size and --drop-path, as arguments of the model's constructor (None: none given)."""
    folder = _folder_kwargs(args, model)
    if folder:
        _check_input_size(model, folder, args.image_size or 128)
    kwargs = folder or {}
    if getattr(args, "drop_path", None) is not None:
        takes = [n for n in list_models() if "drop_path" in _build_args(n)]
        if "drop_path" not in _build_args(model):
            raise ValueError(f"--drop-path: {model} has no stochastic depth; models that take it: {', '.join(takes)}")
        if not 0 <= args.drop_path < 1:
            raise ValueError(f"--drop-path {args.drop_path}: expected a rate in [0, 1)")
        kwargs["drop_path"] = args.drop_path
    return kwargs or None


def _check_input_size(model: str, kwargs: dict, size: int) -> None:
    """Fail before loading thousands of photos if the model cannot take size x size RGB input."""
    import torch

    net = create_model(model, **{**kwargs, **({"pretrained": False} if model_info(model).pretrained else {})})
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    except RuntimeError as e:
        raise ValueError(
            f"model {model} cannot take {size}x{size} RGB images ({str(e).splitlines()[0]}); resnet, advanced_cnn and "
            "efficientnet_lite0 can"
        ) from None


def _load_data(args, cfg):
    if getattr(args, "data", None):
        from .folders import load_image_folder

        size = args.image_size or 128
        data, skipped = load_image_folder(args.data, args.val_data, size, split_seed=cfg.split_seed)
        for msg in skipped:
            print(f"fashionclf: left out {msg}", file=sys.stderr)
        if args.train_limit:
            data.train_x, data.train_y = data.train_x[: args.train_limit], data.train_y[: args.train_limit]
        return data
    data = load_fashion_mnist(args.data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed, allow_download=not args.no_download)
    if args.train_limit:
        # The official order is already shuffled, so a prefix is close to class-balanced.
        n = args.train_limit
        data.train_x, data.train_y = data.train_x[:n], data.train_y[:n]
    if cfg.extra_photos:
        from .folders import add_converted_photos

        for msg in add_converted_photos(data, cfg.extra_photos, cfg.extra_class_map, cfg.extra_repeat):
            print(f"fashionclf: left out {msg}", file=sys.stderr)
    return data


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the model's seed setting)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="random affine augmentation")
    p.add_argument("--aug-rotation", type=float, help="augmentation: max rotation in degrees")
    p.add_argument("--aug-zoom", type=float, help="augmentation: scale drawn in [1-zoom, 1+zoom]")
    p.add_argument("--aug-shift", type=float, help="augmentation: max translation as a fraction of the side")
    p.add_argument("--aug-erase", type=float, help="augmentation: probability of random erasing")
    p.add_argument("--aug-photo", type=float, help="augmentation: probability of photo-style blur/noise/contrast/haze")
    p.add_argument("--aug-cutmix", type=float, help="augmentation: probability that a batch is CutMixed (labels mixed by area)")
    p.add_argument("--aug-vflip", type=float, help="augmentation: probability of an upside-down flip")
    p.add_argument(
        "--aug-levels",
        type=float,
        help="augmentation: probability of new black and white points (gray ground, low contrast), half reversed",
    )
    p.add_argument("--drop-path", type=float, help="models that take it (efficientnet_lite0): stochastic depth rate, e.g. 0.1")
    p.add_argument("--early-stopping", type=int, help="patience in epochs (0 = off)")
    p.add_argument("--schedule", choices=["plateau", "onecycle", "cosine"], help="learning-rate schedule")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float, help="0-0.2")
    p.add_argument("--ema-decay", type=float, help="keep an exponential moving average of the weights, e.g. 0.999 per 128 images (0 = off)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="average each image with its mirror image")
    p.add_argument("--freeze-epochs", type=int, help="pretrained models: epochs that train only the new head")
    p.add_argument("--body-lr-mult", type=float, help="pretrained models: the body's learning rate as a fraction of the head's")
    p.add_argument("--resolution", type=int, help="pixels per side the model sees (1-28; below 28 images are downsampled, then upsampled)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the training step (GPUs)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per CPU this process may use)")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX files")
    p.add_argument("--data", help="an image-folder dataset instead of Fashion-MNIST: one subfolder of photos per class")
    p.add_argument("--val-data", help="with --data: a folder of the same classes for validation (model choice)")
    p.add_argument("--image-size", type=int, help="with --data: photos are letterboxed to this square size (default 128)")
    p.add_argument(
        "--extra-photos",
        help="labelled photos (one subfolder per class) converted as predict converts photos and mixed into Fashion-MNIST training",
    )
    p.add_argument(
        "--class-map",
        help="with --extra-photos: folder names to classes, e.g. 't-shirt=T-shirt/top,pants=Trouser,hat=-' ('-' leaves a folder out)",
    )
    p.add_argument("--extra-repeat", type=int, help="with --extra-photos: times each photo appears per epoch (1-10, default 3)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading when the data are not found")
    p.add_argument("--train-limit", type=int, help="train on the first N training images only (quick checks)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _overrides(args) -> dict:
    from .folders import parse_class_map

    if args.data and args.extra_photos:
        raise ValueError("--extra-photos mixes photos into Fashion-MNIST training; with --data the photos are the dataset already")
    if (args.class_map or args.extra_repeat) and not args.extra_photos:
        raise ValueError("--class-map and --extra-repeat go with --extra-photos FOLDER")
    return {
        "extra_photos": args.extra_photos,
        "extra_class_map": parse_class_map(args.class_map) if args.class_map else None,
        "extra_repeat": args.extra_repeat,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "augment": args.augment,
        "aug_rotation": args.aug_rotation,
        "aug_zoom": args.aug_zoom,
        "aug_shift": args.aug_shift,
        "aug_erase": args.aug_erase,
        "aug_photo": args.aug_photo,
        "aug_cutmix": args.aug_cutmix,
        "aug_vflip": args.aug_vflip,
        "aug_levels": args.aug_levels,
        "early_stopping": args.early_stopping,
        "schedule": args.schedule,
        "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "ema_decay": args.ema_decay,
        "tta": args.tta,
        "freeze_epochs": args.freeze_epochs,
        "body_lr_mult": args.body_lr_mult,
        "precision": args.precision,
        "resolution": args.resolution,
        "compile": args.compile,
        "device": args.device,
        "threads": args.threads,
    }


def _add_track_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--track",
        nargs="?",
        const="sqlite:///mlflow.db",
        metavar="URI",
        help="log to MLflow (params, per-epoch metrics, run folder, registered model); URI default sqlite:///mlflow.db",
    )
    p.add_argument("--experiment", default="fashionclf", help="with --track: the MLflow experiment (default fashionclf)")
    p.add_argument("--register", metavar="NAME", help="with --track: registered model name (default fashionclf-<model>)")


def _check_tracking(args) -> None:
    if getattr(args, "track", None):
        from .tracking import check_store

        check_store(args.track)


def _track(args, run_dirs: list[Path], report_files: list[Path] = ()) -> None:
    """Log finished run folders to MLflow when --track was given (a parent run groups a study's runs)."""
    if not getattr(args, "track", None):
        return
    from .tracking import TrackingError, finish_parent, log_run_folder, start_parent

    parent = start_parent(args.track, args.experiment, Path(args.out).name) if report_files else None
    ok = False
    try:
        for d in run_dirs:
            model = json.loads((d / "meta.json").read_text())["model"]
            name = args.register or f"fashionclf-{model}"
            try:
                res = log_run_folder(d, args.track, args.experiment, name, parent_run_id=parent)
            except TrackingError:
                raise
            except Exception as e:  # MLflow's own errors (server gone, permissions): the run folder is safe on disk
                raise TrackingError(
                    f"MLflow at {args.track} failed while logging {d}: {str(e).splitlines()[0]}; the run folder is kept"
                ) from None
            print(f"mlflow: {d} -> run {res['run_id']}, model {name} v{res['model_version']}", file=sys.stderr)
        ok = True
    finally:
        if parent:
            finish_parent(args.track, parent, list(report_files), ok)


def cmd_models(args) -> int:
    for name in list_models():
        print(f"{name:18s} {count_params(create_model(name)):>9,d} params  {model_info(name).description}")
    return 0


def cmd_train(args) -> int:
    from . import distributed

    _check_tracking(args)  # before any training: a wrong URI or a missing MLflow should not cost a run
    if distributed.init_from_env(args.device or "auto"):  # started by torchrun: one process of several
        ok, main_rank = False, distributed.is_main()
        try:
            out = _train(args, quiet=args.quiet or not main_rank)
            ok = True
        finally:
            distributed.shutdown(ok)
        if main_rank:  # rank 0 wrote the run
            _track(args, [out])  # after leaving the group: an upload must not hold the other ranks
        return 0
    _track(args, [_train(args, quiet=args.quiet)])
    return 0


def _train(args, quiet: bool) -> Path:
    """Train one run (or this rank's part of it) and return its folder."""
    from . import distributed
    from .study import train_and_save

    model_kwargs = None
    model = args.model or (PRESETS[args.preset]["model"] if args.preset in PRESETS else None) or RECOMMENDED_MODEL
    if args.no_pretrained:
        if not model_info(model).pretrained:
            raise ValueError(f"--no-pretrained: {model} has no pretrained weights to leave out")
        model_kwargs = {"pretrained": False}
    extra = _model_kwargs(args, model)
    if extra:
        model_kwargs = {**(model_kwargs or {}), **extra}
    cfg = resolve_config(args.model, args.preset, seed=args.seed, model_kwargs=model_kwargs, **_overrides(args))
    out = Path(args.out or f"runs/{cfg.model}-s{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}")
    check_writable(out, args.overwrite)
    data = _load_data(args, cfg)
    on_epoch, on_batch_factory = _progress(quiet)
    ws = distributed.world_size()
    if distributed.is_main():
        procs = f" in {ws} processes" if ws > 1 else ""
        print(f"training {cfg.model} (seed {cfg.seed}) on {len(data.train_x)} images from {data.source}{procs} -> {out}", file=sys.stderr)
    m = train_and_save(cfg, data, out, args.overwrite, on_epoch, on_batch_factory)
    if not distributed.is_main():
        return out
    print(
        f"{cfg.model}: test accuracy {m['test_accuracy']:.4f}  test loss {m['test_loss']:.4f}  "
        f"val accuracy {m['val_accuracy']:.4f}  {m['epochs_run']} epochs in {m['train_seconds']:.1f}s  "
        f"({m['params']:,d} params, {m['precision']} on {m['device']})"
    )
    print(f"run folder: {out}")
    return out


def cmd_evaluate(args) -> int:
    from .study import evaluate_run

    if args.class_map and not args.data:
        raise ValueError("--class-map goes with --data FOLDER (labelled photos whose folder names it maps)")
    run = load_run(args.run)
    if args.data:
        # labelled photos (one subfolder per class), preprocessed as predict does: every photo is scored
        from .folders import parse_class_map
        from .predict import load_labelled_photos

        x, y, skipped = load_labelled_photos(run, args.data, args.method, parse_class_map(args.class_map))
        for msg in skipped:
            print(f"fashionclf: left out {msg}", file=sys.stderr)
        source = args.data
    elif args.data_dir:
        # Any folder holding a t10k pair: Fashion-MNIST's own, or a user's set in the same format.
        x, y, _ = load_split(args.data_dir, "test", official=False)
        source = args.data_dir
    else:
        data = load_fashion_mnist(None, allow_download=not args.no_download)
        x, y, source = data.test_x, data.test_y, data.source
    try:
        scores = evaluate_run(run, x, y)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    rep = {"run": str(args.run), "model": run.meta["model"], "data": str(source), **scores}
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{rep['model']} on {rep['data']}: accuracy {rep['accuracy']:.4f}  loss {rep['loss']:.4f}  ({rep['n']} images)")
    print(f"\n{'class':14s} {'precision':>9s} {'recall':>7s} {'f1':>7s} {'support':>8s}")
    for c in rep["per_class"]:
        print(f"{c['class']:14s} {c['precision']:9.4f} {c['recall']:7.4f} {c['f1']:7.4f} {c['support']:8d}")
    print("\nconfusion matrix (rows: true, columns: predicted)")
    for name, row in zip(run.classes, rep["confusion_matrix"]):
        print(f"{name:14s} " + " ".join(f"{v:5d}" for v in row))
    return 0


def _model_seeds(text: str, default: int) -> list[tuple[str, int]]:
    """'mlp,resnet:3' -> [('mlp', default), ('resnet', 3)]: a model may have its own number of seeds."""
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


def cmd_robustness(args) -> int:
    from .study import robustness

    run = load_run(args.run)
    # The run's own validation split (its val_size and split_seed): the figures that may choose between runs.
    cfg = run.config
    data = load_fashion_mnist(args.data_dir, val_size=cfg.val_size, split_seed=cfg.split_seed, allow_download=not args.no_download)
    x, y = (data.test_x, data.test_y) if args.split == "test" else (data.val_x, data.val_y)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    rep = {"run": str(args.run), "model": run.meta["model"], "split": args.split, **robustness(run, x, y, seed=args.seed)}
    if args.json:
        print(json.dumps(rep))
        return 0
    clean, mean = rep["clean"] * 100, rep["mean"] * 100
    print(f"{rep['model']} on {rep['images']} {args.split} images: clean {clean:.2f}%  corrupted (mean) {mean:.2f}%")
    print(f"\n{'corruption':16s} " + " ".join(f"{'sev ' + str(s):>7s}" for s in rep["severities"]) + "     mean")
    for name, accs in rep["corruptions"].items():
        print(f"{name:16s} " + " ".join(f"{a * 100:7.2f}" for a in accs) + f"  {sum(accs) / len(accs) * 100:7.2f}")
    return 0


def cmd_predict(args) -> int:
    from .images import find_images
    from .predict import predict_files

    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    from .predict import class_order

    run = load_run(args.run)
    also = [load_run(r) for r in args.with_runs or []]
    for r in also:
        class_order(run, r)  # the same classes, or a clear message before any photo is decoded
    paths = find_images(args.inputs)
    if not paths:
        raise ValueError(f"no image files found in {', '.join(args.inputs)} (looked for .jpg, .png, .webp, .bmp, .gif, .tif)")
    for r in [run, *also]:
        if r.metrics.get("calibration") is None:
            print(f"fashionclf: {r.path} has no calibration (trained before it existed): every item is flagged for review", file=sys.stderr)
    if args.out:
        return _predict_to_file(args, run, paths, also)
    failed = 0
    for r in predict_files(run, paths, top_k=args.top_k, save_preprocessed=args.save_preprocessed, method=args.method, also=also):
        if "error" in r:
            failed += 1
            print(f"fashionclf: skipped {r['file']}: {r['error']}", file=sys.stderr)
        print(json.dumps(r) if args.json else _predict_line(r), flush=True)
    return 1 if failed == len(paths) else 0


def _predict_to_file(args, run, paths, also) -> int:
    from tqdm import tqdm

    from .batch import output_format, predict_to_file

    out = Path(args.out)
    output_format(out)  # fail on a bad suffix before any work
    check_writable_file(out)
    bar = tqdm(total=len(paths), unit="img", desc="predict", file=sys.stderr, disable=args.quiet)

    def on_batch(written, total):
        bar.update(written - bar.n)

    try:
        counts = predict_to_file(
            run, paths, out, top_k=args.top_k, method=args.method, save_preprocessed=args.save_preprocessed, on_batch=on_batch, also=also
        )
    except KeyboardInterrupt:
        bar.close()
        print(f"fashionclf: interrupted; run the same command again to resume ({out}.partial keeps what is done)", file=sys.stderr)
        return 130
    bar.close()
    resumed = f", {counts['skipped_done']} already done before resuming" if counts["resumed"] else ""
    print(f"{counts['done']} predictions, {counts['failed']} unreadable files{resumed} -> {out}", file=sys.stderr)
    return 1 if counts["failed"] == len(paths) else 0


def cmd_export(args) -> int:
    from .export import export_checked
    from .runs import atomic_write_bytes

    run = load_run(args.run)
    out = Path(args.onnx)
    check_writable_file(out, "--onnx")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--onnx {out}: expected a file name ending in .onnx")
    data, rows = export_checked(run)  # raises before anything is written
    for r in rows:
        print(
            f"parity batch {r['batch']:3d}: max |p_onnx - p_torch| {r['max_abs_diff']:.2e}, same argmax {r['same_argmax']}", file=sys.stderr
        )
    atomic_write_bytes(out, data)
    print(f"{out} ({len(data) / 1e6:.1f} MB): input 'pixels' (N, C, H, W) in [0, 1], output 'probabilities' (N, {len(run.classes)})")
    return 0


def _predict_line(r: dict) -> str:
    if "error" in r:
        return f"{r['file']}\terror: {r['error']}"
    flag = "  REVIEW" if r["needs_review"] else ""
    others = ", ".join(f"{t['label']} {t['confidence']:.2f}" for t in r["top_k"][1:])
    return f"{r['file']}\t{r['label']} {r['confidence']:.2f}{flag}" + (f"  ({others})" if others else "")


def check_writable_file(path: Path, option: str = "--out") -> None:
    if path.exists():
        raise ValueError(f"{option} {path} already exists; choose another file (results are never overwritten)")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{option} {path}: {path.parent} is a file, not a folder")


def cmd_label_issues(args) -> int:
    import safetensors.torch
    import torch

    from .report import label_issue_blocks, write_blocks
    from .runs import atomic_write_bytes, to_json
    from .study import out_of_fold_probs

    if args.extra_photos:
        # repeated photos would sit in several folds at once, so their out-of-fold predictions would not be
        raise ValueError("label-issues searches the training data alone; leave out --extra-photos (run it on the photos with --data)")
    out = Path(args.out)
    check_writable(out, args.overwrite)
    kwargs = _model_kwargs(args, args.model or RECOMMENDED_MODEL)
    cfg = resolve_config(args.model, None, seed=args.seed, model_kwargs=kwargs, **{**_overrides(args), "early_stopping": 0})
    data = _load_data(args, cfg)
    # every training image (train and validation split): label errors live there
    x, y = torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])

    def on_fold(f, n):
        print(f"== fold {f + 1}/{n}: {cfg.model} on {len(y) - len(y) // n:,d} images", file=sys.stderr)

    probs = out_of_fold_probs(cfg, x, y, args.folds, on_fold)
    blocks, issues = label_issue_blocks(x.numpy(), y.numpy(), probs.numpy(), list(data.classes))
    atomic_write_bytes(out / "oof_probs.safetensors", safetensors.torch.save({"probs": probs, "labels": y}))
    atomic_write_text(out / "label_issues.json", to_json({"model": cfg.model, "folds": args.folds, "issues": issues}))
    paths = write_blocks(out, blocks, "fashionclf: likely label errors")
    acc = (probs.argmax(1) == y).float().mean().item()
    print(f"out-of-fold accuracy {acc * 100:.2f}% on {len(y):,d} training images; {len(issues)} flagged as likely label errors")
    for i in issues[:10]:
        print(f"  #{i['index']:5d}  {data.classes[i['label']]:12s} -> {data.classes[i['suggested']]:12s}  p {i['p_suggested']:.3f}")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from .serve import create_app

    app = create_app(args.run, backend=args.backend)  # loads the run once, before the port opens
    print(f"serving {args.run} on http://{args.host}:{args.port}/ (page), /v1/predict, /v1/models, /health", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_compare(args) -> int:
    from .report import summarize, write_report  # matplotlib loads only for reports
    from .study import DEFAULT_MODELS, compare

    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    plan = _model_seeds(args.models, args.seeds) if args.models else [(n, args.seeds) for n in DEFAULT_MODELS]
    kwargs = {n: _model_kwargs(args, n) for n, _ in plan}  # checked once per model, not per seed
    configs = [resolve_config(n, None, seed=s, model_kwargs=kwargs[n], **_overrides(args)) for n, k in plan for s in range(k)]
    out = Path(args.out)
    _check_tracking(args)
    data = _load_data(args, configs[0])
    on_epoch, on_batch_factory = _progress(args.quiet)

    def on_run_start(cfg, run_dir):
        print(f"== {cfg.model} seed {cfg.seed} -> {run_dir}", file=sys.stderr)

    results = compare(configs, data, out, args.overwrite, on_run_start, on_epoch, on_batch_factory, args.robustness)
    paths = write_report(out, results, data)
    from .study import run_label

    _track(args, [out / "runs" / f"{run_label(c).replace('@', '-')}-s{c.seed}" for c in configs], [out / "results.json", *paths])
    for row in summarize(results["runs"]):
        print(
            f"{row['model']:14s} test acc {row['acc_mean'] * 100:6.2f} ± {row['acc_std'] * 100:.2f}  "
            f"({row['n']} seed{'s' if row['n'] > 1 else ''}, {row['train_seconds']:.0f}s train, {row['params']:,d} params)"
        )
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def cmd_resolution(args) -> int:
    from .report import write_resolution_report
    from .study import compare, resolution_configs

    if args.data:
        # the study downsamples 28x28 scans to 7-28 px; photos have their own size (train --image-size)
        raise ValueError("resolution studies Fashion-MNIST's 28x28 images; leave out --data (photos: compare runs of train --image-size)")
    sizes = _int_list(args.sizes, "--sizes")
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    overrides = {k: v for k, v in _overrides(args).items() if k != "resolution"}
    configs = resolution_configs(args.model, sizes, args.seeds, **overrides)
    data = _load_data(args, configs[0])
    on_epoch, on_batch_factory = _progress(args.quiet)

    def on_run_start(cfg, run_dir):
        print(f"== {cfg.model} at {cfg.resolution} px, seed {cfg.seed} -> {run_dir}", file=sys.stderr)

    results = compare(configs, data, args.out, args.overwrite, on_run_start, on_epoch, on_batch_factory)
    paths, summary = write_resolution_report(args.out, results, list(data.classes))
    print(f"{'px':>4s} {'test acc %':>10s}  " + "  ".join(f"{c[:11]:>11s}" for c in summary["recall"][sizes[0]]))
    for px in summary["sizes"]:
        print(f"{px:4d} {summary['overall'][px] * 100:10.2f}  " + "  ".join(f"{v * 100:11.1f}" for v in summary["recall"][px].values()))
    for c, v in summary["last_step"].items():
        seeds = f"{v['significant_pairs']}/{v['pairs']} seeds significant"
        print(f"{c}: {v['gain_points']:+.2f} points over the last step ({seeds}): {v['verdict']}")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 7,14,21,28") from None
    if not values or values[0] < 1 or values[-1] > 28:
        raise ValueError(f"{flag} {text!r}: expected sizes between 1 and 28 pixels")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fashionclf", description="Train, compare and evaluate Fashion-MNIST classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the registered models")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("train", help="train one model into a run folder")
    s.add_argument("--model", help=f"one of: {', '.join(list_models())} (default: {RECOMMENDED_MODEL}, the seed's production pick)")
    s.add_argument("--preset", help=f"a named recipe: {', '.join(PRESETS)} (its model unless --model is given; flags override it)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="run folder (default: runs/<model>-s<seed>-<time>)")
    s.add_argument("--no-pretrained", action="store_true", help="train a pretrained-capable model (efficientnet_lite0) from scratch")
    _add_train_options(s)
    _add_track_options(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="score a run on the test set or on a folder of t10k IDX files")
    s.add_argument("run", help="run folder")
    s.add_argument("--data-dir", help="folder holding t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)")
    s.add_argument("--data", help="labelled photos: one subfolder per class (names as the run's classes, case and punctuation ignored)")
    s.add_argument("--method", choices=["grabcut", "threshold"], default="grabcut", help="with --data: how items are cut from photos")
    s.add_argument(
        "--class-map",
        help="with --data: folder names to the run's classes, e.g. 't-shirt=T-shirt/top,pants=Trouser,hat=-' ('-' leaves a folder out)",
    )
    s.add_argument("--no-download", action="store_true")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="categorise product photos (files or folders) with a trained run")
    s.add_argument("run", help="run folder")
    s.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    s.add_argument("--json", action="store_true", help="one JSON object per line and image")
    s.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    s.add_argument(
        "--out", help="write results to this .jsonl or .csv file (streamed, with a progress bar; rerun the same command to resume)"
    )
    s.add_argument("--quiet", action="store_true", help="with --out: no progress bar")
    s.add_argument("--save-preprocessed", metavar="DIR", help="write the 28x28 image the model saw, per input, as PNG")
    s.add_argument("--method", choices=["grabcut", "threshold"], default="grabcut", help="how the item is cut from its background")
    s.add_argument(
        "--with",
        dest="with_runs",
        action="append",
        metavar="RUN",
        help="also ask this run (repeatable; e.g. an RGB photo run beside a 28x28 one) and average the calibrated "
        "probabilities; the classes must match by name; an item is flagged when the runs disagree",
    )
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a run as ONNX (pixels in, calibrated probabilities out), checked against PyTorch")
    s.add_argument("run", help="run folder")
    s.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write (never overwritten)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("label-issues", help="find likely label errors in the training data with k-fold out-of-fold predictions")
    s.add_argument("--model", default="tuned_cnn", help="the model each fold trains (default: tuned_cnn, ~1 minute per fold here)")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="label-issues", help="output folder (default: label-issues)")
    _add_train_options(s)
    s.set_defaults(func=cmd_label_issues)

    s = sub.add_parser("serve", help="an HTTP service and web page for a trained run (FastAPI + uvicorn)")
    s.add_argument("run", help="run folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="torch (the run's model) or onnx (onnxruntime)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("robustness", help="accuracy of a run under 14 corruptions of the test (or validation) set at 5 severities")
    s.add_argument("run", help="run folder")
    s.add_argument("--limit", type=int, help="use the first N images of the split (quick checks)")
    s.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="test (report) or the run's validation split (to choose between runs without looking at test)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the random parts of the corruptions")
    s.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    s.add_argument("--no-download", action="store_true")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")
    s.set_defaults(func=cmd_robustness)

    s = sub.add_parser("compare", help="the seed study: train several models over seeds and write a report")
    s.add_argument(
        "--models",
        help=f"comma-separated, NAME:SEEDS for a model's own seed count (default: mlp,simple_cnn,tuned_cnn,advanced_cnn); "
        f"valid: {', '.join(list_models())}",
    )
    s.add_argument("--seeds", type=int, default=1, help="seeds per model (0..N-1)")
    s.add_argument("--out", default="study", help="output folder (default: study)")
    s.add_argument(
        "--robustness",
        type=int,
        default=0,
        metavar="N",
        help="also run the corruption suite on N validation images per run (into the report and the recommendation)",
    )
    _add_train_options(s)
    _add_track_options(s)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("resolution", help="train one model at several resolutions: does accuracy still climb at 28 px?")
    s.add_argument("--model", default="tuned_cnn", help=f"one of: {', '.join(list_models())} (default: tuned_cnn)")
    s.add_argument("--sizes", default="7,14,21,28", help="pixels per side, comma-separated (default: 7,14,21,28)")
    s.add_argument("--seeds", type=int, default=1, help="seeds per size (0..N-1)")
    s.add_argument("--out", default="resolution", help="output folder (default: resolution)")
    _add_train_options(s)
    s.set_defaults(func=cmd_resolution)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import env_world_size

    if env_world_size() > 1 and args.func is not cmd_train:
        print("fashionclf: error: only `train` runs under torchrun; start other commands as one process", file=sys.stderr)
        return 2
    keep_freed_memory()  # a process-wide allocator setting: the CLI's to make, not the library's on import
    try:
        return args.func(args)
    except (DataError, RunError, ImageError, ValueError) as e:
        print(f"fashionclf: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. --out on a read-only or full disk
        print(f"fashionclf: error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fashionclf: interrupted; finished runs are kept", file=sys.stderr)
        return 130
