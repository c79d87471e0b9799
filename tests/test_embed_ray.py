"""embed/ray.py: photos embedded by Ray actors on a local Ray cluster give the vectors of one process, into the store."""

import json

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from fashionclf.apps.cli import main  # noqa: E402
from fashionclf.embed.extract import embed_paths  # noqa: E402
from fashionclf.embed.ray import embed_paths_ray  # noqa: E402
from fashionclf.embed.store import EmbeddingStore  # noqa: E402


def _photos(folder, n=10):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        img = np.full((90, 70, 3), rng.integers(180, 256), np.uint8)
        img[10:70, 15:55] = rng.integers(0, 160, 3)
        Image.fromarray(img).save(folder / f"{i}.png")
    Image.fromarray(img).save(folder / "same-as-9.png")  # one photo twice: embedded once
    (folder / "bad.jpg").write_bytes(b"not a photo")
    return folder


@pytest.mark.slow
def test_ray_actors_give_the_vectors_of_one_process_and_resume(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    one = embed_paths([photos], tmp_path / "one", backbones="lite0", image_size=96, precision="fp32")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        half = sorted(photos.glob("[0-4].png"))  # a job that stopped half-way: the store keeps what it added
        first = embed_paths_ray(half, tmp_path / "ray", backbones="lite0", image_size=96, batch_size=2, precision="fp32")
        # the rest by the command line, joining the running instance, with two actors
        argv = ["embed", photos, "--store", tmp_path / "ray", "--ray", "--actors", 2, "--batch-size", 3, "--precision", "fp32", "--json"]
        assert main([str(a) for a in argv]) == 0
        rest = json.loads(capsys.readouterr().out)
        assert ray.is_initialized()  # an instance the caller started is left running
    finally:
        ray.shutdown()
    assert (first["embedded"], first["already"]) == (5, 0)
    assert (rest["files"], rest["unique"], rest["embedded"], rest["already"]) == (12, 11, 5, 5) and rest["precision"] == "fp32"
    assert len(rest["skipped"]) == 1 and "bad.jpg" in rest["skipped"][0] and one["skipped"] == rest["skipped"]
    a, b = EmbeddingStore(tmp_path / "one"), EmbeddingStore(tmp_path / "ray")
    hashes = a.hashes(sorted(photos.glob("*.png")))
    assert b.spec == a.spec and len(b) == len(a) == 10
    va, vb = a.vectors(hashes), b.vectors(hashes)  # stored as float16
    # the same vectors to float16 rounding: fp32 kernels round differently with the batch's size (16 there, 2-3 here)
    np.testing.assert_allclose(vb, va, rtol=2e-3, atol=1e-4 * np.abs(va).max())
    assert (va == vb).mean() > 0.99


def test_a_store_of_other_backbones_is_refused_before_ray_starts(tmp_path):
    photos = _photos(tmp_path / "photos", n=1)
    embed_paths([photos], tmp_path / "s", backbones="lite0", image_size=96, precision="fp32")
    with pytest.raises(ValueError, match="holds lite0 at 96 px"):
        embed_paths_ray([photos], tmp_path / "s", backbones="lite1")
