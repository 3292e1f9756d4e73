"""Training batches as a pure function of (seed, step, micro-step, process): resumed runs see the same data.

No DataLoader and no global RNG: every random choice (which photo, flip, resize, noise, timestep) comes from a
CPU generator seeded by `step_generator`, so killing a run after step k and resuming it replays steps k+1.. exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..inputs import center_square

#: Custom Diffusion's size words (Kumari et al. 2023, §3.2 / their training script's augmentation)
SMALL_WORDS = ("far away", "very small")
LARGE_WORDS = ("zoomed in", "close up")


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on its arguments."""
    state = np.random.SeedSequence([seed, step, micro, rank, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> [B, 3, H, W] float in [-1, 1]."""
    a = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # [B, H, W, 3]
    return torch.from_numpy(a).permute(0, 3, 1, 2) / 127.5 - 1.0


@dataclass
class Draw:
    """Images drawn from an ImageSet, with what the loss needs besides their pixels."""

    source: "ImageSet"
    index: list[int]  #: which images of the set
    flipped: list[bool]  #: whether each was flipped left-right
    pixels: torch.Tensor  #: [n, 3, S, S] in [-1, 1]
    prompts: list[str]  #: each image's caption, or the set's prompt
    micro: torch.Tensor  #: [n, 6] SDXL's micro-conditioning: original (h, w), crop (top, left), target (h, w)
    #: the pixels are a fixed function of (image, flip): a centre crop, not a random window or a resize
    cacheable: bool = True

    def resized(self) -> "Draw":
        """The same draw after a resize augmentation (Custom Diffusion's): no longer a fixed image."""
        return Draw(self.source, self.index, self.flipped, self.pixels, self.prompts, self.micro, cacheable=False)


@dataclass
class ImageSet:
    """Square training images of one concept (subject photos, or class/regularisation images) and their prompt
    (one for all, as DreamBooth trains), or one caption per image (`captions`, kohya's caption files)."""

    pixels: torch.Tensor  #: [N, 3, S, S] in [-1, 1]: each image's centre square
    prompt: str  #: e.g. "a photo of sks dog"
    captions: list[str] | None = None  #: per image, used instead of `prompt` when given
    #: crop="random": each image with its short side resized to S ([3, S, L] or [3, L, S]); draws take a random
    #: S x S window of it instead of the centre square
    originals: list[torch.Tensor] | None = None
    sizes: list[tuple[int, int]] | None = None  #: each image's original (height, width) (default: S x S)

    @classmethod
    def from_images(cls, images: list[Image.Image], size: int, prompt: str,
                    captions: list[str] | None = None, crop: str = "center") -> "ImageSet":
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be center or random (got {crop!r})")
        originals = None
        if crop == "random" and any(im.width != im.height for im in images):
            originals = [to_tensor([short_side(im, size)])[0] for im in images]
        return cls(to_tensor([center_square(im, size) for im in images]), prompt, captions, originals,
                   [(im.height, im.width) for im in images])

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def map_prompts(self, fn) -> None:
        """Rewrite the prompt and every caption (e.g. multi-vector Textual Inversion's token expansion)."""
        self.prompt = fn(self.prompt)
        if self.captions is not None:
            self.captions = [fn(c) for c in self.captions]

    def sample(self, n: int, g: torch.Generator, flip: bool = True) -> torch.Tensor:
        """n images drawn with replacement, each flipped left-right with p = 0.5 -> [n, 3, S, S]."""
        return self.draw(n, g, flip).pixels

    def sample_with_prompts(self, n: int, g: torch.Generator, flip: bool = True) -> tuple[torch.Tensor, list[str]]:
        """As `sample` (the same draws), with each drawn image's prompt: its caption, or the shared prompt."""
        d = self.draw(n, g, flip)
        return d.pixels, d.prompts

    def draw(self, n: int, g: torch.Generator, flip: bool = True) -> Draw:
        """n images drawn with replacement, each flipped left-right with p = 0.5, with their prompts and SDXL
        micro-conditioning (what diffusers' SDXL scripts compute per photo: its original size, the crop's top-left
        in the photo resized to the short side, the target size; a flip mirrors the crop's left edge)."""
        idx = torch.randint(0, len(self), (n,), generator=g)
        x = self.pixels[idx].clone()
        size = x.shape[-1]
        f = torch.rand(n, generator=g) < 0.5 if flip else None
        crops = [self._centre_crop(i, size) for i in idx.tolist()]
        if self.originals is not None:  # drawn after the flips: centre-crop runs keep their exact draws
            where = torch.rand(n, generator=g)
            for j, (i, u) in enumerate(zip(idx.tolist(), where.tolist())):
                x[j] = random_window(self.originals[i], size, u)
                h, w = self.originals[i].shape[-2:]
                crops[j] = (int(u * (h - size + 1)), int(u * (w - size + 1)), h, w)
        flipped = f.tolist() if f is not None else [False] * n
        if f is not None:
            x[f] = x[f].flip(-1)
        prompts = [self.captions[i] for i in idx.tolist()] if self.captions is not None else [self.prompt] * n
        micro = []
        for i, (top, left, rh, rw), fl in zip(idx.tolist(), crops, flipped):
            oh, ow = self.sizes[i] if self.sizes else (size, size)
            micro.append([oh, ow, top, rw - size - left if fl else left, size, size])
        return Draw(self, idx.tolist(), flipped, x, prompts, torch.tensor(micro, dtype=torch.float32),
                    cacheable=self.originals is None)

    def _centre_crop(self, i: int, size: int) -> tuple[int, int, int, int]:
        """(top, left, resized h, resized w) of image i's centre square in the photo resized to the short side."""
        oh, ow = self.sizes[i] if self.sizes else (size, size)
        scale = size / min(oh, ow)
        rh, rw = max(size, round(oh * scale)), max(size, round(ow * scale))
        return (rh - size) // 2, (rw - size) // 2, rh, rw


def short_side(im: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is `size` (bicubic), keeping the aspect ratio: what a random square crop reads."""
    w, h = im.size
    s = size / min(w, h)
    return im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)


def random_window(img: torch.Tensor, size: int, u: float) -> torch.Tensor:
    """The size x size window of [3, H, W] `img` (one side equal to size) at fraction u in [0, 1) of the long
    side's free range."""
    h, w = img.shape[-2:]
    top, left = int(u * (h - size + 1)), int(u * (w - size + 1))
    return img[:, top:top + size, left:left + size]


def random_resize(x: torch.Tensor, g: torch.Generator, latent_factor: int, lo: float = 0.4, hi: float = 1.4):
    """Custom Diffusion's augmentation: rescale each image by a random factor in [lo, hi] (Kumari et al. §3.2).

    Smaller than the canvas: pasted at a random place on a grey canvas; the loss mask is 1 only on the pasted
    region (in latent pixels) and the prompt gets a "far away" word. Larger: a random crop of the enlarged image,
    "zoomed in" word, full mask. Between: unchanged.
    x: [B, 3, S, S] -> (x' [B, 3, S, S], mask [B, 1, S/f, S/f], size words per image (or None))
    """
    b, _, s, _ = x.shape
    m = s // latent_factor
    out = torch.zeros_like(x)
    mask = torch.zeros(b, 1, m, m)
    words = []
    for i in range(b):
        scale = lo + (hi - lo) * float(torch.rand((), generator=g))
        # snap to whole latent pixels so the mask covers exactly what the image covers
        size = max(latent_factor * 2, int(round(scale * s / latent_factor)) * latent_factor)
        img = torch.nn.functional.interpolate(x[i:i + 1], size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
        if size < s:
            cells = (s - size) // latent_factor
            oy = int(torch.randint(0, cells + 1, (), generator=g)) * latent_factor
            ox = int(torch.randint(0, cells + 1, (), generator=g)) * latent_factor
            out[i].fill_(0.0)  # mid-grey in [-1, 1]
            out[i, :, oy:oy + size, ox:ox + size] = img
            mask[i, :, oy // latent_factor:(oy + size) // latent_factor, ox // latent_factor:(ox + size) // latent_factor] = 1
            words.append(SMALL_WORDS[int(torch.randint(0, 2, (), generator=g))] if scale < 0.6 else None)
        elif size > s:
            oy = int(torch.randint(0, size - s + 1, (), generator=g))
            ox = int(torch.randint(0, size - s + 1, (), generator=g))
            out[i] = img[:, oy:oy + s, ox:ox + s]
            mask[i] = 1
            words.append(LARGE_WORDS[int(torch.randint(0, 2, (), generator=g))] if scale > 1.2 else None)
        else:
            out[i] = img
            mask[i] = 1
            words.append(None)
    return out, mask, words


def with_size_word(prompt: str, word: str | None) -> str:
    """'a photo of <new1> dog' + 'very small' -> 'a photo of very small <new1> dog'."""
    if not word:
        return prompt
    if prompt.startswith("a photo of "):
        return "a photo of " + word + " " + prompt[len("a photo of "):]
    return word + " " + prompt
