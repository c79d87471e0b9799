"""Decoding every listed format and mode, and the photo -> Fashion-MNIST conversion, on generated images."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionclf.data.images import ImageError, decode_cost, find_images, load_rgb
from fashionclf.data.photos import to_fashion_mnist


def _photo(light_background=True, item_gray=60, size=(300, 400), box=(100, 80, 260, 220)):
    """A dark (or light) rectangle-ish garment on a light (or dark) noisy background, off centre."""
    rng = np.random.default_rng(0)
    h, w = size
    bg = 235 if light_background else 25
    img = np.clip(bg + rng.normal(0, 4, (h, w, 3)), 0, 255)
    y0, x0, y1, x1 = box
    img[y0:y1, x0:x1] = np.clip(item_gray + rng.normal(0, 10, (y1 - y0, x1 - x0, 3)), 0, 255)
    img[y0 - 30 : y0, x0 + 40 : x1 - 40] = item_gray  # a collar: not a plain rectangle
    return img.astype(np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(_photo())


@pytest.mark.parametrize(
    "fmt,mode",
    [("JPEG", "RGB"), ("PNG", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB"), ("GIF", "P"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L")]
    + [("JPEG", "CMYK"), ("JPEG", "L"), ("TIFF", "RGB")],
)
def test_formats_and_modes_decode_to_the_same_picture(fmt, mode):
    data = _encode(RGB.convert(mode), fmt)
    rgb = load_rgb(data)
    assert rgb.shape == (300, 400, 3) and rgb.dtype == np.uint8
    gray = rgb.astype(float).mean(2)
    assert abs(gray[150, 180] - 60) < 25 and abs(gray[10, 10] - 235) < 25  # item dark, background light


def test_sixteen_bit_png():
    a16 = (np.asarray(RGB.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    data = _encode(Image.fromarray(a16), "PNG")
    rgb = load_rgb(data)
    assert np.abs(rgb[..., 0].astype(int) - np.asarray(RGB.convert("L"), dtype=int)).max() <= 1


def test_transparency_is_composited_on_white():
    rgba = np.zeros((50, 60, 4), np.uint8)
    rgba[10:40, 20:40] = (30, 30, 30, 255)  # an opaque dark item; the rest fully transparent black
    rgb = load_rgb(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (rgb[0, 0] == 255).all() and (rgb[20, 30] == 30).all()


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("L", (40, 40), 200), Image.new("L", (40, 40), 20)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert abs(int(load_rgb(data)[5, 5, 0]) - 200) <= 2


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (60, 40), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 10, 40))  # a black bar on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rgb = load_rgb(_encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert rgb.shape == (60, 40, 3)  # displayed upright: portrait
    assert rgb[2, 20].mean() < 60 and rgb[-3, 20].mean() > 200  # the bar is now along the top


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        load_rgb(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(b"this is text, named photo.jpg")
    jpeg = _encode(RGB, "JPEG")
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_rgb(jpeg[: len(jpeg) // 3])
    big = _encode(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(ImageError, match="3000x2000 pixels is above the limit of 1,000,000"):
        load_rgb(big, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="no such file"):
        load_rgb(tmp_path / "missing.jpg")


def test_find_images_recurses_and_keeps_missing_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt"):
        (tmp_path / p).write_bytes(b"x")
    found = find_images([tmp_path / "a", tmp_path / "missing.jpg"])
    assert [p.name for p in found] == ["1.jpg", "2.PNG", "missing.jpg"]


@pytest.mark.parametrize("light", [True, False])
@pytest.mark.parametrize("method", ["grabcut", "grabcut-full", "threshold"])
def test_item_ends_centred_light_on_black(light, method):
    photo = _photo(light_background=light, item_gray=60 if light else 200)
    out = to_fashion_mnist(photo, method)
    img = out.image.astype(float)
    assert out.image.shape == (28, 28) and out.image.dtype == np.uint8 and out.light_background == light
    ys, xs = np.nonzero(img > 30)
    assert ys.min() <= 3 and ys.max() >= 24 or xs.min() <= 1 and xs.max() >= 26  # the longer edge spans the square
    cy, cx = (img * np.arange(28)[:, None]).sum() / img.sum(), (img * np.arange(28)[None, :]).sum() / img.sum()
    assert abs(cy - 13.5) < 2.5 and abs(cx - 13.5) < 2.5  # centred although the photo's item was off centre
    assert img[0, 0] == 0 and img[-1, -1] == 0  # background black
    if light:
        assert img[14, 14] > 150  # a dark item on white becomes light on black (negated)


@pytest.mark.parametrize("light", [True, False])
def test_cheap_grabcut_cuts_out_what_the_full_one_does(light):
    """GrabCut on the small copy, mask scaled back: the same item, to within its edges (benchmarks/photo_speed.py
    measures cost and labels on real photos)."""
    from fashionclf.data import photos

    photo = _photo(light_background=light, item_gray=60 if light else 200, size=(600, 800), box=(200, 160, 520, 440))
    fast, full = to_fashion_mnist(photo, "grabcut"), to_fashion_mnist(photo, "grabcut-full")
    assert photos.GRABCUT["grabcut"][0] < photos.GRABCUT["grabcut-full"][0]  # really a smaller copy
    assert fast.mask.shape == full.mask.shape  # scaled back to the working size
    assert (fast.mask & full.mask).sum() / (fast.mask | full.mask).sum() > 0.95

    def box(m):
        ys, xs = np.nonzero(m)
        return np.array([ys.min(), ys.max(), xs.min(), xs.max()])

    assert np.abs(box(fast.mask) - box(full.mask)).max() <= 2  # the crop, to within 2 of 200 px


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match="grabcut, grabcut-full, threshold"):
        to_fashion_mnist(_photo(), "snake")


def test_blank_photo_gives_an_empty_item_not_an_error():
    out = to_fashion_mnist(np.full((100, 80, 3), 240, np.uint8))
    assert out.image.shape == (28, 28) and out.image.max() < 40


def test_a_large_jpeg_decodes_at_a_fraction_when_the_caller_needs_fewer_pixels():
    """at_least: libjpeg's 1/2-1/8 scaling, both sides kept >= the request; the same picture, upright; PNG untouched."""
    big = Image.fromarray(_photo(size=(1200, 1600), box=(400, 320, 1040, 880)))
    data = _encode(big, "JPEG", quality=92)
    full, small = load_rgb(data), load_rgb(data, at_least=200)
    assert full.shape == (1200, 1600, 3) and small.shape == (300, 400, 3)  # 1/4: 1/8 would give 150 < 200
    from PIL import Image as PILImage

    shrunk = np.asarray(PILImage.fromarray(full).resize((400, 300), PILImage.Resampling.BOX)).astype(int)
    assert np.abs(shrunk - small).mean() < 3  # the same picture as an area-downscaled full decode
    a, b = to_fashion_mnist(full, "grabcut").image.astype(int), to_fashion_mnist(small, "grabcut").image.astype(int)
    assert np.abs(a - b).mean() < 6  # what a 28x28 model sees barely moves
    assert load_rgb(data, at_least=2000).shape == full.shape  # never smaller than asked: full size here
    assert load_rgb(_encode(big, "PNG"), at_least=200).shape == full.shape  # not a JPEG: decoded whole
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    turned = load_rgb(_encode(big, "JPEG", exif=exif.tobytes(), quality=92), at_least=200)
    assert turned.shape == (400, 300, 3)
    with pytest.raises(ImageError, match="above the limit"):
        load_rgb(data, max_pixels=1_000_000, at_least=200)  # the limit is on the stored size, not the decoded one
    mpo = _encode(big, "MPO", save_all=True, append_images=[big.resize((160, 120))])  # a phone's multi-picture JPEG
    assert load_rgb(mpo, at_least=200).shape == (300, 400, 3)


