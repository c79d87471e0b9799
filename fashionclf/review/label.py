"""Predicting a folder of photos into a review catalogue: batch by batch, each batch one transaction, so a rerun
(or a run after a crash or a kill) skips every photo whose content is already in the catalogue."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from fashionclf.data.images import find_images
from fashionclf.infer.predict import rule_of
from fashionclf.review import audit, db


def label_folder(
    run,
    folder: str | Path,
    catalogue: str | Path,
    batch_size: int = 64,
    method: str = "grabcut",
    on_batch: Callable | None = None,
    audit_share: float = audit.DEFAULT_AUDIT_SHARE,
) -> dict:
    """run: a loaded fashionclf.api.Run (its .predict does the work). on_batch(done, to_do) after each committed batch.
    audit_share: the share of automatically labelled photos queued for a person anyway, unmarked (review/audit.py).

    Returns counts: total (image files found), added, already (content already in the catalogue, or earlier in
    the folder), audited (of those added), failed (unreadable; not stored, so tried again next time) and one error
    message per failure.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: expected at least 1")
    audit.check_share(audit_share)
    paths = find_images([Path(folder).absolute()])  # stored absolute: the desk and the export may run elsewhere
    if not paths:
        raise ValueError(f"no image files found in {folder} (looked for .jpg, .png, .webp, .bmp, .gif, .tif)")
    conn = db.connect(catalogue, create=True)
    counts: dict = {"total": len(paths), "added": 0, "already": 0, "audited": 0, "failed": 0, "errors": []}
    try:
        db.init(conn, list(run.classes), str(run.path), method)
        rule = rule_of(run) or {}
        words = {k: rule.get(k) for k in ("target_precision", "delta", "threshold", "promise")}
        db.set_meta(conn, {"audit_share": audit_share, "rule": words})
        known, todo = db.known_hashes(conn), []
        for p in paths:
            sha = hashlib.sha256(p.read_bytes()).hexdigest()
            counts["already"] += sha in known
            if sha not in known:
                known.add(sha)
                todo.append((p, sha))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            rows = run.predict([p for p, _ in chunk], method=method)
            counts["errors"] += [f"{r['file']}: {r['error']}" for r in rows if "error" in r]
            fresh = audit.mark([{**r, "sha256": sha} for r, (_, sha) in zip(rows, chunk) if "error" not in r], audit_share)
            counts["audited"] += sum(1 for r in fresh if r.get("audit"))
            counts["added"] += db.add_predictions(conn, fresh)
            if on_batch:
                on_batch(min(start + batch_size, len(todo)), len(todo))
    finally:
        conn.close()
    counts["failed"] = len(counts["errors"])
    return counts
