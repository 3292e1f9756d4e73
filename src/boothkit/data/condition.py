"""The condition image InstantBooth's encoder sees: the subject cut out on white, re-centred, augmented.

Shi et al. 2023 (§3.1) train without paired photos: the condition is the target's own subject, masked out of its
background and heavily augmented, while the target stays the full unmasked image, so the model learns to place the
subject in a new context instead of copying it. `subject_condition` does that on the training device in whole
batches, from pixels and a mask, so the world's renders and real photos share one path. The subject is re-centred
from its mask's bounding box (the model cannot copy its position), drawn at a random scale, shifted, flipped and
colour-jittered; outside the subject everything is white. `frame_subject` is its deterministic twin for inference
photos (no shift, flip or jitter; the subject at `cover` of the side, as the pretraining's average scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ..inputs import InputError
from ..training.config import DictConfig


@dataclass
class ConditionConfig(DictConfig):
    """The condition augmentation (defaults: what InstantBooth's world pretraining used)."""

    scale: tuple[float, float] = (0.55, 0.95)  #: subject's longer side / the condition's side, drawn uniformly
    shift: float = 0.12  #: max shift of the subject's centre, as a fraction of the side
    flip: float = 0.5  #: probability of a left-right flip
    jitter: float = 0.15  #: colour jitter strength (brightness, contrast, per-channel gain)
    threshold: float = 0.5  #: mask value above which a pixel counts for the subject's bounding box

    def __post_init__(self):
        self.scale = tuple(self.scale)
        lo, hi = self.scale
        checks = [(0 < lo <= hi <= 1.5, f"scale must satisfy 0 < lo <= hi <= 1.5 (got {self.scale})"),
                  (0 <= self.shift <= 0.5, "shift must be in [0, 0.5]"),
                  (0 <= self.flip <= 1, "flip must be in [0, 1]"),
                  (0 <= self.jitter <= 1, "jitter must be in [0, 1]"),
                  (0 <= self.threshold < 1, "threshold must be in [0, 1)")]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"condition config: {msg}")


def mask_boxes(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """mask [B, 1, H, W] -> boxes [B, 4] float (x0, y0, x1, y1) in pixels, x1/y1 exclusive; an empty mask's box is
    the whole image."""
    b, _, h, w = mask.shape
    on = mask[:, 0] > threshold  # [B, H, W]
    rows, cols = on.any(2), on.any(1)  # [B, H], [B, W]
    y0 = rows.float().argmax(1)
    y1 = h - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - cols.flip(1).float().argmax(1)
    box = torch.stack([x0, y0, x1, y1], 1).float()  # [B, 4]
    empty = ~rows.any(1)
    box[empty] = torch.tensor([0.0, 0.0, float(w), float(h)], device=mask.device)
    return box


def subject_condition(images: torch.Tensor, mask: torch.Tensor, g: torch.Generator, cfg: ConditionConfig | None = None,
                      size: int | None = None) -> torch.Tensor:
    """Cut the subject out onto white, re-centre it at a random scale/shift, flip, jitter its colours.

    images [B, 3, S, S] in [0, 1], mask [B, 1, S, S] in [0, 1] (1 = subject), g: a CPU generator (the draws are the
    same on any device) -> [B, 3, size, size] in [0, 1] (size defaults to S).
    """
    cfg = cfg or ConditionConfig()
    dev = images.device
    b, _, s, _ = images.shape
    size = size or s
    mask = mask.to(images.dtype)
    on_white = images * mask + (1 - mask)  # [B, 3, S, S]: the subject over white
    box = mask_boxes(mask, cfg.threshold).to(dev)  # [B, 4]
    side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])  # subject's longer side, pixels
    cx = (box[:, 0] + box[:, 2]) / s - 1  # centre in normalised [-1, 1] coordinates
    cy = (box[:, 1] + box[:, 3]) / s - 1
    u = lambda *shape: torch.rand(*shape, generator=g).to(dev)  # noqa: E731
    lo, hi = cfg.scale
    frac = lo + (hi - lo) * u(b)  # subject's side in the condition, as a fraction of its side
    scale = (side / s) / frac  # source extent per output extent
    flip = torch.where(u(b) < cfg.flip, -1.0, 1.0)
    shift = (u(b, 2) * 2 - 1) * cfg.shift * 2  # normalised coordinates
    theta = torch.zeros(b, 2, 3, device=dev)  # output -> source coordinates
    theta[:, 0, 0] = scale * flip
    theta[:, 0, 2] = cx - scale * shift[:, 0]
    theta[:, 1, 1] = scale
    theta[:, 1, 2] = cy - scale * shift[:, 1]
    grid = F.affine_grid(theta, [b, 4, size, size], align_corners=False)  # [B, size, size, 2]
    warped = F.grid_sample(torch.cat([on_white - 1, mask], 1), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)  # outside the photo: white, mask 0
    rgb, a = warped[:, :3] + 1, warped[:, 3:]  # [B, 3, size, size], [B, 1, size, size]
    j = cfg.jitter
    gain = 1 + j * (u(b, 3) * 2 - 1)  # per-channel colour gain
    contrast = 1 + j * (u(b, 1) * 2 - 1)
    bright = j * 0.5 * (u(b, 1) * 2 - 1)
    rgb = ((rgb - 0.5) * contrast.view(b, 1, 1, 1) + 0.5) * gain.view(b, 3, 1, 1) + bright.view(b, 1, 1, 1)
    return (rgb.clamp(0, 1) * a + (1 - a)).clamp(0, 1)  # jitter the subject only; the background stays white


def frame_subject(photo: Image.Image, mask: Image.Image, cover: float = 0.75, size: int | None = None,
                  threshold: float = 0.5) -> Image.Image:
    """A reference photo as the encoder saw conditions in pretraining: the subject cut out on white, in a square
    around its mask's bounding box, its longer side `cover` of the square's side, centred. -> RGB (size x size, or
    the square's own side). An empty mask frames the whole photo."""
    from .masks import on_white

    cut = on_white(photo, mask)
    box = mask.convert("L").point(lambda v: 255 if v > threshold * 255 else 0).getbbox() or (0, 0, *photo.size)
    x0, y0, x1, y1 = box
    side = max(1, int(round(max(x1 - x0, y1 - y0) / cover)))
    left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
    out = Image.new("RGB", (side, side), (255, 255, 255))
    out.paste(cut.crop((max(left, 0), max(top, 0), min(left + side, photo.width), min(top + side, photo.height))),
              (max(-left, 0), max(-top, 0)))
    return out.resize((size, size), Image.Resampling.BICUBIC) if size else out