def test_only_28x28_runs_get_fractional_decoding():
    from types import SimpleNamespace

    from fashionclf.data.photos import DECODE_SIDE, WORK_SIDE
    from fashionclf.infer.predict import decode_side

    scan = SimpleNamespace(meta={"input": {"kind": "gray", "height": 28}})
    photo = SimpleNamespace(meta={"input": {"kind": "rgb-letterbox", "height": 192}})
    assert decode_side([scan]) == DECODE_SIDE >= 2 * WORK_SIDE and decode_side([scan, SimpleNamespace(meta={})]) == DECODE_SIDE
    assert decode_side([scan, photo]) is None and decode_side([photo]) is None  # letterboxed as in training: full size


def test_an_empty_file_is_one_wording_as_a_path_and_as_bytes(tmp_path):
    """serve (bytes) and the CLI (a path) say the same thing about a 0-byte file."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for source in (empty, str(empty), b""):
        with pytest.raises(ImageError, match=r"the file is empty \(0 bytes\)") as e:
            load_rgb(source)
        assert e.value.kind == "empty"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_pillows_own_picture(orientation):
    """load_rgb turns the decoded image in place (no copy of a large photo); the pixels are Pillow's exif_transpose."""
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(_photo(size=(30, 50), box=(5, 4, 20, 30))), "JPEG", exif=exif.tobytes(), quality=95)
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(load_rgb(data), want)


