"""Measure a scene's attributes from pixels: background colour, object box, size, position, style.

Nothing here uses a model that is being judged: background and box come from pixel statistics, style from
comparing the image with the target glyph redrawn in each style at the measured place (the scene metadata says
which glyph was asked for). Applied to ground-truth renders these recover the truth (tests check it), so the same
numbers on generated images measure the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .render import _BG_NAMES, _BG_RGB, SceneBatch, SceneRenderer
from .scenes import IMAGE, POSITIONS, SIZES, STYLES, centre_of

_SIZE_NAMES = list(SIZES)
_SIZE_PX = torch.tensor([SIZES[s] for s in _SIZE_NAMES], dtype=torch.float32)


@dataclass
class Measured:
    """What the pixels of one image say."""

    bg: str
    box: tuple[int, int, int, int] | None  #: x0, y0, x1, y1 (exclusive) of everything that is not background
    size: str | None
    position: str | None
    longest: float  #: longer side of the box in pixels
    bg_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  #: the measured background colour, 0-1


def measure_background(images: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """images [B, 3, H, W] in [0, 1] -> (names, rgb [B, 3]): median of a 2-pixel border ring, nearest palette colour."""
    b = images.shape[0]
    ring = torch.cat([images[:, :, :2].reshape(b, 3, -1), images[:, :, -2:].reshape(b, 3, -1),
                      images[:, :, 2:-2, :2].reshape(b, 3, -1), images[:, :, 2:-2, -2:].reshape(b, 3, -1)], 2)
    rgb = ring.median(dim=2).values
    d = torch.cdist(rgb.float(), _BG_RGB.to(rgb.device))
    return [_BG_NAMES[i] for i in d.argmin(1).tolist()], rgb


def foreground(images: torch.Tensor, bg_rgb: torch.Tensor, threshold: float = 0.18) -> torch.Tensor:
    """bool [B, H, W]: pixels that differ from the background colour by more than threshold (max over channels)."""
    return (images - bg_rgb.view(-1, 3, 1, 1)).abs().amax(1) > threshold


def box_of(mask: torch.Tensor, min_count: int = 2) -> tuple[int, int, int, int] | None:
    """Bounding box of a mask [H, W], ignoring rows/columns with fewer than min_count pixels (specks)."""
    rows = (mask.sum(1) >= min_count).nonzero().flatten()
    cols = (mask.sum(0) >= min_count).nonzero().flatten()
    if len(rows) == 0 or len(cols) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def size_of(longest: float) -> str:
    return _SIZE_NAMES[int((_SIZE_PX - longest).abs().argmin())]


def position_of(cx: float, cy: float, size: str) -> str:
    """Nearest named position for a glyph of this size."""
    best, dist = None, float("inf")
    for p in POSITIONS:
        px, py = centre_of(p, SIZES[size])
        d = (px - cx) ** 2 + (py - cy) ** 2
        if d < dist:
            best, dist = p, d
    return best


def measure(images: torch.Tensor) -> list[Measured]:
    """Background, box, size and position of single-object images [B, 3, 64, 64] in [0, 1]."""
    names, rgb = measure_background(images)
    fg = foreground(images, rgb)
    out = []
    for i in range(images.shape[0]):
        box = box_of(fg[i])
        if box is None:
            out.append(Measured(names[i], None, None, None, 0.0, tuple(rgb[i].tolist())))
            continue
        x0, y0, x1, y1 = box
        longest = float(max(x1 - x0, y1 - y0))
        size = size_of(longest)
        out.append(Measured(names[i], box, size, position_of((x0 + x1) / 2, (y0 + y1) / 2, size), longest,
                            tuple(rgb[i].tolist())))
    return out


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def _chroma(x: torch.Tensor) -> torch.Tensor:
    return x.amax(1) - x.amin(1)


def _features(img: torch.Tensor, bg_rgb: torch.Tensor, box) -> torch.Tensor:
    """Identity-free style features of the object in box: [share of box covered, share of it dark, its chroma]."""
    x0, y0, x1, y1 = box
    crop = img[:, :, y0:y1, x0:x1]
    fg = (crop - bg_rgb.view(1, 3, 1, 1)).abs().amax(1) > 0.18
    n = fg.sum().clamp(min=1)
    dark = ((_luma(crop) < 0.45) & fg).sum() / n
    chroma = (_chroma(crop) * fg).sum() / n
    return torch.stack([fg.float().mean(), dark, 2 * chroma])


@torch.no_grad()
def measure_style(images: torch.Tensor, concepts: list[int], found: list[Measured], renderer: SceneRenderer) -> list[str | None]:
    """Which style each image shows. The target glyph is redrawn at the measured box in every style; the colour
    mode (colour, grayscale, outline) is the candidate nearest in identity-free features (coverage of the box,
    share of dark pixels, chroma), then upright vs upside-down is decided by pixel error against the two
    candidates of that mode. A generator that draws the wrong glyph can still get the style right."""
    result: list[str | None] = [None] * len(concepts)
    k = len(STYLES)
    for i, (row, m) in enumerate(zip(concepts, found)):
        if m.box is None:
            continue
        x0, y0, x1, y1 = m.box
        img = images[i:i + 1].cpu().float()
        bg_rgb = torch.tensor([m.bg_rgb])  # measured once, by measure()
        batch = SceneBatch(torch.full((k, 1), row, dtype=torch.long), torch.full((k, 1), m.longest),
                           torch.full((k, 1), (x0 + x1) / 2), torch.full((k, 1), (y0 + y1) / 2),
                           torch.arange(k).view(k, 1), torch.ones(k, 1, dtype=torch.bool), bg_rgb.repeat(k, 1))
        drawn = renderer.render(batch).cpu()
        f = _features(img, bg_rgb, m.box)
        modes = {"color": STYLES.index("color"), "grayscale": STYLES.index("grayscale"),
                 "outline": STYLES.index("outline")}
        dist = {name: float((_features(drawn[j:j + 1], bg_rgb, m.box) - f).abs().sum()) for name, j in modes.items()}
        mode = min(dist, key=dist.get)
        if mode == "outline":
            result[i] = "outline"
            continue
        upright = drawn[modes[mode]]
        flipped = drawn[STYLES.index("upside-down")]
        if mode == "grayscale":
            flipped = _luma(flipped[None]).expand(3, -1, -1)
        ya, yb, xa, xb = max(0, y0 - 2), min(IMAGE, y1 + 2), max(0, x0 - 2), min(IMAGE, x1 + 2)
        e_up = (upright[:, ya:yb, xa:xb] - img[0, :, ya:yb, xa:xb]).pow(2).mean()
        e_fl = (flipped[:, ya:yb, xa:xb] - img[0, :, ya:yb, xa:xb]).pow(2).mean()
        result[i] = "upside-down" if e_fl < e_up else mode
    return result
