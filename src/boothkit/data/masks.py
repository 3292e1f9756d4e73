"""Subject masks: the InstantBooth condition is the subject cut out of its photo (Shi et al. 2023, §3.1).

Where a mask comes from, best first: a mask file or column (white = subject), the photo's alpha channel (when it
says something: a fully opaque alpha does not), a bounding box (a rectangle), a segmentation model the user names
(`Segmenter`: transformers' CLIPSeg prompted with the class noun, batched, on the training device or on a list of
photos for `generate --instant` / `tune --method instantbooth`), else the whole image (one warning says how many).
The same functions serve the pretraining loader and real photos at inference, whose backgrounds are not flat:
`reference_masks` decides a reference photo's mask (alpha, segmenter, a background that `flat_background` finds
flat, else the whole photo), and `condition.frame_subject` frames the subject as pretraining showed it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..inputs import InputError
from .record import Unusable

#: a photo whose pixels all lie within this many levels (0-255) of their mean, per channel, is blank


def informative_alpha(alpha: Image.Image | None) -> Image.Image | None:
    """The alpha channel as a mask, or None when it says nothing (fully opaque, or fully transparent)."""
    if alpha is None:
        return None
    lo, hi = alpha.getextrema()
    return None if lo == hi else alpha


def parse_bbox(value) -> tuple[float, float, float, float] | None:
    """[x0, y0, x1, y1] in pixels -> a tuple, None for no bbox; raises ValueError when malformed (checked at scan)."""
    if value is None:
        return None
    if isinstance(value, str):
        import json

        value = json.loads(value) if value.strip() else None
        if value is None:
            return None
    box = tuple(float(v) for v in value)
    if len(box) != 4:
        raise ValueError(f"a bbox is [x0, y0, x1, y1], got {len(box)} numbers")
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0) or min(box) < 0:
        raise ValueError(f"bbox {list(box)} is not [x0, y0, x1, y1] with x0 < x1, y0 < y1, all >= 0")
    return box


def bbox_mask(size: tuple[int, int], bbox, name: str = "record") -> Image.Image:
    """A rectangle mask ("L", `size` = (w, h)): 255 inside [x0, x1) x [y0, y1), pixel coordinates, clipped to the
    image. A box wholly outside the image is Unusable."""
    w, h = size
    x0, y0, x1, y1 = parse_bbox(bbox)
    left, top = max(0, int(round(x0))), max(0, int(round(y0)))
    right, bottom = min(w, int(round(x1))), min(h, int(round(y1)))
    if right <= left or bottom <= top:
        raise Unusable(f"{name}: bbox {[x0, y0, x1, y1]} lies outside the {w}x{h} image", "bad_mask")
    m = Image.new("L", (w, h), 0)
    m.paste(255, (left, top, right, bottom))
    return m


def mask_file(source: str | Path | bytes, size: tuple[int, int], name: str) -> Image.Image:
    """A mask image (a path or bytes) -> "L" at `size`, through the one decoder (boothkit.images.decode).

    White = subject. A mask with an informative alpha channel (an RGBA cut-out) is read from its alpha. A mask at
    another resolution of the same aspect ratio is resized; another aspect ratio is Unusable.
    """
    from ..images import decode

    try:
        rgb, alpha = decode(source, name=name, min_side=1, with_alpha=True)
    except InputError as e:
        raise Unusable(f"mask {e}", "bad_mask") from e
    m = informative_alpha(alpha) or rgb.convert("L")
    if m.size != tuple(size):
        (mw, mh), (w, h) = m.size, size
        if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise Unusable(f"{name}: mask is {mw}x{mh}, the image {w}x{h} (another aspect ratio)", "bad_mask")
        m = m.resize((w, h), Image.Resampling.BILINEAR)
    return m


def subject_mask(image: Image.Image, alpha: Image.Image | None, *, mask=None, bbox=None,
                 name: str = "record") -> tuple[Image.Image | None, str | None]:
    """The best mask a record has -> (mask "L" or None, where it came from: file, alpha, bbox or None)."""
    if mask is not None:
        return mask_file(mask, image.size, name), "file"
    alpha = informative_alpha(alpha)
    if alpha is not None:
        return alpha, "alpha"
    if bbox is not None:
        return bbox_mask(image.size, bbox, name), "bbox"
    return None, None


#: flat_background: a pixel is background when its colour is within this sum of channel differences (0-765) of the
#: corner it is connected to (Pillow's flood fill measure)
FLAT_THRESHOLD = 24
#: flat_background: the background is flat when the flood fill from the corners covers at least this share of the
#: image's border. Measured: the world's reference renders (4 of each of the 110 held-out subjects) cover 100% of it;
#: the real photos of tests/data/dreambench (dog, cat, backpack) 1-54%, shared/dreambench's poop emoji photos 0-8%
FLAT_BORDER = 0.7


def flat_background(photo: Image.Image, threshold: int = FLAT_THRESHOLD, border: float = FLAT_BORDER
                    ) -> Image.Image | None:
    """The subject mask of a photo on a flat background, or None when its background is not flat.

    The background is what a flood fill reaches from the corners that have the border's colour (its median; a
    subject in a corner is not a seed), each within `threshold` of its corner's colour; it counts as flat when it
    covers at least `border` of the pixels on the image's edge, which a real photo's background (texture, light, a
    horizon) does not. -> "L", 255 = subject (not reached).
    """
    from PIL import ImageDraw

    rgb = np.asarray(photo.convert("RGB"), dtype=np.int16)  # [H, W, 3]
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # [border pixels, 3]
    bg = np.median(ring, axis=0)
    rgba = photo.convert("RGB").convert("RGBA")  # alpha 255 everywhere; the fill writes alpha 0
    w, h = rgba.size
    for xy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        r, g, b, a = rgba.getpixel(xy)
        if a and np.abs(np.array([r, g, b]) - bg).sum() <= threshold:  # background colour, not reached yet
            ImageDraw.floodfill(rgba, xy, (r, g, b, 0), thresh=threshold)
    mask = rgba.getchannel("A")  # [H, W]: 0 = background
    a = np.asarray(mask)
    edge = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])  # the border ring
    if float((edge == 0).mean()) < border or not a.any():
        return None
    return mask


def reference_masks(photos: list[Image.Image], noun: str, segmenter: "Segmenter | None" = None,
                    where: str = "--images") -> list[Image.Image]:
    """The subject masks of reference photos (generate --instant, tune --method instantbooth / e4t), best first:
    the photo's own alpha channel (kept by boothkit.inputs' loaders as ``photo.info["alpha"]``), the segmenter
    prompted with the class noun, the flat background a flood fill finds (`flat_background`), else the whole photo
    (one warning names how many). -> "L" masks at each photo's size, 255 = subject."""
    out: list[Image.Image | None] = [informative_alpha(p.info.get("alpha")) for p in photos]
    todo = [i for i, m in enumerate(out) if m is None]
    if todo and segmenter is not None:
        for i, m in zip(todo, segmenter.masks([photos[i] for i in todo], noun)):
            out[i] = m
        todo = []
    whole = 0
    for i in todo:
        out[i] = flat_background(photos[i])
        if out[i] is None:
            whole += 1
            out[i] = Image.new("L", photos[i].size, 255)
    if whole:
        warnings.warn(f"{where}: {whole} of {len(photos)} photo(s) have no alpha channel and no flat background; "
                      "the whole photo is the subject there (--segmenter names a model that cuts the subject out)",
                      stacklevel=2)
    return out


