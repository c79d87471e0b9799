"""`fashionclf embed PATH... --store DIR`: every photo's backbone features, computed once into an embedding store."""

from __future__ import annotations

import json
import sys

from fashionclf.apps.cli import options

ORDER = 17  # place in `fashionclf --help`: after `data`, before training


def add_parser(sub) -> None:
    from fashionclf.models.frozen import DEFAULT_BACKBONES

    s = sub.add_parser(
        "embed",
        help="compute the frozen backbones' features of photos once into an embedding store; `train --store` then fits "
        "a model on them in seconds",
    )
    s.add_argument("paths", nargs="+", metavar="PATH", help="folders of photos (searched recursively: class folders, train/ val/ "
                   "test/ folders, unlabelled folders) and .csv/.jsonl manifests")  # fmt: skip
    s.add_argument("--store", required=True, metavar="DIR", help="the store folder: made where missing, added to where it exists")
    s.add_argument(
        "--backbones",
        default=None,
        help=f"for a new store: EfficientNet-Lite variants joined by '+' (default {DEFAULT_BACKBONES}); an existing store keeps its own",
    )
    s.add_argument("--image-size", type=int, default=None, help="for a new store: the letterboxed side photos are read at (default 260)")
    s.add_argument("--batch-size", type=int, default=16, help="photos per forward pass (default 16: measured faster than 32 and 64)")
    s.add_argument("--workers", type=int, default=2, help="threads decoding photos while the backbones run (default 2)")
    s.add_argument(
        "--precision",
        choices=["auto", "fp32"],
        default="auto",
        help="auto: bf16 where measured faster on this machine (default); fp32: the same vectors on every machine, slower",
    )
    s.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="embed on Ray Data actors (pip install 'fashionclf[ray]'): alone, a Ray instance on this machine; 'auto' or "
        "ray://HOST:PORT, that cluster (every node must see the photos at the same paths). This process writes the store",
    )
    s.add_argument(
        "--actors", type=int, default=1, help="with --ray: Ray actors embedding at once, each with its own backbones (default 1)"
    )
    s.add_argument("--json", action="store_true", help="the report as one JSON object")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.set_defaults(func=run)


def run(args) -> int:
    from fashionclf.api import embed

    if not 1 <= args.batch_size <= 1024 or not 1 <= args.workers <= 64:
        raise ValueError(f"--batch-size {args.batch_size} / --workers {args.workers}: expected 1-1024 photos and 1-64 threads")
    if not 1 <= args.actors <= 1024:
        raise ValueError(f"--actors {args.actors}: expected 1-1024")
    if args.actors != 1 and args.ray is None:
        raise ValueError("--actors goes with --ray (Ray Data actors); without --ray, --workers sets the decoding threads")
    if args.image_size is not None and not 64 <= args.image_size <= 512:
        raise ValueError(f"--image-size {args.image_size}: expected 64-512 pixels")

    progress = options.embedding_progress
    r = embed(
        args.paths,
        args.store,
        args.backbones,
        args.image_size,
        args.batch_size,
        args.workers,
        on_batch=None if args.quiet else progress,
        ray=args.ray,
        actors=args.actors,
        precision=args.precision,
    )
    for msg in r["skipped"]:
        print(f"fashionclf: left out {msg}", file=sys.stderr)
    if args.json:
        print(json.dumps(r))
        return 0
    speed = f": {r['photos_per_s']:.1f} photos/s in {r['precision']}" if r["embedded"] else ""
    print(
        f"{r['files']} files, {r['unique']} distinct photos: {r['embedded']} embedded in {r['seconds']:.1f}s{speed}, "
        f"{r['already']} already in the store"
    )
    print(f"store: {args.store} ({r['stored']} photos, {r['store_mb']:.1f} MB; backbones {r['backbones']} at {r['image_size']} px)")
    return 0
