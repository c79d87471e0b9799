"""`fashionclf serve` and `fashionclf export`: a run as an HTTP service or an ONNX file."""

from __future__ import annotations

import os
import sys

from fashionclf.apps.cli import options

ORDER = 50  # place in `fashionclf --help`
KEY_ENV = "FASHIONCLF_API_KEY"
MALLOC_ENV = "FASHIONCLF_SERVE_MALLOC"  # trim (default), keep or release: see _serve_memory and docs/serve-export.md


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="export a run as ONNX (pixels in, calibrated probabilities out), checked against PyTorch")
    s.add_argument("run", help="run folder")
    s.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write (never overwritten)")
    s.add_argument(
        "--int8",
        action="store_true",
        help="static int8, calibrated on the run's validation images; refused when test accuracy falls by more than 0.3 points",
    )
    s.add_argument("--data", help="with --int8, for an image-folder run: its folder (validation and test images)")
    s.add_argument("--val-data", help="with --int8 and --data: the run's validation folder, if it had one")
    s.add_argument("--data-dir", help="with --int8, for a Fashion-MNIST run: the folder with the IDX files")
    s.set_defaults(func=export)

    s = sub.add_parser("serve", help="an HTTP service and web page for a trained run (FastAPI + uvicorn)")
    s.add_argument("run", nargs="?", default="default", help="run folder (default: 'default', the ready model shipped in the package)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="torch (the run's model) or onnx (onnxruntime)")
    a = s.add_argument_group("access")
    key_help = f"require this key on every route but /health (visible in `ps`: prefer --api-key-file or ${KEY_ENV})"
    a.add_argument("--api-key", metavar="KEY", help=key_help)
    a.add_argument("--api-key-file", metavar="PATH", help="read the key from this file (its first line)")
    a.add_argument("--docs", action="store_true", help="serve Swagger UI at /docs from the swagger-ui-bundle package (off by default)")
    _limit_flags(s.add_argument_group("limits (413 past a size limit, 503 + Retry-After when busy, 408/504 past the timeout)"))
    rule = s.add_argument_group("review rule")
    options.add_promise_options(rule, fitted_here=False)
    rule.add_argument(
        "--audit-share",
        type=float,
        default=0.0,
        metavar="SHARE",
        help='flag this share of automatic labels for a person anyway, with "audit": true; their verdicts measure the '
        "automatic labels' precision (default 0)",
    )
    s.set_defaults(func=serve)


def _limit_flags(group) -> None:
    import dataclasses

    from fashionclf.apps.serving.limits import Limits, flag

    for f in dataclasses.fields(Limits):
        kind = int if f.type == "int" else float
        group.add_argument(flag(f.name), type=kind, default=f.default, metavar="N", help=f"{f.metadata['help']} (default {f.default:,})")


def export(args) -> int:
    from pathlib import Path

    from fashionclf.api import check_new_file, load_run

    run = load_run(args.run)
    out = Path(args.onnx)
    check_new_file(out, "--onnx")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--onnx {out}: expected a file name ending in .onnx")
    if (args.data or args.val_data or args.data_dir) and not args.int8:
        raise ValueError("--data, --val-data and --data-dir go with --int8 (they give its calibration and test images)")
    data, report = run.export(args.onnx, int8=args.int8, data=args.data, val_data=args.val_data, data_dir=args.data_dir)
    rows = report["parity"]
    for r in rows:
        print(
            f"parity batch {r['batch']:3d}: max |p_onnx - p_torch| {r['max_abs_diff']:.2e}, same argmax {r['same_argmax']}", file=sys.stderr
        )
    if "int8" in report:
        q = report["int8"]
        print(
            f"int8: test accuracy {q['fp32_accuracy'] * 100:.2f}% -> {q['int8_accuracy'] * 100:.2f}% "
            f"({q['drop_points']:+.2f} points lost) on {q['test_images']:,d} images",
            file=sys.stderr,
        )
    print(f"{args.onnx} ({len(data) / 1e6:.1f} MB): input 'pixels' (N, C, H, W) in [0, 1], output 'probabilities' (N, {len(run.classes)})")
    return 0


def api_key(args) -> str | None:
    """The key from --api-key, --api-key-file or $FASHIONCLF_API_KEY (one of them at most), or None."""
    given = [n for n, v in (("--api-key", args.api_key), ("--api-key-file", args.api_key_file)) if v is not None]
    if len(given) > 1:
        raise ValueError("give the API key once: --api-key or --api-key-file, not both")
    if args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                key = f.readline().strip()
        except UnicodeDecodeError:
            raise ValueError(f"--api-key-file {args.api_key_file}: not a text file") from None
        source = f"--api-key-file {args.api_key_file}"
    elif args.api_key is not None:
        key, source = args.api_key.strip(), "--api-key"
    elif os.environ.get(KEY_ENV) is not None:
        key, source = os.environ[KEY_ENV].strip(), f"${KEY_ENV}"
    else:
        return None
    if not key:
        raise ValueError(f"{source}: the API key is empty")
    return key


def _serve_memory() -> str:
    """How the service's process treats freed memory, from $FASHIONCLF_SERVE_MALLOC (measured in docs/serve-export.md).

    `keep_freed_memory` (cli/__init__.py, for every command) raises glibc's mmap and trim thresholds to 1 GiB,
    so a decoded photo's buffers are reused, and then kept at the peak for good.
    trim (default): keep that setting, and give the freed heap back whenever the workers fall idle after photos.
    keep: keep it and never give back.  release: fixed 256 KiB thresholds, every big buffer unmapped when freed.
    """
    from fashionclf.engine.device import glibc

    mode = os.environ.get(MALLOC_ENV, "trim")
    if mode not in ("trim", "keep", "release"):
        raise ValueError(f"${MALLOC_ENV}={mode!r}: expected trim, keep or release")
    libc = glibc()
    if mode != "release" or libc is None:
        return mode
    try:
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 256 << 10)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 10)
    except AttributeError:  # not glibc: nothing was changed either
        pass
    return mode


