"""The one image decoder: every photo boothkit reads (CLI, app uploads, benchmark references, pretraining data)
goes through `decode`, so every entry point applies the same rules and gets the same pixels.

Rules: only JPEG, PNG and WebP are decoded (the formats users' photos come in; no plugin that parses more than
pixels); the pixel count is checked from the header before any pixel is decoded (decompression bombs: boothkit's
own limit is the only one, so Pillow's warning never precedes boothkit's message), then every byte is decoded (a
truncated file fails here, not later); an animated PNG or WebP is refused (a photo is one frame); EXIF orientation
is applied (phone photos); transparency is composited on white (InstantBooth's framing expects white); 16-bit and
float images are rescaled, not clipped; palette, CMYK, grayscale and the rest become 8-bit RGB. Anything wrong is
an `InputError` naming the file, with `.reason` set to one of `REASONS` (the app maps "too_large" to HTTP 413).

`blank_reason` says whether a decoded photo shows nothing (fully transparent, or one colour): the subject-photo
loaders skip such photos with a warning and refuse a set of only blank ones; the pretraining data layer skips them.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

#: what a photo may be: Pillow decodes only these formats, whatever the file's name says
FORMATS = ("JPEG", "PNG", "WEBP")
MIN_SIDE = 64  #: smallest accepted side in pixels
MAX_PIXELS = 50_000_000  #: larger images are refused as possible decompression bombs
#: `InputError.reason` of decode's errors (and "blank", set by the subject-photo loaders)
REASONS = ("unreadable", "empty", "format", "too_large", "too_small", "animated", "corrupt", "blank")
#: a photo whose every channel spans at most this many levels (0.1-99.9 percentiles) is blank: one colour
BLANK_SPREAD = 10

#: well-known file signatures, to say what a refused file is instead of only what it is not
_SIGNATURES = ((b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"), (b"BM", "a BMP image"),
               (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
               (b"\x00\x00\x01\x00", "an ICO icon"), (b"8BPS", "a Photoshop file"), (b"PK\x03\x04", "a zip archive"))


def _input_error(label: str, reason: str, text: str):
    from .inputs import InputError

    e = InputError(f"{label}: {text}")
    e.reason = reason
    return e


def _what_it_is(data: bytes) -> str:
    """' (it is a GIF image)' and the like for a file that is none of FORMATS; '' when unknown."""
    for sig, kind in _SIGNATURES:
        if data.startswith(sig):
            return f" (it is {kind}: save it as JPEG or PNG)"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftyphevc"):
        return " (it is a HEIC/AVIF image: save it as JPEG or PNG)"
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if text.lstrip().startswith("<svg") or "<svg" in text[:200]:
        return " (it is an SVG drawing: render it to PNG)"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return " (it is text)"
    return ""


def _megapixels(n: int) -> str:
    v = n / 1e6
    return f"{v:.3g} MP" if v < 1000 else f"{v:,.0f} MP"


def _open(fp):
    """Pillow's image object for the stream `fp`, from the FORMATS plugins only, header read, no pixel decoded.
    Built from the plugins' own factories (as Image.open does) but without Image.open's decompression-bomb check:
    decode applies its own limit, with its own message, and Pillow's warning must not print first."""
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(prefix) is True:
            fp.seek(0)
            return factory(fp, "")
    raise Image.UnidentifiedImageError("no JPEG, PNG or WebP signature")


def _is_animated(im) -> int:
    """Frame count of an animated PNG or WebP (0 for a still). A JPEG's extra frames (MPO: previews, depth maps
    some cameras embed) are not an animation: its first frame is the photo."""
    if im.format not in ("PNG", "WEBP"):
        return 0
    n = int(getattr(im, "n_frames", 1) or 1)
    return n if n > 1 else 0