def on_white(photo: Image.Image, mask: Image.Image) -> Image.Image:
    """The subject cut out onto white: photo * mask + white * (1 - mask)."""
    white = Image.new("RGB", photo.size, (255, 255, 255))
    return Image.composite(photo.convert("RGB"), white, mask.convert("L"))


class Segmenter:
    """A text-prompted segmentation model (transformers' `CLIPSegForImageSegmentation` + `CLIPSegProcessor`,
    loaded with `from_pretrained(DIR_OR_ID)`), prompted with the class noun, thresholded to a binary mask.

    Batched. In training it fills, on the device, the masks of the rows a batch has none for (`fill`); for
    `generate --instant` / `tune --method instantbooth` it masks a list of photos (`masks`). When it finds nothing
    in an image (no pixel over the threshold) the whole image is the mask there, and one warning says how often.
    """

    def __init__(self, model: str | Path, *, device: str | torch.device = "cpu", threshold: float = 0.5,
                 prompt: str = "{noun}", batch_size: int = 16):
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        if not 0 < threshold < 1:
            raise InputError(f"--segmenter threshold must be in (0, 1) (got {threshold})")
        try:
            self.processor = CLIPSegProcessor.from_pretrained(str(model))
            self.model = CLIPSegForImageSegmentation.from_pretrained(str(model))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"--segmenter {model}: not a CLIPSeg model folder or hub id that loads here ({e})") from e
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        ip = self.processor.image_processor
        self.input_hw = _input_size(ip.size)
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.threshold, self.prompt, self.batch_size = threshold, prompt, batch_size
        self.name = str(model)

    def _inputs(self, pixels01: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> the model's normalised input [B, 3, h, w] (the processor's size, mean, std)."""
        x = F.interpolate(pixels01.float(), size=self.input_hw, mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    @torch.no_grad()
    def probabilities(self, pixels01: torch.Tensor, nouns: list[str]) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1], one class noun per image -> subject probability [B, 1, H, W] in [0, 1]."""
        b, _, h, w = pixels01.shape
        out = []
        for i in range(0, b, self.batch_size):
            chunk = self._inputs(pixels01[i:i + self.batch_size].to(self.device))  # [b', 3, h', w']
            texts = [self.prompt.format(noun=n) for n in nouns[i:i + self.batch_size]]
            tok = self.processor.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            logits = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                                pixel_values=chunk).logits  # [b', h', w'] (CLIPSeg drops the channel axis)
            logits = logits.reshape(chunk.shape[0], 1, *logits.shape[-2:]).float()
            out.append(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).sigmoid())
        return torch.cat(out).to(pixels01.device)

    def binary(self, pixels01: torch.Tensor, nouns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mask [B, 1, H, W] in {0, 1}, found [B] bool); where nothing is found the mask is the whole image."""
        m = (self.probabilities(pixels01, nouns) > self.threshold).float()
        found = m.flatten(1).amax(1) > 0  # [B]
        m[~found] = 1.0
        return m, found

    def _warn_missed(self, missed: int, total: int, nouns: list[str]) -> None:
        if missed:
            warnings.warn(f"--segmenter {self.name}: found no {sorted(set(nouns))[0]!r} in {missed} of {total} "
                          "image(s); the whole image is the subject mask there", stacklevel=3)

    def fill(self, batch: dict, nouns: list[str] | None = None) -> int:
        """Fill, in place, the masks of the batch's rows that have none (`has_mask` False): the loader's batch on
        the training device. nouns: per row (default: the batch's `class_nouns`). -> number of rows segmented."""
        rows = (~batch["has_mask"]).nonzero().flatten().tolist()
        if not rows:
            return 0
        nouns = nouns or batch["class_nouns"]
        pix = (batch["pixels"][rows].float() + 1) / 2  # [-1, 1] -> [0, 1]
        m, found = self.binary(pix, [nouns[r] for r in rows])
        batch["mask"][rows] = m.to(batch["mask"].device, batch["mask"].dtype)
        batch["has_mask"][rows] = found.to(batch["has_mask"].device)
        self._warn_missed(int((~found).sum()), len(rows), [nouns[r] for r in rows])
        return len(rows)

    def masks(self, photos: list[Image.Image], noun: str) -> list[Image.Image]:
        """Subject masks ("L", 255 = subject, each at its photo's size) for a list of photos of one class."""
        x = torch.cat([F.interpolate(_to01(p), size=self.input_hw, mode="bilinear", antialias=True,
                                     align_corners=False) for p in photos])  # [N, 3, h, w]: one batch
        probs = self.probabilities(x, [noun] * len(photos))  # [N, 1, h, w]
        out, missed = [], 0
        for p, pr in zip(photos, probs):
            m = F.interpolate(pr[None], size=(p.height, p.width), mode="bilinear", align_corners=False)[0, 0]
            m = m > self.threshold  # [H, W]
            if not bool(m.any()):
                missed += 1
                m = torch.ones_like(m)
            out.append(Image.fromarray(m.cpu().numpy().astype(np.uint8) * 255, "L"))
        self._warn_missed(missed, len(photos), [noun])
        return out


def _input_size(size) -> tuple[int, int]:
    """An image processor's `size` (an int, a dict, or transformers' SizeDict) -> (height, width)."""
    if isinstance(size, int):
        return size, size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    side = get("shortest_edge")
    return int(get("height") or side), int(get("width") or side)


def _to01(photo: Image.Image) -> torch.Tensor:
    """PIL -> [1, 3, H, W] in [0, 1]."""
    a = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]
