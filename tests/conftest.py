import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from fashionclf.data.fashion_mnist import DataError, locate


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise a uint8 array in IDX format (magic 0x0000080N, big-endian dims)."""
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_split(folder: Path, prefix: str, n_per_class: int, gz: bool = True, seed: int = 0):
    """Synthetic images whose class is easy to learn: the mean brightness encodes the label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 4 + 2 * c : 6 + 2 * c, 4:24] = 255
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


@pytest.fixture(scope="session")
def real_data_dir():
    """The official files; CI installs Debian's package, so there they must be found."""
    try:
        return locate(None, allow_download=False)
    except DataError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Fashion-MNIST not installed here: {e}")


@pytest.fixture(scope="session")
def real_data(real_data_dir):
    from fashionclf.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(real_data_dir)


def synthetic_bars(n_per_class: int = 40, seed: int = 0):
    """(images, labels) whose class is a bright bar at a class-specific height: learnable in one epoch, shuffled."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.randint(0, 40, (len(y), 28, 28), generator=g, dtype=torch.uint8)
    for c in range(10):
        x[y == c, 4 + 2 * c : 6 + 2 * c, 4:24] = 255
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def assert_error(r, status: int, *words: str) -> str:
    """The service's one error shape: JSON {"error": "<one line>"} and nothing else, with the status asked for,
    naming each of `words`; returns the message."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and "\n" not in body["error"], body
    for w in words:
        assert w in body["error"], (w, body)
    return body["error"]


def study_row(model, seed=0, val=0.93, ips=1000.0, params=1000, corrupted=None, photo=None, acc=None) -> dict:
    """One run's row of a study's results.json, as compare writes it (test accuracy half a point under val
    unless given); corrupted and photo add the robustness columns."""
    r = {
        "model": model,
        "seed": seed,
        "test_accuracy": val - 0.005 if acc is None else acc,
        "val_accuracy": val,
        "test_loss": 0.3,
        "params": params,
        "train_seconds": 10.0,
        "seconds_per_epoch": 1.0,
        "epochs_run": 10,
        "infer_images_per_s": ips,
    }
    if corrupted is not None:
        r["robustness"] = corrupted
    if photo is not None:
        r["photo_accuracy"] = photo
    return r
