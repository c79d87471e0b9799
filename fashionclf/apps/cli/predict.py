"""`fashionclf predict`: categorise photos with a run, to the terminal or into a resumable file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fashionclf.apps.cli import options

ORDER = 40  # place in `fashionclf --help`


def add_parser(sub) -> None:
    s = sub.add_parser("predict", help="categorise product photos (files or folders) with a trained run, or the ready model")
    s.add_argument(
        "inputs",
        nargs="+",
        metavar="[RUN] INPUT",
        help="a run folder (or 'default', the ready model shipped in the package, used when no run folder comes first), "
        "then image files or folders (searched recursively)",
    )
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
    options.add_promise_options(s, fitted_here=False)
    s.set_defaults(func=run, more_inputs=True)


def shown(name) -> str:
    """A file name for a one-line-per-file listing: backslashes and control characters (a newline, a tab) escaped,
    so every result stays on its line and its first field is the whole name, as --json and CSV keep them."""
    return "".join(c if c.isprintable() and c != "\\" else ascii(c)[1:-1] if c != "\\" else "\\\\" for c in str(name))


def line(r: dict) -> str:
    r = {**r, "file": shown(r["file"])}
    if "error" in r:
        return f"{r['file']}\terror: {r['error']}"
    flag = "  REVIEW" if r["needs_review"] else ""
    if r.get("unknown"):  # none of the run's classes: its nearest classes follow
        nearest = ", ".join(f"{t['label']} {t['confidence']:.2f}" for t in r["top_k"])
        return f"{r['file']}\tunknown (none of these classes){flag}  ({nearest})"
    others = ", ".join(f"{t['label']} {t['confidence']:.2f}" for t in r["top_k"][1:])
    return f"{r['file']}\t{r['label']} {r['confidence']:.2f}{flag}" + (f"  ({others})" if others else "")


def run(args) -> int:
    from fashionclf.api import load_run
    from fashionclf.data.images import find_images
    from fashionclf.infer.predict import class_order, predict_files, with_promise

    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    args.run, args.inputs = split_run(args.inputs)
    wanted = options.promise(args)  # before anything loads: a bad value is one clear line
    run = load_run(args.run)
    also = [load_run(r) for r in args.with_runs or []]
    if wanted is not None:
        run, also = with_promise(run, wanted), [with_promise(r, wanted) for r in also]
    for r in also:
        class_order(run, r)  # the same classes, or a clear message before any photo is decoded
    paths = find_images(args.inputs)
    if not paths:
        raise ValueError(f"no image files found in {', '.join(args.inputs)} (looked for .jpg, .png, .webp, .bmp, .gif, .tif)")
    for r in [run, *also]:
        if r.metrics.get("calibration") is None:
            print(f"fashionclf: {r.path} has no calibration (trained before it existed): every item is flagged for review", file=sys.stderr)
    if args.out:
        return _to_file(args, run, paths, also)
    failed = 0
    for r in predict_files(run, paths, top_k=args.top_k, save_preprocessed=args.save_preprocessed, method=args.method, also=also):
        if "error" in r:
            failed += 1
            print(f"fashionclf: skipped {shown(r['file'])}: {r['error']}", file=sys.stderr)
        print(json.dumps(r) if args.json else line(r), flush=True)
    return _none_usable(len(paths)) if failed == len(paths) else 0


def split_run(items: list[str]) -> tuple[str, list[str]]:
    """(run, inputs) from `predict [RUN] INPUT...`: the first item is the run when it is 'default' or a folder with
    meta.json or ready.json (a run or a bundle); otherwise every item is an input and the ready model answers."""
    first = Path(items[0])
    if items[0] == "default" or (first / "meta.json").is_file() or (first / "ready.json").is_file():
        if len(items) == 1:
            raise ValueError(f"{items[0]} is a run; give the photos to categorise after it: fashionclf predict {items[0]} PHOTO...")
        return items[0], items[1:]
    return "default", items


def _none_usable(n: int) -> int:
    """Exit status 2 when no input could be used: bad input, as for any other command."""
    print(f"fashionclf: error: none of the {n} input files could be read as an image; see the lines above for each", file=sys.stderr)
    return 2


def _to_file(args, run, paths, also) -> int:
    from tqdm import tqdm

    from fashionclf.api import check_new_file
    from fashionclf.infer.batch import output_format, predict_to_file

    out = Path(args.out)
    output_format(out)  # fail on a bad suffix before any work
    check_new_file(out)
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
    return _none_usable(len(paths)) if counts["failed"] == len(paths) else 0
