"""Text-to-image generation with a loaded pipeline: seeds, validation, files and grids."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch


class UsageError(ValueError):
    """Bad arguments: reported to the user as a usage error, nothing is written."""


@dataclass
class GenerateConfig:
    """How to sample. Image i of a call uses seed `seed + i`, so the same seed gives the same pixels."""

    n: int = 4  #: images per prompt
    seed: int = 0  #: base seed
    steps: int = 20  #: denoising steps
    guidance: float = 5.0  #: classifier-free guidance scale
    height: int | None = None  #: default: the UNet's native size (64 for the world model)
    width: int | None = None
    negative_prompt: str | None = None

    def __post_init__(self):
        if self.n <= 0:
            raise UsageError(f"-n must be at least 1 (got {self.n})")
        if self.steps <= 0:
            raise UsageError(f"--steps must be at least 1 (got {self.steps})")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8 or v > 4096):
                raise UsageError(f"--{name} must be a multiple of 8 between 8 and 4096 (got {v})")


def native_size(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def check_prompt(pipe, prompt: str) -> str:
    """Warn (and let the tokenizer truncate) when a prompt is longer than the text encoder's window."""
    tok = pipe.tokenizer
    n = len(tok(prompt, truncation=False).input_ids)
    if n > tok.model_max_length:
        kept = tok.decode(tok(prompt, truncation=True, max_length=tok.model_max_length).input_ids[1:-1])
        warnings.warn(f"prompt is {n} tokens; the text encoder reads {tok.model_max_length}: truncated to "
                      f"{kept!r}", stacklevel=2)
    return prompt


def generate_images(pipe, prompt: str, cfg: GenerateConfig, **pipe_kwargs):
    """-> list of PIL images, one per seed cfg.seed .. cfg.seed + n - 1."""
    check_prompt(pipe, prompt)
    size = native_size(pipe)
    h, w = cfg.height or size, cfg.width or size
    scale = int(pipe.vae_scale_factor)
    if h % scale or w % scale:
        raise UsageError(f"height and width must be multiples of {scale} for this model (got {h}x{w})")
    from . import progress

    images = []
    gen_device = "cpu"  # CPU generators give the same noise on every device
    for i in progress.bar(range(cfg.n), desc="generating", unit="img", disable=cfg.n == 1):
        g = torch.Generator(gen_device).manual_seed(cfg.seed + i)
        out = pipe(prompt, height=h, width=w, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                   negative_prompt=cfg.negative_prompt, generator=g, **pipe_kwargs)
        images.append(out.images[0])
    return images


def prepare_out(out: str | Path) -> Path:
    """Create --out (or check it) and prove it is writable before any work is done."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r} is not writable: {e.strerror or e}") from e
    return out


def save_images(images, out: Path, stem: str = "image") -> list[Path]:
    """Write PNGs and grid.png into out, each through a temporary name then renamed (no half-written files)."""
    from .world.render import grid

    paths = []
    for i, im in enumerate(images):
        paths.append(write_png(im, out / f"{stem}-{i:03d}.png"))
    paths.append(write_png(grid(images, cols=min(len(images), 4)), out / "grid.png"))
    return paths


def write_png(im, path: Path) -> Path:
    """Save a PNG through a temporary name, then rename: readers never see a half-written file."""
    tmp = path.with_name("." + path.name + ".tmp")
    im.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
