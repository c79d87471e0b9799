"""The Label Studio round trip, as files: no server, no SDK.

Out: the catalogue's photos as tasks in Label Studio's JSON import format, each with the model's
label as a pre-annotation (`predictions`, one `result` of type `choices`), and the labeling config
they go with (the standard image-classification template: `<Image name="image">`, `<Choices
name="choice" toName="image">`, one `<Choice>` per class and one for "None of these").

In: Label Studio's JSON export (tasks with `annotations`) or its JSON-MIN export; each task's latest
annotation that was not cancelled becomes a reviewed decision in the catalogue. A task carries the
item's id, content hash and version from the export, so an annotation of a photo that was decided in
the review desk meanwhile is a conflict, reported and not written.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from fashionclf.review import db

FROM_NAME, TO_NAME = "choice", "image"
NONE_OF_THESE = "None of these"
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL for files under LOCAL_FILES_DOCUMENT_ROOT


def labeling_config(classes: list[str]) -> str:
    """The labeling config (XML) the exported tasks go with."""
    if NONE_OF_THESE in classes:
        raise ValueError(f"a class is named {NONE_OF_THESE!r}, which the config uses for the 'unknown' choice; rename the class")
    choices = "".join(f"\n    <Choice value={quoteattr(c)}/>" for c in [*classes, NONE_OF_THESE])
    return (
        f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">{choices}\n  </Choices>\n</View>\n'
    )


def image_url(path: str, document_root: str | Path, prefix: str = LOCAL_FILES) -> str:
    """The URL Label Studio loads a photo from: prefix + the path relative to the document root."""
    p, root = Path(path).resolve(), Path(document_root).resolve()
    if not p.is_relative_to(root):
        raise ValueError(f"{path} is not under the document root {root}; pass --document-root a folder that holds the photos")
    return prefix + quote(str(p.relative_to(root)), safe="/")


def export_tasks(catalogue: str | Path, document_root: str | Path = "/", prefix: str = LOCAL_FILES, everything: bool = False) -> dict:
    """{'tasks': [...], 'config': XML} for the items needing review (or all items with everything=True)."""
    conn = db.connect(catalogue)
    try:
        classes = db.classes(conn)
        run = (conn.execute("SELECT value FROM meta WHERE key='run'").fetchone() or ["fashionclf"])[0]
        where = "" if everything else "WHERE status='needs_review'"
        rows = [db.as_dict(r) for r in conn.execute(f"SELECT {db.ITEM_COLUMNS} FROM items {where} ORDER BY confidence, id")]
    finally:
        conn.close()
    tasks = []
    for r in rows:
        result = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [r["label"]]}}
        tasks.append(
            {
                "data": {
                    "image": image_url(r["path"], document_root, prefix),
                    "fashionclf_id": r["id"],
                    "fashionclf_sha256": r["sha256"],
                    "fashionclf_version": r["version"],
                    "top3": ", ".join(f"{t['label']} {t['confidence']:.2f}" for t in r["top3"]),
                },
                "predictions": [{"model_version": Path(run).name, "score": r["confidence"], "result": [result]}],
            }
        )
    return {"tasks": tasks, "config": labeling_config(classes)}


def _annotation_choice(task: dict) -> tuple[str | None, str]:
    """(choice, annotator) of a task's latest annotation that was not cancelled; (None, '') if it has none."""
    if "annotations" not in task:  # JSON-MIN: the choice under the control's name, the annotator as 'annotator'
        choice = task.get(FROM_NAME)
        choice = choice.get("choices", [None])[0] if isinstance(choice, dict) else choice
        return choice, str(task.get("annotator", ""))
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None, ""
    a = max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))
    chosen = [r["value"]["choices"][0] for r in a.get("result") or [] if r.get("type") == "choices" and r.get("value", {}).get("choices")]
    who = a.get("completed_by")
    who = who.get("email") or who.get("id") if isinstance(who, dict) else who
    return (chosen[-1] if chosen else None), str(who or "")


def import_annotations(catalogue: str | Path, export_file: str | Path) -> dict:
    """Write the annotations of a Label Studio JSON (or JSON-MIN) export into the catalogue as decisions.

    Returns counts: decided, conflicts (the item changed since the export), skipped (no annotation), and
    unmatched (tasks that are not from this catalogue).
    """
    try:
        tasks = json.loads(Path(export_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{export_file}: not a Label Studio JSON export ({e})") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{export_file}: expected a JSON list of tasks (Label Studio's JSON or JSON-MIN export)")
    counts = {"decided": 0, "conflicts": 0, "skipped": 0, "unmatched": 0}
    conn = db.connect(catalogue)
    try:
        classes = db.classes(conn)
        for task in tasks:
            data = task.get("data", task) if isinstance(task, dict) else {}
            current = db.item(conn, int(data.get("fashionclf_id", -1)))
            if current is None or current["sha256"] != data.get("fashionclf_sha256"):
                counts["unmatched"] += 1
                continue
            choice, who = _annotation_choice(task)
            if choice is None:
                counts["skipped"] += 1
                continue
            if choice != NONE_OF_THESE and choice not in classes:
                raise ValueError(f"{export_file}: task {data['fashionclf_id']} chose {choice!r}, not a class ({', '.join(classes)})")
            action = "unknown" if choice == NONE_OF_THESE else ("accept" if choice == current["label"] else "correct")
            try:
                db.decide(conn, current["id"], int(data["fashionclf_version"]), action, f"label-studio:{who}", choice)
                counts["decided"] += 1
            except db.Conflict:
                counts["conflicts"] += 1
    finally:
        conn.close()
    return counts
