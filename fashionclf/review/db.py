"""The review catalogue: one SQLite file (WAL), one row per photo, every decision kept.

items: path, sha256 (unique: a photo already in the catalogue is not predicted again), the model's
label (its most likely class, also for a photo it calls "none of these"), top-3 (JSON), calibrated
confidence, unknown_score (the run's out-of-distribution score, evaluation/unknown.py; null for runs
without one), predicted_unknown (1: the run called it "none of these"; added to older catalogues on open),
status (auto | needs_review | reviewed | unknown), reviewed_label, reviewer, decided_at, and a version
that every change increments; audit (1: labelled automatically but sent to a person at random, unmarked, so
their verdicts measure the automatic labels: review/audit.py) and queue_key (where such an item waits in the
queue; null: by its confidence). decisions: one row per decision, with what it replaced (undo, history).

Concurrency: a decision names the version it was made on; a write on a stale version changes nothing
and raises Conflict (optimistic concurrency). Reviewers also claim the item they are shown for a
lease (claimed_by, claimed_until), so two reviewers are rarely shown the same photo. Every write is
one transaction committed before the call returns: a killed process loses nothing it was told was
done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from fashionclf.core.io import retry_while_locked

STATUSES = ("auto", "needs_review", "reviewed", "unknown")
ACTIONS = ("accept", "correct", "unknown")
LEASE_S = 120  # how long an item shown to a reviewer stays theirs

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    top3 TEXT NOT NULL,
    confidence REAL NOT NULL,
    unknown_score REAL,
    predicted_unknown INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('auto', 'needs_review', 'reviewed', 'unknown')),
    reviewed_label TEXT,
    reviewer TEXT,
    decided_at TEXT,
    version INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_until REAL,
    audit INTEGER NOT NULL DEFAULT 0,
    queue_key REAL
);
CREATE INDEX IF NOT EXISTS items_queue ON items (status, confidence);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    item_id INTEGER NOT NULL REFERENCES items (id),
    action TEXT NOT NULL,
    label TEXT,
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    prev_status TEXT NOT NULL,
    prev_label TEXT,
    version INTEGER NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS decisions_by_reviewer ON decisions (reviewer, id);
"""
ITEM_COLUMNS = (
    "id, path, sha256, label, top3, confidence, unknown_score, predicted_unknown, status, reviewed_label, reviewer, decided_at, version"
)


class CatalogueError(ValueError):
    """A catalogue that cannot be used as asked (missing, from another run's classes, a bad label)."""


class NoItem(CatalogueError):
    """No item with that id in the catalogue (a 404 on the desk)."""


class Conflict(Exception):
    """The item changed since the caller read it (another reviewer decided it); nothing was written."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def connect(path: str | Path, create: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting up to 10 s for a writer."""
    path = Path(path)
    if not create and not path.is_file():
        raise CatalogueError(f"{path} is not a catalogue; create one with `fashionclf label RUN FOLDER --db {path}`")
    conn = sqlite3.connect(str(path), timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        retry_while_locked(lambda: _prepare(conn, path, create), timeout=10)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise CatalogueError(f"{path}: {e}; is it a catalogue written by `fashionclf label`?") from None
    except CatalogueError:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a committed decision survives a power cut, not just a killed process
    conn.execute("PRAGMA foreign_keys=ON")
    if create:
        conn.executescript(SCHEMA)
    elif conn.execute("SELECT name FROM sqlite_master WHERE name='items'").fetchone() is None:
        raise CatalogueError(f"{path} is an SQLite file but not a fashionclf catalogue (no items table)")
    have = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
    added = (("predicted_unknown", "INTEGER NOT NULL DEFAULT 0"), ("audit", "INTEGER NOT NULL DEFAULT 0"), ("queue_key", "REAL"))
    for column, kind in added:
        if column not in have:  # a catalogue from before it
            try:
                conn.execute(f"ALTER TABLE items ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):  # else another process added it meanwhile
                    raise


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on an exception): the write lock is taken up front."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, tb):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def init(conn: sqlite3.Connection, classes: list[str], run: str, method: str = "grabcut") -> None:
    """Record the classes, the run and its photo conversion on first use; refuse a later run with other classes."""
    with Transaction(conn):
        row = conn.execute("SELECT value FROM meta WHERE key='classes'").fetchone()
        if row is None:
            values = [("classes", json.dumps(classes)), ("run", run), ("method", method), ("created", now())]
            conn.executemany("INSERT INTO meta VALUES (?, ?)", values)
        elif json.loads(row[0]) != list(classes):
            raise CatalogueError(f"the catalogue's classes {json.loads(row[0])} are not the run's {classes}; use another --db")


def set_meta(conn: sqlite3.Connection, values: dict) -> None:
    """Record (or replace) meta values, each as JSON."""
    with Transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])


