"""Image folders larger than memory (issue 17 item 1): decoded into files under the cache and mapped, so the
page cache is the bounded cache. The same bytes as in memory, a run that trains identically, the switch
under `auto`, a damaged or half-written cache entry decoded afresh, and the memory it saves, measured."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from fashionclf.apps.cli import main
from fashionclf.data.fashion_mnist import DataError
from fashionclf.data.folders import load_image_folder
from fashionclf.data.store import SHARE, DiskStore, choose, decoded_bytes


def _folder(root, per_class=20, classes=("pants", "shirt", "skirt"), side=48, seed=0, broken=0):
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (side, side + 8 * k, 3), dtype=np.uint8)
            img[4 : 4 + 8 * (k + 1), 4:20] = 30 * k
            Image.fromarray(img).save(root / c / f"{i}.png")
        for i in range(broken):
            (root / c / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fashionclf" / "decoded"


def _splits(ds):
    return [ds.train_x, ds.train_y, ds.val_x, ds.val_y, ds.test_x, ds.test_y]


@pytest.mark.parametrize("layout", ["classes", "splits"])
def test_disk_gives_the_bytes_memory_gives(tmp_path, cache, layout):
    if layout == "classes":
        root = _folder(tmp_path / "shop", broken=1)
    else:
        root = tmp_path / "shop"
        for split, n in (("train", 16), ("val", 4), ("test", 5)):
            _folder(root / split, per_class=n, seed=len(split), broken=split == "train")
    mem, skipped_mem = load_image_folder(root, image_size=32, cache="memory")
    disk, skipped_disk = load_image_folder(root, image_size=32, cache="disk")
    assert skipped_disk == skipped_mem and len(skipped_mem) == 3  # the broken files, named, in both
    for a, b in zip(_splits(mem), _splits(disk)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert disk.classes == mem.classes and disk.checksums == mem.checksums
    files = sorted(p.name for p in cache.iterdir())
    assert files and all(not f.startswith(".") for f in files)  # no temporary file left behind
    # file-backed: every split's pixels lie in a mapping of a file in the cache, not in a copy
    for t in (disk.train_x, disk.val_x, disk.test_x):
        assert str(cache) in _mapped_file(t), _mapped_file(t)
    assert str(cache) not in _mapped_file(mem.train_x)


def _mapped_file(t: torch.Tensor) -> str:
    """The file whose mapping holds the tensor's first byte ('' or [heap] for anonymous memory), from /proc/self/maps."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= t.data_ptr() < hi:
            return fields[5] if len(fields) > 5 else ""
    return ""


def test_a_second_load_maps_the_files_without_decoding(tmp_path, cache, monkeypatch):
    root = _folder(tmp_path / "shop")
    first, _ = load_image_folder(root, image_size=32, cache="disk")
    import fashionclf.data.folders as folders

    monkeypatch.setattr(folders, "load_rgb", lambda p: (_ for _ in ()).throw(AssertionError(f"decoded {p} again")))
    again, _ = load_image_folder(root, image_size=32, cache="disk")
    for a, b in zip(_splits(first), _splits(again)):
        assert torch.equal(a, b)


def test_a_changed_photo_or_side_is_decoded_afresh(tmp_path, cache):
    root = _folder(tmp_path / "shop")
    first, _ = load_image_folder(root, image_size=32, cache="disk")
    n = len(list(cache.glob("*.npy")))
    other, _ = load_image_folder(root, image_size=24, cache="disk")
    assert other.train_x.shape[-1] == 24 and len(list(cache.glob("*.npy"))) > n
    victim = sorted((root / "pants").glob("*.png"))[0]
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(victim)  # another size on disk, another key
    changed, _ = load_image_folder(root, image_size=32, cache="disk")
    memory, _ = load_image_folder(root, image_size=32, cache="memory")
    for a, b in zip(_splits(changed), _splits(memory)):
        assert torch.equal(a, b)


