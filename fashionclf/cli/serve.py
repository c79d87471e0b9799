"""`fashionclf serve` and `fashionclf export`: a run as an HTTP service or an ONNX file."""

from __future__ import annotations

import sys

ORDER = 50  # place in `fashionclf --help`


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="export a run as ONNX (pixels in, calibrated probabilities out), checked against PyTorch")
    s.add_argument("run", help="run folder")
    s.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write (never overwritten)")
    s.set_defaults(func=export)

    s = sub.add_parser("serve", help="an HTTP service and web page for a trained run (FastAPI + uvicorn)")
    s.add_argument("run", help="run folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--backend", choices=["torch", "onnx"], default="torch", help="torch (the run's model) or onnx (onnxruntime)")
    s.set_defaults(func=serve)


def export(args) -> int:
    from pathlib import Path

    from fashionclf.api import check_new_file, load_run

    run = load_run(args.run)
    out = Path(args.onnx)
    check_new_file(out, "--onnx")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--onnx {out}: expected a file name ending in .onnx")
    data, report = run.export(args.onnx)
    rows = report["parity"]
    for r in rows:
        print(
            f"parity batch {r['batch']:3d}: max |p_onnx - p_torch| {r['max_abs_diff']:.2e}, same argmax {r['same_argmax']}", file=sys.stderr
        )
    print(f"{args.onnx} ({len(data) / 1e6:.1f} MB): input 'pixels' (N, C, H, W) in [0, 1], output 'probabilities' (N, {len(run.classes)})")
    return 0


def serve(args) -> int:
    import uvicorn

    from fashionclf.serving.app import create_app

    app = create_app(args.run, backend=args.backend)  # loads the run once, before the port opens
    print(f"serving {args.run} on http://{args.host}:{args.port}/ (page), /v1/predict, /v1/models, /health", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
