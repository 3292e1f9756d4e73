"""The one image decoder: every photo boothkit reads (CLI, app uploads, benchmark references, pretraining data)
goes through `decode`, so every entry point applies the same rules and gets the same pixels.

Rules: only JPEG, PNG and WebP are decoded (the formats users' photos come in; no plugin that parses more than
pixels); the pixel count is checked from the header before any pixel is decoded (decompression bombs), then every
byte is decoded (a truncated file fails here, not later); EXIF orientation is applied (phone photos); transparency
is composited on white (InstantBooth's framing expects white); 16-bit and float images are rescaled, not clipped;
palette, CMYK, grayscale and the rest become 8-bit RGB. Anything wrong is an `InputError` naming the file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

#: what a photo may be: Pillow decodes only these formats, whatever the file's name says
FORMATS = ("JPEG", "PNG", "WEBP")
MIN_SIDE = 64  #: smallest accepted side in pixels
MAX_PIXELS = 50_000_000  #: larger images are refused as possible decompression bombs


def _input_error():
    from .inputs import InputError

    return InputError


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

    name: how messages name the photo (default: the path). Raises boothkit.inputs.InputError saying what is wrong.
    """
    InputError = _input_error()
    label = str(name if name is not None else (source if not isinstance(source, (bytes, bytearray)) else "photo"))
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise InputError(f"{label}: cannot be read ({e.strerror or e})") from e
    if not data:
        raise InputError(f"{label}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as probe:
                w, h = probe.size
    except Image.UnidentifiedImageError as e:
        raise InputError(f"{label}: not a {', '.join(FORMATS)} image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{label}: image too large (possible decompression bomb): {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{label}: not a readable image ({e})") from e
    if w * h > max_pixels:
        raise InputError(f"{label}: {w}x{h} = {w * h / 1e6:.0f} MP is over the {max_pixels / 1e6:.0f} MP limit "
                         "(refused as a possible decompression bomb; downscale it first)")
    if min(w, h) < min_side:
        raise InputError(f"{label}: {w}x{h} is too small (the shorter side must be at least {min_side} px)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                im.load()  # decodes every byte: truncated files fail here
                im = ImageOps.exif_transpose(im)
                rgb = to_rgb(im)
                alpha = alpha_of(im) if with_alpha else None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{label}: corrupt or truncated image ({e})") from e
    return (rgb, alpha) if with_alpha else rgb