def test_a_damaged_or_half_written_entry_is_not_trusted(tmp_path, cache):
    root = _folder(tmp_path / "shop")
    first, _ = load_image_folder(root, image_size=32, cache="disk")
    first = [t.clone() for t in _splits(first)]  # damaged in place below: a mapping of a truncated file faults
    for meta in cache.glob("*.json"):  # labels that do not fit the images: the entry is decoded again
        meta.write_text(json.dumps({"labels": [0], "skipped": []}))
    for npy in list(cache.glob("*.npy"))[:1]:
        npy.write_bytes(b"\x93NUMPY truncated")
    again, _ = load_image_folder(root, image_size=32, cache="disk")
    for a, b in zip(first, _splits(again)):
        assert torch.equal(a, b)
    # a killed writer leaves only a dot-file (the .json, written last, marks an entry whole): ignored
    (cache / ".deadbeef-123.npy").write_bytes(b"partial")
    load_image_folder(root, image_size=32, cache="disk")


def test_auto_switches_by_the_decoded_size_against_available_memory():
    side, n = 128, 100_000
    need = decoded_bytes(n, side)
    assert need == 100_000 * 3 * 128 * 128
    assert choose("auto", n, side, available=int(need / SHARE) + 1) == "memory"
    assert choose("auto", n, side, available=int(need / SHARE) - 1) == "disk"
    assert choose("memory", n, side, available=1) == "memory" and choose("disk", 1, 16, available=10**12) == "disk"
    with pytest.raises(DataError, match="--data-cache 'ram'.*auto, memory, disk"):
        choose("ram", n, side)


def test_too_little_disk_is_one_clear_error(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    root = _folder(tmp_path / "shop", per_class=3)
    with pytest.raises(DataError, match=r"need 0\.0 GB in .* 0\.0 GB free; free some space, point XDG_CACHE_HOME"):
        DiskStore(tmp_path / "c").decode([(p, 0) for p in sorted(root.rglob("*.png"))], 64, lambda p: None, "k")


def test_training_from_disk_is_training_from_memory(tmp_path, cache, capsys):
    """The same seed on the same folder: bit-identical weights whether the images are in memory or mapped."""
    root = _folder(tmp_path / "shop", per_class=24)
    runs = {}
    for mode in ("memory", "disk"):
        out = tmp_path / mode
        args = ["train", "--data", str(root), "--image-size", "24", "--model", "mlp", "--epochs", "2", "--batch-size", "16"]
        assert main(args + ["--data-cache", mode, "--out", str(out), "--quiet"]) == 0
        runs[mode] = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert runs["memory"].keys() == runs["disk"].keys()
    assert all(torch.equal(runs["memory"][k], runs["disk"][k]) for k in runs["memory"])
    assert any(cache.glob("*.npy"))


def test_a_mapped_folder_costs_little_anonymous_memory(tmp_path):
    """Measured in a fresh process: anonymous memory (RssAnon, what the kernel cannot drop) grows by the
    decoded size in memory, and by a small fraction of it from disk, reading every image once."""
    root = _folder(tmp_path / "shop", per_class=150, side=96)  # 450 images, 12.4 MB decoded at 96 px
    code = textwrap.dedent(
        """
        import sys
        from fashionclf.data.folders import load_image_folder
        def anon():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) * 1024
        before = anon()
        ds, _ = load_image_folder(sys.argv[1], image_size=96, cache=sys.argv[2])
        total = sum(int(t.float().sum() >= 0) for t in (ds.train_x[i : i + 8] for i in range(0, len(ds.train_x), 8)))
        print(anon() - before)
        """
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    grown = {}
    for mode in ("memory", "disk"):
        out = subprocess.run([sys.executable, "-c", code, str(root), mode], capture_output=True, text=True, env=env, check=True)
        grown[mode] = int(out.stdout.split()[-1])
    need = decoded_bytes(450, 96)
    assert grown["memory"] > 0.9 * need, grown
    assert grown["disk"] < 0.4 * need, grown
