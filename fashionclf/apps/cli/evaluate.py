"""`fashionclf evaluate` and `fashionclf robustness`: score a run."""

from __future__ import annotations

import json
import sys

ORDER = 30  # place in `fashionclf --help`


def add_parser(sub) -> None:
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
    s.set_defaults(func=evaluate)

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
    s.set_defaults(func=robustness)


def evaluate(args) -> int:
    from fashionclf.api import load_run
    from fashionclf.data.folders import parse_class_map

    if args.class_map and not args.data:
        raise ValueError("--class-map goes with --data FOLDER (labelled photos whose folder names it maps)")
    run = load_run(args.run)
    rep = run.evaluate(
        args.data,
        class_map=parse_class_map(args.class_map) if args.class_map else None,
        method=args.method,
        data_dir=args.data_dir,
        allow_download=not args.no_download,
    )
    for msg in rep.pop("skipped"):
        print(f"fashionclf: left out {msg}", file=sys.stderr)
    rep["run"] = str(args.run)
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{rep['model']} on {rep['data']}: accuracy {rep['accuracy']:.4f}  loss {rep['loss']:.4f}  ({rep['n']} images)")
    print(f"review rule: {rep['promise']}")
    for target, cov in (rep.get("coverage_at_precision") or {}).items():
        realised = "no automatic labels" if cov["precision"] is None else f"realised precision {cov['precision']:.4f}"
        print(f"on these images: {cov['coverage']:.1%} labelled automatically, {realised} (promised {float(target):.0%})")
    print(f"\n{'class':14s} {'precision':>9s} {'recall':>7s} {'f1':>7s} {'support':>8s}")
    for c in rep["per_class"]:
        print(f"{c['class']:14s} {c['precision']:9.4f} {c['recall']:7.4f} {c['f1']:7.4f} {c['support']:8d}")
    print("\nconfusion matrix (rows: true, columns: predicted)")
    for name, row in zip(run.classes, rep["confusion_matrix"]):
        print(f"{name:14s} " + " ".join(f"{v:5d}" for v in row))
    return 0


def robustness(args) -> int:
    from fashionclf.api import load_run

    rep = load_run(args.run).robustness(args.split, args.limit, args.seed, args.data_dir, allow_download=not args.no_download)
    rep["run"] = str(args.run)
    if args.json:
        print(json.dumps(rep))
        return 0
    clean, mean = rep["clean"] * 100, rep["mean"] * 100
    print(f"{rep['model']} on {rep['images']} {args.split} images: clean {clean:.2f}%  corrupted (mean) {mean:.2f}%")
    print(f"\n{'corruption':16s} " + " ".join(f"{'sev ' + str(s):>7s}" for s in rep["severities"]) + "     mean")
    for name, accs in rep["corruptions"].items():
        print(f"{name:16s} " + " ".join(f"{a * 100:7.2f}" for a in accs) + f"  {sum(accs) / len(accs) * 100:7.2f}")
    return 0
