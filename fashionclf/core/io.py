"""Atomic writes, JSON, and a lock on a folder: a file under its final name is always complete."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def try_lock(path: str | Path) -> int | None:
    """An exclusive flock on `path` (created if missing), held until the returned descriptor is closed (or the
    process ends, however it ends); None when another process holds it. Where the file was replaced between
    opening and locking it (a finished training renames its folder away), the lock is taken again on the new one."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"{path} keeps being replaced; cannot lock it")


def retry_while_locked(setup, timeout: float):
    """Run setup() again while SQLite answers "database is locked", for up to `timeout` seconds. Switching a
    database to WAL or creating its tables takes an exclusive lock, and where two processes open a new database
    at once SQLite refuses one of them at once instead of calling its busy handler (waiting could deadlock),
    so the connection's own timeout does not cover it."""
    deadline, pause = time.monotonic() + timeout, 0.01
    while True:
        try:
            return setup()
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.5)


def check_new_file(path: Path, option: str = "--out") -> None:
    """Results are never overwritten: refuse an existing file, or a parent that is a file."""
    if path.exists():
        raise ValueError(f"{option} {path} already exists; choose another file (results are never overwritten)")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{option} {path}: {path.parent} is a file, not a folder")


def csv_text(rows: list[dict]) -> str:
    """Rows of one shape (the first row's keys) as CSV text with a header; "" for none."""
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