def to_rgb(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited on `background`; 16-bit and float are rescaled."""
    import numpy as np

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray((a / top * 255).clip(0, 255).round().astype("uint8"), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        im = Image.fromarray((a / top * 255).clip(0, 255).round().astype("uint8"), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def alpha_of(im: Image.Image) -> Image.Image | None:
    """The transparency of a decoded image as an 8-bit mask ("L"), or None when it has none."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return im.getchannel("A")
    return None


def decode(source: str | Path | bytes, name: str | None = None, *, min_side: int = MIN_SIDE,
           max_pixels: int = MAX_PIXELS, with_alpha: bool = False):
    """A photo (a file path, or its bytes) -> RGB PIL image; with_alpha: -> (RGB image, alpha mask "L" or None).

    name: how messages name the photo (default: the path). Raises boothkit.inputs.InputError saying what is wrong
    (its `.reason` is one of REASONS).
    """
    label = str(name if name is not None else (source if not isinstance(source, (bytes, bytearray)) else "photo"))
    try:
        # a file is read as it is decoded: a big file that is no photo (a video beside the photos) costs a header
        fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except OSError as e:
        raise _input_error(label, "unreadable", f"cannot be read ({e.strerror or e})") from e
    with fp:
        return _decode(fp, label, min_side, max_pixels, with_alpha)


def _decode(fp, label: str, min_side: int, max_pixels: int, with_alpha: bool):
    if not fp.read(1):
        raise _input_error(label, "empty", "the file is empty (0 bytes)")
    try:
        probe = _open(fp)
        w, h = probe.size
        frames = _is_animated(probe)
    except Image.UnidentifiedImageError as e:
        fp.seek(0)
        raise _input_error(label, "format", "not a JPEG, PNG or WebP image" + _what_it_is(fp.read(512))) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise _input_error(label, "corrupt", f"not a readable image ({e})") from e
    if w * h > max_pixels:
        raise _input_error(label, "too_large", f"{w}x{h} pixels ({_megapixels(w * h)}) is over the "
                           f"{_megapixels(max_pixels)} limit: downscale it (larger images are refused as possible "
                           "decompression bombs)")
    if min(w, h) < min_side:
        raise _input_error(label, "too_small", f"{w}x{h} is too small (the shorter side must be at least "
                           f"{min_side} px)")
    if frames:
        raise _input_error(label, "animated", f"animated ({frames} frames); boothkit reads still photos: save "
                           "one frame as PNG or JPEG")
    try:
        im = _open(fp)
        im.load()  # decodes every byte: truncated files fail here
        im = ImageOps.exif_transpose(im)
        rgb = to_rgb(im)
        alpha = alpha_of(im) if with_alpha else None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise _input_error(label, "corrupt", f"corrupt or truncated image ({e})") from e
    return (rgb, alpha) if with_alpha else rgb


def blank_reason(im: Image.Image, alpha: Image.Image | None = None) -> str | None:
    """Why a decoded photo shows nothing, or None when it shows something.

    -> "blank: every pixel is transparent" when `alpha` (decode(..., with_alpha=True)) is 0 everywhere; "blank: a
    single colour (R, G, B)" when every channel spans at most BLANK_SPREAD levels between its 0.1th and 99.9th
    percentiles (a flat image, JPEG noise included; a subject covering under ~0.1% of the pixels is not seen).
    Measured on a box-reduced copy of at most 256 px a side, so a 50 MP photo costs milliseconds.
    """
    import numpy as np

    if alpha is not None and alpha.getextrema()[1] == 0:
        return "blank: every pixel is transparent"
    small = im.convert("RGB")
    factor = max(1, max(small.size) // 256)
    if factor > 1:
        small = small.reduce(factor)
    a = np.asarray(small).reshape(-1, 3)
    lo, hi = np.percentile(a, [0.1, 99.9], axis=0)
    if float((hi - lo).max()) <= BLANK_SPREAD:
        r, g, b = (int(v) for v in np.median(a, axis=0))
        return f"blank: a single colour ({r}, {g}, {b})"
    return None
