"""Compose batches of scenes from the glyph atlas with tensor ops, on the CPU or the GPU.

The whole batch is drawn at once: glyphs are gathered from the atlas, styled, placed by one affine
`grid_sample` at 2x resolution (supersampling against aliasing) and alpha-composited over the background,
then average-pooled to 64x64. No Pillow in the loop, so the GPU is never starved by scene generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scenes import BACKGROUNDS, IMAGE, STYLES, Scene

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = torch.tensor([BACKGROUNDS[n] for n in _BG_NAMES], dtype=torch.float32) / 255.0
_STYLE_ID = {s: i for i, s in enumerate(STYLES)}
MAX_OBJECTS = 2
_SS = 2  #: supersampling factor


@dataclass
class SceneBatch:
    """A batch of scenes as tensors (what data-loader workers hand to the renderer)."""

    concept: torch.Tensor  #: long [B, K] atlas rows
    size_px: torch.Tensor  #: float [B, K]
    cx: torch.Tensor  #: float [B, K] pixels
    cy: torch.Tensor  #: float [B, K] pixels
    style: torch.Tensor  #: long [B, K] index into STYLES
    valid: torch.Tensor  #: bool [B, K]
    bg: torch.Tensor  #: float [B, 3] in [0, 1]

    def to(self, device) -> "SceneBatch":
        return SceneBatch(*(getattr(self, f).to(device, non_blocking=True) for f in self.__dataclass_fields__))

    @staticmethod
    def from_scenes(scenes: list[Scene]) -> "SceneBatch":
        b = len(scenes)
        concept = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
        style = torch.zeros(b, MAX_OBJECTS, dtype=torch.long)
        size_px, cx, cy = (torch.zeros(b, MAX_OBJECTS) for _ in range(3))
        valid = torch.zeros(b, MAX_OBJECTS, dtype=torch.bool)
        bg = torch.zeros(b, 3)
        for i, s in enumerate(scenes):
            bg[i] = _BG_RGB[_BG_NAMES.index(s.bg)]
            for k, o in enumerate(s.objects):
                concept[i, k], style[i, k], valid[i, k] = o.concept, _STYLE_ID[o.style], True
                size_px[i, k], cx[i, k], cy[i, k] = o.size_px, o.cx, o.cy
        return SceneBatch(concept, size_px, cx, cy, style, valid, bg)


def style_glyphs(glyphs: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Apply colour styles to RGBA glyphs [B, 4, H, W] (float 0-1); style [B] indexes STYLES.

    grayscale: luma in all channels. outline: only the dark contour strokes that OpenMoji draws, in black.
    upside-down is geometric and handled by the placement transform.
    """
    rgb, alpha = glyphs[:, :3], glyphs[:, 3:]
    luma = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
    gray = luma.expand_as(rgb)
    stroke = (luma < 0.3).float() * alpha
    s = style.view(-1, 1, 1, 1)
    rgb = torch.where(s == _STYLE_ID["grayscale"], gray, rgb)
    rgb = torch.where(s == _STYLE_ID["outline"], torch.zeros_like(rgb), rgb)
    alpha = torch.where(s == _STYLE_ID["outline"], stroke, alpha)
    return torch.cat([rgb, alpha], 1)


class SceneRenderer:
    """Draws SceneBatches. Keep one per device: it holds the atlas there."""

    def __init__(self, atlas: torch.Tensor, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.atlas = atlas.to(self.device)  # uint8 [N, 4, G, G]

    @torch.no_grad()
    def render(self, batch: SceneBatch, return_masks: bool = False):
        """-> images float [B, 3, 64, 64] in [0, 1] (and masks float [B, K, 64, 64] of each object's alpha)."""
        batch = batch.to(self.device)
        b = batch.bg.shape[0]
        hi = IMAGE * _SS
        canvas = batch.bg.view(b, 3, 1, 1).expand(b, 3, hi, hi).clone()
        masks = []
        for k in range(batch.concept.shape[1]):
            glyph = self.atlas[batch.concept[:, k]].float() / 255.0
            glyph = style_glyphs(glyph, batch.style[:, k])
            # glyph premultiplied so bilinear filtering does not bleed dark transparent borders.
            glyph = torch.cat([glyph[:, :3] * glyph[:, 3:], glyph[:, 3:]], 1)
            scale = (batch.size_px[:, k] / IMAGE).clamp(min=1e-3)  # glyph side as a fraction of the scene
            cxn = batch.cx[:, k] / IMAGE * 2 - 1
            cyn = batch.cy[:, k] / IMAGE * 2 - 1
            flip = torch.where(batch.style[:, k] == _STYLE_ID["upside-down"], -1.0, 1.0).to(scale)
            theta = torch.zeros(b, 2, 3, device=self.device)
            theta[:, 0, 0] = 1 / scale
            theta[:, 0, 2] = -cxn / scale
            theta[:, 1, 1] = flip / scale
            theta[:, 1, 2] = -flip * cyn / scale
            grid = F.affine_grid(theta, [b, 4, hi, hi], align_corners=False)
            placed = F.grid_sample(glyph, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            alpha = placed[:, 3:] * batch.valid[:, k].view(b, 1, 1, 1).float()
            canvas = canvas * (1 - alpha) + placed[:, :3] * batch.valid[:, k].view(b, 1, 1, 1).float()
            masks.append(alpha)
        images = F.avg_pool2d(canvas, _SS).clamp(0, 1)
        if not return_masks:
            return images
        return images, F.avg_pool2d(torch.cat(masks, 1), _SS)


def to_pil(images: torch.Tensor):
    """float [B, 3, H, W] in [0, 1] -> list of PIL images."""
    from PIL import Image

    arr = (images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def from_pil(images) -> torch.Tensor:
    """list of PIL images -> float [B, 3, H, W] in [0, 1] (the inverse of to_pil)."""
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def grid(images, cols: int | None = None, pad: int = 2, fill=(255, 255, 255)):
    """Tile PIL images into one sheet."""
    from PIL import Image

    n = len(images)
    cols = cols or min(n, 8)
    rows = (n + cols - 1) // cols
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), fill)
    for i, im in enumerate(images):
        sheet.paste(im.convert("RGB"), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return sheet
