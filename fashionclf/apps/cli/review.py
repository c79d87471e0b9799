"""`fashionclf label`, `fashionclf review`, `fashionclf labels ...`: from predictions to reviewed labels to the next model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = 45  # place in `fashionclf --help`: after predict


def add_parser(sub) -> None:
    s = sub.add_parser("label", help="predict a folder of photos into a review catalogue (SQLite; resumable)")
    s.add_argument("run", help="run folder")
    s.add_argument("folder", help="folder of photos (searched recursively)")
    s.add_argument("--db", required=True, metavar="FILE", help="the catalogue file (created if missing; photos already in it are skipped)")
    s.add_argument("--batch-size", type=int, default=64, help="photos predicted and committed together (default 64)")
    s.add_argument("--method", choices=["grabcut", "threshold"], default="grabcut", help="how the item is cut from its background")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument(
        "--audit-share",
        type=float,
        default=0.02,
        metavar="SHARE",
        help="of the photos labelled automatically, this share goes to the desk anyway, unmarked: the verdicts measure "
        "the automatic labels' precision (default 0.02; 0: none)",
    )
    s.set_defaults(func=label)

    s = sub.add_parser("review", help="a web page to decide the photos the model was unsure of, least certain first")
    s.add_argument("db", help="the catalogue file written by `fashionclf label`")
    s.add_argument("--run", help="run folder for heat maps (default: the run that labelled the catalogue, if it is still there)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8010)
    s.add_argument(
        "--api-key", metavar="KEY", help="require this key on every route (visible in `ps`: prefer --api-key-file or $FASHIONCLF_API_KEY)"
    )
    s.add_argument("--api-key-file", metavar="PATH", help="read the key from this file (its first line)")
    s.set_defaults(func=review)

    s = sub.add_parser("labels", help="write a catalogue's labels out for training, or round-trip them through Label Studio")
    lsub = s.add_subparsers(dest="labels_command", required=True)
    e = lsub.add_parser("export", help="automatic and reviewed labels as class folders (hard links) or a .csv/.jsonl manifest")
    e.add_argument("db", help="the catalogue file")
    e.add_argument("--out", required=True, help="a new folder (class folders), or FILE.csv / FILE.jsonl (a manifest); never overwritten")
    e.set_defaults(func=export)
    x = lsub.add_parser("export-labelstudio", help="tasks with the model's labels as pre-annotations, and the labeling config")
    x.add_argument("db", help="the catalogue file")
    x.add_argument(
        "--out", required=True, metavar="FILE.json", help="the tasks (Label Studio JSON import format); the config goes beside it"
    )
    x.add_argument("--document-root", default="/", help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: image URLs are relative to it")
    x.add_argument("--url-prefix", default="/data/local-files/?d=", help="what goes before the relative path (default: local files)")
    x.add_argument("--all", action="store_true", help="every photo, not only those needing review")
    x.set_defaults(func=export_labelstudio)
    i = lsub.add_parser("import-labelstudio", help="finished annotations (Label Studio's JSON or JSON-MIN export) as reviewed decisions")
    i.add_argument("db", help="the catalogue file")
    i.add_argument("export", help="the JSON file exported from Label Studio")
    i.set_defaults(func=import_labelstudio)


def label(args) -> int:
    from tqdm import tqdm

    from fashionclf.api import label_folder

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected at least 1")
    bar = tqdm(unit="img", desc="label", file=sys.stderr, disable=args.quiet)

    def on_batch(done, total):
        bar.total = total
        bar.update(done - bar.n)

    try:
        c = label_folder(args.run, args.folder, args.db, args.batch_size, args.method, on_batch, args.audit_share)
    except KeyboardInterrupt:
        bar.close()
        print(f"fashionclf: interrupted; run the same command again to resume ({args.db} keeps every finished batch)", file=sys.stderr)
        return 130
    bar.close()
    for err in c["errors"]:
        print(f"fashionclf: skipped {err}", file=sys.stderr)
    from fashionclf.review import db

    conn = db.connect(args.db)
    try:
        s = db.stats(conn)
    finally:
        conn.close()
    print(
        f"{c['added']} photos added, {c['already']} already in the catalogue, {c['failed']} unreadable -> {args.db}: "
        f"{s['auto']} labelled automatically, {s['needs_review']} need review (of them {c['audited']} new audits of automatic "
        f"labels), {s['reviewed']} reviewed, {s['unknown']} none of these"
    )
    return 1 if c["failed"] and not c["added"] and not c["already"] else 0


def review(args) -> int:
    import uvicorn

    from fashionclf.api import load_run
    from fashionclf.apps.cli.serve import api_key
    from fashionclf.apps.desk.app import create_app
    from fashionclf.apps.serving.guard import startup_warnings
    from fashionclf.review import db

    conn = db.connect(args.db)
    try:
        meta = db.meta(conn)
    finally:
        conn.close()
    run_dir = args.run or (meta.get("run") if meta.get("run") and Path(meta["run"], "meta.json").is_file() else None)
    run = load_run(run_dir) if run_dir else None
    if run is not None and list(run.classes) != meta["classes"]:
        raise ValueError(f"--run {run_dir}: its classes {run.classes} are not the catalogue's {meta['classes']}")
    key = api_key(args)
    app = create_app(args.db, run, meta.get("method", "grabcut"), api_key=key)
    for line in startup_warnings(args.host, key):
        print(f"fashionclf: {line}", file=sys.stderr)
    heat = f"heat maps from {run_dir}" if run else "no heat maps (no run; pass --run RUN)"
    print(f"reviewing {args.db} on http://{args.host}:{args.port}/ ({heat}); add ?reviewer=NAME to the address", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def export(args) -> int:
    from fashionclf.api import export_labels

    c = export_labels(args.db, args.out)
    for p in c["missing"]:
        print(f"fashionclf: left out {p}: the file is gone", file=sys.stderr)
    per = ", ".join(f"{k} {v}" for k, v in sorted(c["per_class"].items()))
    print(
        f"{c['written']} labelled photos -> {c['out']} ({c['how']}; {per}); left out: {c['left_out_waiting']} still to review, "
        f"{c['left_out_unknown']} none of these"
    )
    return 0


def export_labelstudio(args) -> int:
    from fashionclf.api import check_new_file
    from fashionclf.core.io import atomic_write_text
    from fashionclf.review.labelstudio import export_tasks

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: expected a .json file (Label Studio's JSON import format)")
    config = out.with_name(out.stem + ".config.xml")
    check_new_file(out)
    check_new_file(config)
    got = export_tasks(args.db, args.document_root, args.url_prefix, args.all)
    atomic_write_text(config, got["config"])
    atomic_write_text(out, json.dumps(got["tasks"], indent=1) + "\n")
    print(f"{len(got['tasks'])} tasks -> {out}; labeling config -> {config} (paste it into the project's Labeling Interface, Code)")
    return 0


def import_labelstudio(args) -> int:
    from fashionclf.review.labelstudio import import_annotations

    c = import_annotations(args.db, args.export)
    print(
        f"{c['decided']} decisions written to {args.db}; {c['conflicts']} conflicts (decided elsewhere since the export, kept as they "
        f"were), {c['skipped']} tasks without an annotation, {c['unmatched']} tasks not from this catalogue"
    )
    return 0
