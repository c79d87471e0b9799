"""An embedding store: one vector per photo and view, kept by the photo's content hash.

A store is a folder:
- `store.json`: what made the vectors (the model and its backbones, the input side, the views, the precision);
  a store only ever holds vectors of one such recipe, and opening it with another is refused.
- `index.sqlite`: which shard row holds each content hash, and a cache from (path, size, mtime) to hash so that
  files already seen are not read again. SQLite is the one writer-safe part: it serialises the commits of two
  writers, and a row is only added after its shard is in place.
- `shards/<random>.npy`: float16 arrays (n, views, dim), each written into a temporary file and renamed.

So a killed `embed` leaves at worst an unreferenced shard (its rows were never committed) and is resumed by
running it again; two writers at once may both compute a photo, and the first commit wins (INSERT OR IGNORE);
a renamed or moved photo has the same hash and costs nothing. Loading uses numpy without pickle: nothing in a
store can execute code. Why SQLite and .npy rather than a vector database: docs/embed.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from pathlib import Path

import numpy as np

from fashionclf.core.io import atomic_write_bytes, atomic_write_text, retry_while_locked, to_json

FORMAT = 1
SPEC, INDEX, SHARDS = "store.json", "index.sqlite", "shards"


class StoreError(ValueError):
    """A store folder is missing, damaged, or was made with another recipe."""


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class EmbeddingStore:
    def __init__(self, root: str | Path, spec: dict | None = None):
        """Open the store at root; with spec, create it where missing (and refuse one made with another spec)."""
        self.root = Path(root)
        found = self.root / SPEC
        if found.exists():
            try:
                self.spec = json.loads(found.read_text())
            except (OSError, ValueError) as e:
                raise StoreError(f"{found} is damaged ({e}); move the store aside and embed again") from None
            if self.spec.get("format") != FORMAT:
                raise StoreError(
                    f"{found} has format {self.spec.get('format')!r}, this fashionclf reads {FORMAT}; embed into a new --store"
                )
            if spec is not None and {k: self.spec.get(k) for k in spec} != spec:
                diff = sorted(k for k in spec if self.spec.get(k) != spec[k])
                raise StoreError(f"{self.root} was embedded with other settings ({', '.join(diff)} differ); use another --store")
        elif spec is None:
            raise StoreError(
                f"{self.root} is not an embedding store (no {SPEC}); make one with `fashionclf embed PATH --store {self.root}`"
            )
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise StoreError(f"{self.root} exists and is not an embedding store; choose an empty or new --store folder")
            (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
            self.spec = {"format": FORMAT, **spec}
            atomic_write_text(found, to_json(self.spec))
        self.db = sqlite3.connect(self.root / INDEX, timeout=60, isolation_level=None)
        retry_while_locked(self._create_tables, timeout=60)

    def _create_tables(self) -> None:
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, shard TEXT NOT NULL, row INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, hash TEXT)")

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def hashes(self, paths: list[Path]) -> list[str]:
        """Content hashes of files; unchanged files (same size and mtime) are not read again. The index is asked in
        chunks of 500 paths, not once per file (a catalogue of 100,000 photos)."""
        stats = [(str(p.resolve()), p.stat()) for p in paths]
        known: dict[str, tuple[int, int, str]] = {}
        keys = list(dict.fromkeys(k for k, _ in stats))
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT path, size, mtime_ns, hash FROM files WHERE path IN ({','.join('?' * len(chunk))})"
            known |= {path: (size, mtime, h) for path, size, mtime, h in self.db.execute(q, chunk)}
        out, rows = [], []
        for p, (key, st) in zip(paths, stats):
            size, mtime, h = known.get(key, (None, None, None))
            if (size, mtime) != (st.st_size, st.st_mtime_ns):
                h = file_hash(p)
                known[key] = (st.st_size, st.st_mtime_ns, h)
                rows.append((key, st.st_size, st.st_mtime_ns, h))
            out.append(h)
        if rows:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)
        return out

    def missing(self, hashes: list[str]) -> list[str]:
        """The hashes (first occurrence, in order) that hold no vector yet."""
        have = self._rows(set(hashes))
        return list(dict.fromkeys(h for h in hashes if h not in have))

    def add(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Store (n, views, dim) vectors: the shard first, then its rows in one transaction (first writer wins)."""
        v = np.ascontiguousarray(vectors, dtype=np.float16)
        if v.ndim != 3 or len(v) != len(hashes) or v.shape[2] != self.spec["dim"]:
            raise StoreError(f"vectors of shape {v.shape} for {len(hashes)} photos; expected (n, views, {self.spec['dim']})")
        name = f"{uuid.uuid4().hex}.npy"
        buf = _npy_bytes(v)
        atomic_write_bytes(self.root / SHARDS / name, buf)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?)", [(h, name, i) for i, h in enumerate(hashes)])
        self.db.execute("COMMIT")

    def _rows(self, hashes: set[str]) -> dict[str, tuple[str, int]]:
        out, items = {}, list(hashes)
        for i in range(0, len(items), 500):
            chunk = items[i : i + 500]
            q = f"SELECT hash, shard, row FROM vectors WHERE hash IN ({','.join('?' * len(chunk))})"
            out |= {h: (s, r) for h, s, r in self.db.execute(q, chunk)}
        return out

    def vectors(self, hashes: list[str]) -> np.ndarray:
        """(n, views, dim) float32 vectors in the order asked; a StoreError names a hash that is missing."""
        rows = self._rows(set(hashes))
        lost = [h for h in hashes if h not in rows]
        if lost:
            raise StoreError(
                f"{len(lost)} photos have no vector in {self.root} (e.g. {lost[0][:12]}); run `fashionclf embed` on them first"
            )
        out = np.empty((len(hashes), len(self.spec["views"]), self.spec["dim"]), np.float32)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, h in enumerate(hashes):
            s, r = rows[h]
            by_shard.setdefault(s, []).append((i, r))
        for s, pairs in by_shard.items():
            try:
                arr = np.load(self.root / SHARDS / s, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise StoreError(f"{self.root / SHARDS / s} is damaged ({e}); move the store aside and embed again") from None
            idx = np.array(pairs)
            out[idx[:, 0]] = arr[idx[:, 1]]
        return out


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def read_spec(root: str | Path) -> dict | None:
    """store.json of the store at root, or None where there is none yet."""
    try:
        return json.loads((Path(root) / SPEC).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StoreError(f"{Path(root) / SPEC} is damaged ({e}); move the store aside and embed again") from None


def store_size(root: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file()) if os.path.isdir(root) else 0
