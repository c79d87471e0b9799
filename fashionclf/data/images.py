"""Reading image files a shop really has: any common format, mode and size, into an RGB array.

Formats are recognised by content, not by name. EXIF orientation is applied; animated
images give their first frame; transparency is composited onto white (a catalogue background);
16-bit and CMYK images are converted. Images above a pixel limit are refused before decoding.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # ~7000x7000; larger files are refused before decoding (decompression bombs)
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}  # what a folder scan picks up


class ImageError(ValueError):
    """An image that cannot be used, with what was wrong and what to do.

    kind: empty | unsupported | too_large | damaged | missing (a service maps these to HTTP codes).
    """

    def __init__(self, message: str, kind: str = "damaged"):
        super().__init__(message)
        self.kind = kind


def _open(source: str | Path | bytes) -> Image.Image:
    """The image, lazily; an empty file or body is one wording wherever it comes from (a path, an upload)."""
    empty = len(source) == 0 if isinstance(source, bytes | bytearray) else Path(source).is_file() and Path(source).stat().st_size == 0
    if empty:
        raise ImageError("the file is empty (0 bytes)", "empty")
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    except Image.DecompressionBombError as e:  # PIL's own guard, far above MAX_PIXELS
        raise ImageError(f"{e}; downscale the image first", "too_large") from None
    except UnidentifiedImageError:
        raise ImageError("not an image this tool can read (expected JPEG, PNG, WebP, BMP, GIF or TIFF content)", "unsupported") from None
    except FileNotFoundError:
        raise ImageError("no such file", "missing") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image", "missing") from None
    except OSError as e:
        raise ImageError(f"cannot be opened ({e.strerror or e})") from None


def image_size(source: str | Path | bytes) -> tuple[int, int]:
    """(width, height) from the header alone: PIL opens lazily, so no pixel is decoded (pixel budgets check this)."""
    with _open(source) as im:
        return im.size


# What decoding costs at its peak, in bytes per decoded pixel: the decoder's own image (4 bytes a pixel for RGB),
# numpy's copy (3), the bytes it is copied through, and what a mode conversion or alpha compositing adds. Measured
# by tests/test_images.py::test_decode_cost_bounds_what_decoding_really_takes (VmHWM around load_rgb in a fresh
# process; 2026-12-07: RGB JPEG/PNG/TIFF/BMP 9.9-10.0, L 10.8-10.9, 1 10.7, P 9.9, CMYK 13.9, F 15.9, P with
# transparency 19.0, RGBA/LA 22.9, WebP 19.7, I;16 29.9), then rounded up; that test fails if one is passed.
# Anything not listed is charged the most.
DECODE_BYTES_PER_PIXEL = {"RGB": 11, "YCbCr": 11, "L": 12, "1": 12, "P": 12, "CMYK": 16, "F": 18, "transparent-P": 22}
DECODE_BYTES_PER_PIXEL |= {m: 26 for m in ("RGBA", "LA", "PA", "RGBa", "La", "WEBP")}
DECODE_BYTES_WORST = 34  # 16-bit and 32-bit integer images go through float64


def decode_cost(source: str | Path | bytes, at_least: int | None = None) -> int:
    """The most memory, in bytes, load_rgb(source, at_least=at_least) holds while decoding, from the header alone
    (nothing is decoded; a JPEG's draft scale is taken into account). A service budgets concurrent decodes with it."""
    with _open(source) as im:
        if at_least and isinstance(im, JpegImagePlugin.JpegImageFile):
            im.draft(im.mode, (at_least, at_least))  # as load_rgb does: only the size changes, nothing is decoded
        w, h = im.size
        key = "WEBP" if im.format == "WEBP" else "transparent-P" if im.mode == "P" and "transparency" in im.info else im.mode
        return w * h * DECODE_BYTES_PER_PIXEL.get(key, DECODE_BYTES_WORST)


def load_rgb(source: str | Path | bytes, max_pixels: int = MAX_PIXELS, at_least: int | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a file path or bytes; ImageError says why it could not be read.

    at_least: the caller downscales to this many pixels a side anyway, so a JPEG may be decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's DCT scaling, PIL's draft) as long as both sides stay at least this long: a 12-megapixel
    phone photo then decodes 64x fewer pixels. None: full size. The pixel limit applies to the stored size."""
    im = _open(source)
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} pixels is above the limit of {max_pixels:,d}; downscale the image first", "too_large")
    if w == 0 or h == 0:
        raise ImageError("the image has no pixels")
    try:
        im.seek(0)  # first frame of an animation
        if at_least and isinstance(im, JpegImagePlugin.JpegImageFile):  # JPEG, and a phone's MPO (a JPEG subclass)
            im.draft(im.mode, (at_least, at_least))  # both sides stay >= at_least; the same scale whatever the orientation
        ImageOps.exif_transpose(im, in_place=True)  # phone photos: orientation lives in EXIF (in place: no copy)
        return _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"truncated or damaged image data ({e})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if a.max() > 255 or im.mode.startswith("I;16") else 255.0
        g = np.clip(a / scale * 255 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode == "F":
        g = np.clip(np.asarray(im) * (255 if np.asarray(im).max() <= 1 else 1), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGB" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, im).convert("RGB"))
    if im.mode == "RGB":  # convert() would copy the whole decoded image once more (4 bytes a pixel) for nothing
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def find_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted); missing paths are kept to be reported."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        else:
            out.append(item)
    return out
