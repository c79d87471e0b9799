import gzip
import hashlib

import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_split, write_idx

from fashionclf.data import fashion_mnist as D
from fashionclf.data.fashion_mnist import DataError, load_split, parse_idx, read_idx, stratified_split


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip_gz_and_raw(tmp_path, gz):
    arr = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    p = write_idx(tmp_path / "x-idx3-ubyte", arr, gz)
    np.testing.assert_array_equal(read_idx(p), arr)


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    raw_named_gz = tmp_path / "labels.gz"
    raw_named_gz.write_bytes(idx_bytes(arr))
    gz_named_raw = tmp_path / "labels"
    gz_named_raw.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)


@pytest.mark.parametrize(
    "blob,match",
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "not an IDX file of unsigned bytes"),
        (b"\x12\x34\x08\x01" + b"\x00" * 4, "not an IDX file"),
        (bytes([0, 0, 8, 3, 0, 0]), "header truncated"),
    ],
)
def test_bad_headers(blob, match):
    with pytest.raises(DataError, match=match):
        parse_idx(blob, "f")


def test_truncated_payload_names_file(tmp_path):
    blob = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(blob)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        read_idx(p)


def test_truncated_gzip_is_clear(tmp_path):
    p = tmp_path / "a.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))[:-20])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(p)


def test_corrupt_gzip_is_clear(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28))))
    blob[20:40] = b"\xff" * 20  # damage the deflate stream, not its length
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: gzip data is corrupt"):
        read_idx(p)


def test_load_split_structure_checks(tmp_path):
    make_split(tmp_path, "t10k", 3)
    x, y, sums = load_split(tmp_path, "test", official=False)
    assert x.shape == (30, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64 and sums == {}


def test_load_split_missing_file(tmp_path):
    make_split(tmp_path, "t10k", 3)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_split(tmp_path, "test", official=False)


def test_count_mismatch(tmp_path):
    make_split(tmp_path, "t10k", 3)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(29, np.uint8), True)
    with pytest.raises(DataError, match="30 images .* but 29 labels"):
        load_split(tmp_path, "test", official=False)


def test_wrong_shape(tmp_path):
    make_split(tmp_path, "t10k", 1)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 32, 32), np.uint8), True)
    with pytest.raises(DataError, match=r"shape \(10, 32, 32\), expected \(N, 28, 28\)"):
        load_split(tmp_path, "test", official=False)


def test_label_out_of_range(tmp_path):
    make_split(tmp_path, "t10k", 1)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10, 11, np.uint8), True)
    with pytest.raises(DataError, match="label 11 found, expected 0-9"):
        load_split(tmp_path, "test", official=False)


def test_official_md5_rejects_synthetic(tmp_path):
    make_split(tmp_path, "t10k", 3)
    with pytest.raises(DataError, match="matches neither the official"):
        load_split(tmp_path, "test", official=True)


def test_mnist_digits_named(tmp_path, monkeypatch):
    make_split(tmp_path, "t10k", 3)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    monkeypatch.setattr(D, "MNIST_MD5", {hashlib.md5(p.read_bytes()).hexdigest()})
    with pytest.raises(DataError, match="MNIST handwritten-digits"):
        D.verify_md5(p, "t10k-images-idx3-ubyte")


def _pretend_official(monkeypatch, folder):
    """Make the MD5 table accept the synthetic files (raw MD5), so later checks can be exercised."""
    table = dict(D.FILES)
    for name in D.FILES:
        p = D.find_file(folder, name)
        if p is not None:
            raw = hashlib.md5(D._open_maybe_gzip(p)).hexdigest()
            table[name] = ("0" * 32, raw, D.FILES[name][2])
    monkeypatch.setattr(D, "FILES", table)


def test_raw_md5_accepted_for_recompressed_file(tmp_path, monkeypatch):
    make_split(tmp_path, "t10k", 1000)
    _pretend_official(monkeypatch, tmp_path)
    x, y, sums = load_split(tmp_path, "test", official=True)
    assert len(x) == 10000 and set(sums) == {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}


def test_official_class_balance_checked(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 10000).astype(np.uint8)  # MNIST-like: unbalanced
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10000, 28, 28), np.uint8), True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, True)
    _pretend_official(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="expected 1000 per class"):
        load_split(tmp_path, "test", official=True)


def test_official_count_checked(tmp_path, monkeypatch):
    make_split(tmp_path, "t10k", 10)
    _pretend_official(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="100 images, expected 10000"):
        load_split(tmp_path, "test", official=True)


def test_locate_search_order(tmp_path, monkeypatch):
    env_dir, cache = tmp_path / "env", tmp_path / "cache"
    make_split(env_dir, "train", 1)
    make_split(env_dir, "t10k", 1)
    monkeypatch.setenv("FASHIONCLF_DATA", str(env_dir))
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "nodebian")
    monkeypatch.setattr(D, "cache_dir", lambda: cache)
    assert D.locate() == env_dir
    explicit = tmp_path / "explicit"
    make_split(explicit, "train", 1)
    make_split(explicit, "t10k", 1)
    assert D.locate(explicit) == explicit
    with pytest.raises(DataError, match="--data-dir .*missing"):
        D.locate(tmp_path / "empty")
    monkeypatch.setenv("FASHIONCLF_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"\$FASHIONCLF_DATA=.*missing"):
        D.locate()
    monkeypatch.delenv("FASHIONCLF_DATA")
    with pytest.raises(DataError, match="not found in"):
        D.locate(allow_download=False)


def test_download_from_local_mirror(tmp_path, monkeypatch):
    """The real download code, pointed at a file:// mirror: verifies MD5s and lands files atomically."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    make_split(mirror, "train", 2)
    make_split(mirror, "t10k", 1)
    table = {n: (hashlib.md5((mirror / f"{n}.gz").read_bytes()).hexdigest(), "0" * 32, c) for n, (_, _, c) in D.FILES.items()}
    monkeypatch.setattr(D, "FILES", table)
    monkeypatch.delenv("FASHIONCLF_DATA", raising=False)
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "nodebian")
    monkeypatch.setattr(D, "cache_dir", lambda: cache)
    assert D.locate(base_url=mirror.as_uri() + "/") == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in D.FILES)


def test_download_rejects_bad_md5_and_keeps_nothing(tmp_path, monkeypatch):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    make_split(mirror, "train", 2)
    make_split(mirror, "t10k", 1)
    with pytest.raises(DataError, match="matches neither"):
        D.download(cache, mirror.as_uri() + "/")
    assert list(cache.iterdir()) == []


def test_download_unreachable_is_clear(tmp_path):
    with pytest.raises(DataError, match="could not download .*dataset-fashion-mnist"):
        D.download(tmp_path, (tmp_path / "nowhere").as_uri() + "/")


def test_stratified_split_fixed_and_balanced():
    y = torch.arange(10).repeat(100)
    tr, va = stratified_split(y, 10, seed=3)
    tr2, va2 = stratified_split(y, 10, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert len(va) == 100 and len(tr) == 900 and set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.bincount(y[va]).tolist() == [10] * 10


@pytest.mark.data
def test_real_data_verified(real_data):
    d = real_data
    assert d.train_x.shape == (54000, 28, 28) and d.val_x.shape == (6000, 28, 28) and d.test_x.shape == (10000, 28, 28)
    assert d.train_x.dtype == torch.uint8
    assert torch.bincount(d.val_y).tolist() == [600] * 10
    assert len(d.checksums) == 4
