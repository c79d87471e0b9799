"""Where an image folder's decoded pixels live: in memory, or in a file on disk for folders larger than memory.

An image folder is decoded once into one uint8 tensor (N, 3, S, S) per split (folders.py). In memory that
is N x 3 x S x S bytes: 49 KB a photo at 128 px, 4.9 GB for 100,000 photos. With `--data-cache disk` (or
`auto`, when the decoded images would take more than 15% of the memory the system reports available:
loading them in memory peaks at about 3.5 times their size, docs/data.md#memory) each split is written
to a .npy file under the cache folder and mapped into memory instead: the tensor the training loop
indexes is backed by the file, so the operating system's page cache is the bounded cache. Pages a batch
touches are read in and may be dropped again when memory is wanted elsewhere; nothing about the
training changes (the same indices give the same bytes, bit for bit; tested in tests/test_store.py,
with the process's anonymous memory measured).

The files are a cache, keyed by the files' names, sizes, modification times and labels, the image side
and the decoding code: a second run on the same folder (another seed, a resumed run) maps them without
decoding a photo. They are written under a temporary name and renamed when complete, so a killed run
leaves no half file that a later run would trust. They live in `$XDG_CACHE_HOME/fashionclf/decoded`
(default ~/.cache): about twice the decoded size (the whole pool, then the splits carved from it);
delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fashionclf.data.fashion_mnist import DataError, cache_dir
from fashionclf.data.images import ImageError

MODES = ("auto", "memory", "disk")
SHARE = 0.15  # auto: to disk above this share of the available memory (loading in memory peaks at ~3.5x: ~half of it)
CHUNK = 1024  # images copied at a time when a split is carved out of a file-backed pool


def available_memory() -> int | None:
    """Bytes the kernel reports available (MemAvailable in /proc/meminfo); None where it says nothing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def decoded_bytes(n: int, size: int) -> int:
    return n * 3 * size * size


def choose(mode: str, n: int, size: int, available: int | None = None) -> str:
    """'memory' or 'disk' for n images of size x size: as asked, or by their decoded size under 'auto'."""
    if mode not in MODES:
        raise DataError(f"--data-cache {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    available = available_memory() if available is None else available
    return "disk" if available is not None and decoded_bytes(n, size) > SHARE * available else "memory"


def file_key(items: list[tuple[Path, int]], size: int, code: list[str | Path]) -> str:
    """A key for the decoded files: names, sizes, modification times and labels, the side, the decoding code."""
    h = hashlib.sha256(f"{size}\n".encode())
    for p, label in items:
        st = p.stat() if p.exists() else None
        h.update(f"{p.absolute()}\t{st.st_size if st else -1}\t{st.st_mtime_ns if st else -1}\t{label}\n".encode())
    for c in code:
        h.update(Path(c).read_bytes())
    return h.hexdigest()[:32]


class DiskStore:
    """Decodes (path, label) items into one file-backed uint8 tensor, and carves splits out of it into files."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir().parent / "decoded"

    def decode(self, items: list, size: int, read: Callable, key: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """read(path) -> (S, S, 3) uint8 array, or ImageError for a file it cannot read (left out and
        reported, as in memory). Returns (N, 3, S, S) uint8 backed by a file, labels, messages."""
        cached = self._open(key)
        if cached is not None:
            return cached
        self._room_for(decoded_bytes(len(items), size))
        ys, skipped = [], []

        def fill(out: np.ndarray) -> int:
            for path, label in items:
                try:
                    out[len(ys)] = read(path).transpose(2, 0, 1)
                    ys.append(label)
                except ImageError as e:
                    skipped.append(f"{path}: {e}")
            if not ys:
                raise DataError("none of the images could be read: " + "; ".join(skipped[:3]))
            return len(ys)

        return self._write(key, (len(items), 3, size, size), fill, ys, skipped)

    def take(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """x[idx], y[idx] as a file of their own, copied CHUNK images at a time (x itself is never loaded whole)."""
        key = hashlib.sha256(key.encode() + idx.numpy().astype("<i8").tobytes()).hexdigest()[:32]
        cached = self._open(key)
        if cached is not None:
            return cached[0], cached[1]
        self._room_for(decoded_bytes(len(idx), x.shape[-1]))

        def fill(out: np.ndarray) -> int:
            for i in range(0, len(idx), CHUNK):
                out[i : i + CHUNK] = x[idx[i : i + CHUNK]].numpy()
            return len(idx)

        xs, ys, _ = self._write(key, (len(idx),) + tuple(x.shape[1:]), fill, y[idx].tolist(), [])
        return xs, ys

    def _room_for(self, need: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if need * 1.05 > free:
            raise DataError(
                f"--data-cache disk: the decoded images need {need / 1e9:.1f} GB in {self.root}, which has {free / 1e9:.1f} GB free; "
                "free some space, point XDG_CACHE_HOME at a larger disk, or use a smaller --image-size"
            )

    def _write(self, key: str, shape: tuple, fill: Callable, ys: list, skipped: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Fill a new .npy of `shape` (fill returns how many rows it wrote), then its labels; each renamed when whole."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}-", suffix=".npy")
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            n = fill(out)
            out.flush()
            del out
            if n < shape[0]:  # unreadable files left out: drop the unused rows from the file
                part = np.lib.format.open_memmap(tmp, mode="r")[:n]
                fd2, tmp2 = tempfile.mkstemp(dir=self.root, prefix=f".{key}-", suffix=".npy")
                os.close(fd2)
                whole = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(n,) + shape[1:])
                for i in range(0, n, CHUNK):
                    whole[i : i + CHUNK] = part[i : i + CHUNK]
                whole.flush()
                del whole, part
                os.replace(tmp2, tmp)
            os.replace(tmp, self.root / f"{key}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"labels": [int(v) for v in ys], "skipped": skipped}, f)
        os.replace(tmp, self.root / f"{key}.json")  # last: its presence says the .npy beside it is whole
        return self._open(key)

    def _open(self, key: str) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
        npy, meta = self.root / f"{key}.npy", self.root / f"{key}.json"
        if not (npy.exists() and meta.exists()):
            return None
        try:
            info = json.loads(meta.read_text())
            x = np.load(npy, mmap_mode="c", allow_pickle=False)  # copy-on-write: the file is never written through
            if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(info["labels"]):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged entry is decoded afresh (and replaced)
        return torch.from_numpy(x), torch.tensor(info["labels"], dtype=torch.long), [str(s) for s in info["skipped"]]