DECODE_PROBE = r"""
import gc, io, sys
import numpy as np
from PIL import Image
from fashionclf.data.images import decode_cost, load_rgb

fmt, mode, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
a = np.clip(rng.normal(180, 40, (side, side, 4)), 0, 255).astype(np.uint8)
im = {"I;16": lambda: Image.fromarray(a[..., 0].astype(np.uint16) * 257), "P+t": lambda: Image.fromarray(a[..., :3]).convert("P")}
im = im.get(mode, lambda: Image.fromarray(a).convert(mode))()
kw = {"transparency": 0} if mode == "P+t" else {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
def encode(img):
    buf = io.BytesIO(); img.save(buf, format=fmt, **kw); return buf.getvalue()
blob, small = encode(im), encode(im.resize((8, 8)))
del a, im
load_rgb(small)  # the codec loaded
gc.collect()
def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS now
base = status("VmRSS")
out = load_rgb(blob)
print(status("VmHWM") - base, decode_cost(blob))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs to measure a peak")
@pytest.mark.parametrize(
    "fmt,mode",
    [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "LA"), ("PNG", "P+t")]
    + [("PNG", "I;16"), ("WEBP", "RGB"), ("TIFF", "RGB"), ("BMP", "RGB"), ("PNG", "L"), ("PNG", "1"), ("TIFF", "F"), ("GIF", "P")],
)
def test_decode_cost_bounds_what_decoding_really_takes(fmt, mode):
    """The header-only estimate a service budgets with is at least the peak memory load_rgb reaches, measured in a
    fresh process (Linux resets its high-water mark on request), and not wildly above it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DECODE_PROBE, fmt, mode, "1500"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    peak, cost = map(int, done.stdout.split())
    assert peak <= cost, f"{fmt} {mode}: decoding took {peak / 2**20:.1f} MB, estimated {cost / 2**20:.1f} MB"
    assert cost <= 3 * peak + 8 * 2**20, f"{fmt} {mode}: estimate {cost / 2**20:.1f} MB for a peak of {peak / 2**20:.1f} MB"


def test_decode_cost_follows_the_draft_scale():
    big = _encode(Image.new("RGB", (1600, 1200), (200, 180, 160)), "JPEG", quality=90)
    assert decode_cost(big) == 1600 * 1200 * 11
    assert decode_cost(big, at_least=200) == 400 * 300 * 11  # decoded at 1/4 (1/8 would be under 200), as load_rgb does
    assert load_rgb(big, at_least=200).shape == (300, 400, 3)
    with pytest.raises(ImageError, match="empty"):
        decode_cost(b"")
