"""The `fashionclf` command line: each command parses its arguments, calls the Python API, prints.

One file per command group (info, train, evaluate, predict, serve, study): each module here with an
`add_parser(sub)` adds its commands, in the order of its ORDER number. This file builds the parser
and turns errors a user can fix (bad data, bad run folder, unknown names) into one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from fashionclf.core import __version__


def build_parser() -> argparse.ArgumentParser:
    import importlib
    import pkgutil

    p = argparse.ArgumentParser(prog="fashionclf", description="Train, compare, evaluate and serve product-photo classifiers.")
    p.add_argument("--version", action="version", version=f"fashionclf {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    for m in sorted((m for m in modules if hasattr(m, "add_parser")), key=lambda m: m.ORDER):
        m.add_parser(sub)
    return p


# The optional dependencies, by the top-level module a missing one raises on, and the extra that installs it.
EXTRAS = {
    "matplotlib": "study",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "onnx": "export",
    "onnxruntime": "export",
    "mlflow": "track",
    "ray": "ray",
}


def main(argv=None) -> int:
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:
        print(f"fashionclf {__version__}")  # before the parser, which imports torch through the model registry
        return 0
    try:
        return _main(argv)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"fashionclf: error: this command needs {e.name}, which is not installed: pip install 'fashionclf[{extra}]'", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    from fashionclf.apps.cli import train
    from fashionclf.data.fashion_mnist import DataError
    from fashionclf.data.images import ImageError
    from fashionclf.engine.device import keep_freed_memory
    from fashionclf.engine.distributed import env_world_size
    from fashionclf.engine.runs import RunError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "more_inputs", False) and not any(x.startswith("-") for x in extra):
        args.inputs += extra  # `predict [RUN] --with RUN2 PHOTO...`: photos after an option (argparse takes one block)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if env_world_size() > 1 and args.func is not train.run:
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