def meta(conn: sqlite3.Connection) -> dict:
    """classes (a list), run (its folder when labelled), method, created."""
    out = {k: v for k, v in conn.execute("SELECT key, value FROM meta")}
    out["classes"] = json.loads(out.get("classes", "[]"))
    return out


def classes(conn: sqlite3.Connection) -> list[str]:
    row = conn.execute("SELECT value FROM meta WHERE key='classes'").fetchone()
    return json.loads(row[0]) if row else []


def known_hashes(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT sha256 FROM items")}


def add_predictions(conn: sqlite3.Connection, rows: list[dict]) -> int:
    """Insert predicted photos (path, sha256, label, top_k, confidence, needs_review, unknown_score, and audit: queued
    for a person although labelled automatically, at queue_key) in one transaction; returns rows added. A photo the
    run calls unknown (label None) is stored with its most likely class as the label, its score and
    predicted_unknown=1, waiting for review (it is always flagged): the page says the model's verdict, and the
    reviewer decides, "none of these" included."""
    values = [
        (
            str(r["file"]),
            r["sha256"],
            r["label"] if r["label"] is not None else r["top_k"][0]["label"],
            json.dumps([{"label": t["label"], "confidence": t["confidence"]} for t in r["top_k"][:3]]),
            float(r["confidence"]),
            r.get("unknown_score"),
            int(bool(r.get("unknown"))),
            "needs_review" if r["needs_review"] or r.get("unknown") or r.get("audit") else "auto",
            int(bool(r.get("audit"))),
            r.get("queue_key"),
        )
        for r in rows
    ]
    columns = "path, sha256, label, top3, confidence, unknown_score, predicted_unknown, status, audit, queue_key"
    with Transaction(conn):
        before = conn.total_changes
        conn.executemany(f"INSERT OR IGNORE INTO items ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return conn.total_changes - before


def as_dict(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    d = dict(row)
    d["top3"] = json.loads(d["top3"])
    d["predicted_unknown"] = bool(d["predicted_unknown"])
    return d


def item(conn: sqlite3.Connection, item_id: int) -> dict | None:
    return as_dict(conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id=?", (item_id,)).fetchone())


def claim_next(conn: sqlite3.Connection, reviewer: str, skip: tuple[int, ...] = (), lease_s: float = LEASE_S) -> dict | None:
    """The least certain item still needing review that no other reviewer holds, claimed for `reviewer` (audited items
    wait at a random place in that order: their queue_key)."""
    t = time.time()
    marks = ",".join("?" * len(skip))
    not_skipped = f"AND id NOT IN ({marks})" if skip else ""
    conn.execute("PRAGMA synchronous=NORMAL")  # a lease is not worth an fsync: one lost in a power cut is simply re-offered
    try:
        row = _claim(conn, reviewer, not_skipped, skip, t, lease_s)
    finally:
        conn.execute("PRAGMA synchronous=FULL")
    return as_dict(row)


def _claim(conn, reviewer, not_skipped, skip, t, lease_s):
    with Transaction(conn):
        row = conn.execute(
            f"SELECT {ITEM_COLUMNS} FROM items WHERE status='needs_review' {not_skipped} "
            "AND (claimed_until IS NULL OR claimed_until < ? OR claimed_by = ?) "
            "ORDER BY COALESCE(queue_key, confidence), id LIMIT 1",
            (*skip, t, reviewer),
        ).fetchone()
        if row is not None:
            conn.execute("UPDATE items SET claimed_by=?, claimed_until=? WHERE id=?", (reviewer, t + lease_s, row["id"]))
    return row


def decide(conn: sqlite3.Connection, item_id: int, version: int, action: str, reviewer: str, label: str | None = None) -> dict:
    """Record a decision on the item as read at `version`: accept the model's label, correct it to `label`, or
    mark it unknown (none of these). Raises Conflict if the item changed since; returns the item as stored."""
    if action not in ACTIONS:
        raise CatalogueError(f"action {action!r}: expected one of {', '.join(ACTIONS)}")
    if not reviewer:
        raise CatalogueError("a decision needs a reviewer name")
    with Transaction(conn):
        cur = conn.execute("SELECT label, status, reviewed_label FROM items WHERE id=?", (item_id,)).fetchone()
        if cur is None:
            raise NoItem(f"no item {item_id} in the catalogue")
        if action == "accept":
            label = cur["label"]
        elif action == "correct" and label not in classes(conn):
            raise CatalogueError(f"label {label!r} is not a class of this catalogue ({', '.join(classes(conn))})")
        elif action == "unknown":
            label = None
        status = "unknown" if action == "unknown" else "reviewed"
        stamp = now()
        changed = conn.execute(
            "UPDATE items SET status=?, reviewed_label=?, reviewer=?, decided_at=?, version=version+1, claimed_by=NULL, "
            "claimed_until=NULL WHERE id=? AND version=?",
            (status, label, reviewer, stamp, item_id, version),
        ).rowcount
        if changed == 0:
            raise Conflict(f"item {item_id} changed since version {version} (another reviewer decided it)")
        conn.execute(
            "INSERT INTO decisions (item_id, action, label, reviewer, decided_at, prev_status, prev_label, version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (item_id, action, label, reviewer, stamp, cur["status"], cur["reviewed_label"], version + 1),
        )
        return as_dict(conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id=?", (item_id,)).fetchone())


def undo(conn: sqlite3.Connection, reviewer: str) -> dict | None:
    """Take back the reviewer's latest decision that is still in force (the item back as it was); None if there is
    none. Raises Conflict if someone changed the item since."""
    with Transaction(conn):
        d = conn.execute("SELECT * FROM decisions WHERE reviewer=? AND undone=0 ORDER BY id DESC LIMIT 1", (reviewer,)).fetchone()
        if d is None:
            return None
        changed = conn.execute(
            "UPDATE items SET status=?, reviewed_label=?, reviewer=NULL, decided_at=?, version=version+1, claimed_by=?, claimed_until=? "
            "WHERE id=? AND version=?",
            (d["prev_status"], d["prev_label"], now(), reviewer, time.time() + LEASE_S, d["item_id"], d["version"]),
        ).rowcount
        if changed == 0:
            raise Conflict(f"item {d['item_id']} was changed by someone else after your decision; not undone")
        conn.execute("UPDATE decisions SET undone=1 WHERE id=?", (d["id"],))
        return as_dict(conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id=?", (d["item_id"],)).fetchone())


def recent(conn: sqlite3.Connection, limit: int = 20) -> list[dict]:
    """The latest decisions in force, newest first."""
    rows = conn.execute(
        "SELECT d.id, d.item_id, d.action, d.label, d.reviewer, d.decided_at, i.path, i.label AS predicted FROM decisions d "
        "JOIN items i ON i.id = d.item_id WHERE d.undone=0 ORDER BY d.id DESC LIMIT ?",
        (limit,),
    )
    return [dict(r) for r in rows]


def stats(conn: sqlite3.Connection) -> dict:
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({r[0]: r[1] for r in conn.execute("SELECT status, COUNT(*) FROM items GROUP BY status")})
    return counts


def labelled(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(path, label, sha256) of every photo with a label to train on: automatic ones and reviewed ones, not unknown
    or still waiting."""
    rows = conn.execute(
        "SELECT path, CASE status WHEN 'reviewed' THEN reviewed_label ELSE label END, sha256 FROM items "
        "WHERE status IN ('auto', 'reviewed') ORDER BY id"
    )
    return [tuple(r) for r in rows]
