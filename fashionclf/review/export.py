"""The catalogue's labels written out for training: class folders (hard links, or copies across file systems) or a
manifest (`path,label`, paths relative to the manifest). Automatic and reviewed labels go out; photos marked
unknown (none of these) or still waiting for a person do not.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

from fashionclf.core.io import UMASK, atomic_write_text
from fashionclf.review import db


def folder_name(label: str) -> str:
    """A class name as a folder name: path separators and leading dots replaced ('T-shirt/top' -> 'T-shirt_top')."""
    name = label.replace("/", "_").replace("\\", "_").strip()
    return "_" + name[1:] if name.startswith(".") else name or "_"


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # another drive (Windows): keep it absolute
        return str(path.resolve())


def export_labels(catalogue: str | Path, out: str | Path) -> dict:
    """Write the labelled photos to `out` (a .csv or .jsonl manifest, else a new folder of class folders).

    Never overwrites: an existing file or a non-empty folder is refused. Returns counts: written,
    per class, missing (files gone since labelling), and whether files were linked or copied.
    """
    out = Path(out)
    conn = db.connect(catalogue)
    try:
        rows = db.labelled(conn)
        waiting, unknown = db.stats(conn)["needs_review"], db.stats(conn)["unknown"]
    finally:
        conn.close()
    present = [(Path(p), label, sha) for p, label, sha in rows if Path(p).is_file()]
    missing = [p for p, _, _ in rows if not Path(p).is_file()]
    if not present:
        raise ValueError(f"{catalogue} has no labelled photo that still exists; label or review some first")
    if out.suffix.lower() in (".csv", ".jsonl"):
        if out.exists():
            raise ValueError(f"--out {out} already exists; choose another file (labels are never overwritten)")
        _write_manifest(out, present)
        how = "manifest"
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"--out {out} already exists and is not an empty folder; choose another")
        how = _write_folders(out, present)
    per_class: dict[str, int] = {}
    for _, label, _ in present:
        per_class[label] = per_class.get(label, 0) + 1
    return {"out": str(out), "written": len(present), "per_class": per_class, "missing": missing, "how": how,
            "left_out_waiting": waiting, "left_out_unknown": unknown}  # fmt: skip


def _write_manifest(out: Path, rows: list[tuple[Path, str, str]]) -> None:
    base = out.absolute().parent
    if out.suffix.lower() == ".jsonl":
        import json

        atomic_write_text(out, "".join(json.dumps({"path": _relative(p, base), "label": label}) + "\n" for p, label, _ in rows))
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    w.writerows([_relative(p, base), label] for p, label, _ in rows)
    atomic_write_text(out, buf.getvalue())


def _write_folders(out: Path, rows: list[tuple[Path, str, str]]) -> str:
    """Class folders built in a hidden sibling, then renamed into place: a crash leaves no half export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700; give the folder the permissions mkdir would
    how = "hard links"
    try:
        for src, label, sha in rows:
            folder = tmp / folder_name(label)
            folder.mkdir(exist_ok=True)
            dest = folder / src.name
            if dest.exists():  # same file name from two source folders: the content hash keeps them apart
                dest = folder / f"{src.stem}-{sha[:12]}{src.suffix}"
            try:
                os.link(src, dest)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(src, dest)
                how = "copies"
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return how