def serve(args) -> int:
    import dataclasses

    import numpy as np
    import uvicorn

    from fashionclf.api import load_run
    from fashionclf.apps.serving.app import create_app
    from fashionclf.apps.serving.guard import startup_warnings
    from fashionclf.apps.serving.limits import Limits
    from fashionclf.apps.serving.memory import resident_mb
    from fashionclf.infer.predict import png_bytes, with_promise

    key = api_key(args)
    limits = {f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}
    trim = _serve_memory() == "trim"
    wanted = options.promise(args)
    # the run is loaded here, before the port opens; with --target-precision/--delta its rule is fitted again
    run = with_promise(load_run(args.run), wanted) if wanted is not None else None
    app = create_app(
        args.run, backend=args.backend, api_key=key, docs=args.docs, trim_memory=trim, run=run, audit_share=args.audit_share, **limits
    )
    # one prediction of a 28x28 mid-grey image before the port opens: the first forward's allocations belong to the
    # resident size stated below
    app.state.predictor.predict([png_bytes(np.full((28, 28), 128, np.uint8))])
    rss = resident_mb()
    if rss is not None:  # what the limits allow on top of the loaded run (docs/serve-export.md#limits)
        ceiling = Limits(**limits).ceiling_mb(rss)
        print(f"memory: {rss:.0f} MB with the run loaded; at most about {ceiling:.0f} MB under these limits", file=sys.stderr)
    for line in startup_warnings(args.host, key):
        print(f"fashionclf: {line}", file=sys.stderr)
    routes = "/ (page), /v1/predict, /v1/models[/NAME[:predict]], /v2/... (Open Inference Protocol), /metrics, /health, /openapi.json"
    routes += ", /docs" if args.docs else ""
    print(f"serving {args.run} on http://{args.host}:{args.port}/: {routes}{'; API key required' if key else ''}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
