"""The corpus of hostile and odd photo files of issue 17 (no tests here; tests/test_hostile_inputs.py runs it).

Each entry is a file a new user might hand boothkit: `refused` ones must give a clear error (the `why` words) at
every entry point and leave nothing behind; `accepted` ones must decode to the same pixels at every entry point,
and `expected(...)` says which pixels, computed here without boothkit's decoder.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

W, H = 96, 72  #: accepted odd photos are landscape, so a missed or doubled EXIF rotation shows in the size


@dataclass(frozen=True)
class Hostile:
    name: str  #: file name (its extension is what the user's file is called, not necessarily what it is)
    data: Callable[[], bytes]
    why: str = ""  #: refused: words the error must contain (the same at every entry point)
    status: int = 400  #: refused: the app's HTTP status
    expected: Callable[[], np.ndarray] | None = None  #: accepted: the RGB pixels every entry point must produce

    @property
    def refused(self) -> bool:
        return self.expected is None


def pattern(w: int = W, h: int = H) -> np.ndarray:
    """An orientation-revealing RGB pattern: red grows to the right, green downwards, a black block top-left."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    a = np.stack([x, y, np.full((h, w), 90.0)], -1).round().astype(np.uint8)
    a[4:20, 4:28] = 0
    return a


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt, **kw)
    return b.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A small valid-looking PNG whose header claims w x h pixels (a decompression bomb's shape): IHDR rewritten,
    its CRC fixed, the pixel data left small."""
    data = bytearray(_save(Image.new("RGB", (64, 64), (200, 30, 30)), "PNG"))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8)
    data = _save(Image.fromarray(noise), "JPEG", quality=95)
    return data[: len(data) // 2]


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(pattern()), Image.fromarray(255 - pattern())]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def bomb_below_pillow() -> bytes:
    """56 MP of real (1-bit) pixels in a few kB: over boothkit's 50 MP, under Pillow's own 89 MP limit."""
    return _save(Image.new("1", (8000, 7000)), "PNG")


def cmyk_jpeg() -> bytes:
    return _save(Image.fromarray(pattern()).convert("CMYK"), "JPEG", quality=100)


def cmyk_expected() -> np.ndarray:
    with Image.open(io.BytesIO(cmyk_jpeg())) as im:  # Pillow's own CMYK -> RGB, no boothkit code
        return np.asarray(im.convert("RGB"))


def exif_rotated() -> bytes:
    """Stored as 72 x 96 (portrait); EXIF orientation 6 says: rotate 90 degrees clockwise to display -> 96 x 72."""
    stored = Image.fromarray(np.rot90(pattern(), k=1))  # counter-clockwise: what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(stored, "PNG", exif=exif)


def sixteen_bit() -> bytes:
    """A 16-bit greyscale PNG ramp over the whole 0-65535 range."""
    ramp = np.linspace(0, 65535, W)[None, :].repeat(H, 0).round().astype(np.uint16)
    return _save(Image.fromarray(ramp), "PNG")


def sixteen_expected() -> np.ndarray:
    ramp = np.linspace(0, 65535, W)[None, :].repeat(H, 0).round()
    grey = (ramp / 65535 * 255).round().astype(np.uint8)
    return np.stack([grey] * 3, -1)


def palette_png() -> bytes:
    """8 colours in a palette, index 0 transparent: its pixels become white."""
    idx = (pattern()[..., 0] // 32).astype(np.uint8)
    im = Image.fromarray(idx, "P")
    pal = [c for i in range(8) for c in (i * 30, 255 - i * 30, 60)]
    im.putpalette(pal + [0] * (768 - len(pal)))
    return _save(im, "PNG", transparency=0)


def palette_expected() -> np.ndarray:
    idx = pattern()[..., 0] // 32
    pal = np.array([(i * 30, 255 - i * 30, 60) for i in range(8)], dtype=np.uint8)
    out = pal[idx]
    out[idx == 0] = 255
    return out


def partly_transparent() -> bytes:
    """A subject (the pattern) on a fully transparent background, and one half-transparent stripe."""
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = pattern()
    rgba[16:56, 24:72, 3] = 255
    rgba[60:66, :, 3] = 128
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def partly_expected() -> np.ndarray:
    rgba = np.zeros((H, W, 4), dtype=np.float64)
    rgba[..., :3] = pattern()
    rgba[16:56, 24:72, 3] = 255
    rgba[60:66, :, 3] = 128
    a = rgba[..., 3:] / 255
    return (rgba[..., :3] * a + 255 * (1 - a)).round().astype(np.uint8)


CORPUS: list[Hostile] = [
    Hostile("truncated.jpg", truncated_jpeg, why="truncated"),
    Hostile("zero-bytes.png", lambda: b"", why="the file is empty (0 bytes)"),
    Hostile("text.png", lambda: b"just some text, named like a photo\n", why="not a JPEG, PNG or WebP image"),
    Hostile("animated.gif", lambda: animated("GIF"), why="a GIF image"),
    Hostile("animated.webp", lambda: animated("WEBP"), why="animated (2 frames)"),
    Hostile("one-pixel.png", lambda: _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), why="1x1 is too small"),
    Hostile("bomb-56mp.png", bomb_below_pillow, why="possible decompression bomb", status=413),
    Hostile("bomb-100mp.png", lambda: png_claiming(10_000, 10_000), why="possible decompression bomb", status=413),
    Hostile("bomb-10gp.png", lambda: png_claiming(100_000, 100_000), why="possible decompression bomb", status=413),
    Hostile("transparent.png", lambda: _save(Image.new("RGBA", (W, H), (255, 0, 0, 0)), "PNG"),
            why="blank: every pixel is transparent"),
    Hostile("one-colour.jpg", lambda: _save(Image.new("RGB", (W, H), (40, 120, 200)), "JPEG"),
            why="blank: a single colour"),
    Hostile("cmyk.jpg", cmyk_jpeg, expected=cmyk_expected),
    Hostile("exif-rotated.png", exif_rotated, expected=pattern),
    Hostile("16-bit.png", sixteen_bit, expected=sixteen_expected),
    Hostile("palette.png", palette_png, expected=palette_expected),
    Hostile("partly-transparent.png", partly_transparent, expected=partly_expected),
]

REFUSED = [h for h in CORPUS if h.refused]
ACCEPTED = [h for h in CORPUS if not h.refused]
