"""`fashionclf data check PATH`: counts, unreadable files, duplicates and leaks across splits, tiny classes, sizes."""

from __future__ import annotations

import json
import sys

ORDER = 15  # place in `fashionclf --help`: before training


def add_parser(sub) -> None:
    s = sub.add_parser("data", help="check a labelled photo collection (class folders, train/val/test folders or a manifest)")
    dsub = s.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser(
        "check",
        help="counts per class and split, unreadable files, exact and near duplicates across splits (leaks), tiny classes, "
        "imbalance, image sizes; exit 1 on a leak or an unreadable file",
    )
    c.add_argument("path", help="a folder of class folders, of train/ val/ test/ folders, or a .csv/.jsonl manifest (path,label[,split])")
    c.add_argument("--json", action="store_true", help="the whole report as one JSON object")
    c.add_argument(
        "--near",
        type=float,
        default=5.0,
        metavar="RMS",
        help="two photos whose 16x16 grayscale thumbnails differ by at most this many gray levels (root mean square) are near "
        "duplicates (default 5; resized and recompressed copies measured <= 2.5, different photos >= 11)",
    )
    c.add_argument("--tiny", type=int, default=10, help="flag a class with fewer images than this in a split (default 10)")
    c.set_defaults(func=check)


def check(args) -> int:
    from fashionclf.api import check_data

    if not 0 <= args.near <= 50:
        raise ValueError(f"--near {args.near}: expected 0-50 gray levels (0 turns near duplicates off but for identical pixels)")
    report = check_data(args.path, near_rms=args.near, tiny=args.tiny)
    if args.json:
        print(json.dumps(report))
    else:
        from fashionclf.data.check import summary_lines

        print("\n".join(summary_lines(report)))
    if not report["ok"]:
        print(f"fashionclf: {report['leaks']} leak(s) and {len(report['unreadable'])} unreadable file(s) in {args.path}", file=sys.stderr)
    return 0 if report["ok"] else 1
