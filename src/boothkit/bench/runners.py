"""How each entry of the benchmark gets its images: every method boothkit.methods registers (through `tune`, so
fine-tuning and encoder methods such as InstantBooth are timed the same way), and the two baselines (floor: the base model with the class noun; ceiling: the
subject rendered exactly into each prompt's scene).

A runner returns a `Personalised`: the subject phrase its prompts use, a `sample(texts, seeds)` function, and the
cost of getting there (personalisation seconds, time to the first image, peak memory, artifact bytes).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .cost import PeakMemory, Timer, folder_bytes
from .protocol import class_prompt

BASELINES = ("floor", "ceiling")


def known_methods() -> list[str]:
    """The baselines, then every registered method (fine-tuning and encoder methods alike)."""
    from ..methods import METHODS

    return [*BASELINES, *METHODS]


@dataclass
class RunContext:
    """What every runner needs (set up once per benchmark run)."""

    model: str
    device: str
    steps: int  #: denoising steps per image
    guidance: float
    work: Path  #: scratch: concept folders and training state (resumable)
    tune_steps: int | None = None  #: override every recipe's step count (None: each method's default recipe)
    method_config: dict = field(default_factory=dict)  #: per-method config overrides {"lora": {"rank": 8}}
    keep_concepts: bool = False
    progress: Callable | None = None  #: progress(step, total) of a training run
    captions: bool = False  #: training methods train with the caption files beside the photos


@dataclass
class Personalised:
    phrase: str  #: the subject phrase in prompts ("sks dog")
    sample: Callable[[list[str], list[int]], torch.Tensor]  #: (one text per seed, seeds) -> [B, 3, H, W] in [0, 1]
    cost: dict
    close: Callable[[], None] = lambda: None


def _sampler(pipe, ctx: RunContext, encode: Callable | None = None):
    pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def sample(texts: list[str], seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]  # CPU noise: same pixels on every device
        kw = dict(num_inference_steps=ctx.steps, guidance_scale=ctx.guidance, generator=gens, output_type="pt")
        out = pipe(prompt_embeds=encode(texts), **kw) if encode else pipe(list(texts), **kw)
        return out.images.float().cpu().clamp(0, 1)

    return sample


def _load(ctx: RunContext):
    from ..pipeline import load_pipeline

    return load_pipeline(ctx.model, device=ctx.device, dtype="fp32", progress=False)


def floor(ctx: RunContext, base_pipe, concept, photos_dir: Path) -> Personalised:
    """The base model asked for the class (no personalisation). Its time to the first image is plain generation:
    loading the pipeline and sampling one image."""
    with PeakMemory(device=ctx.device) as mem:
        with Timer() as t_first:
            pipe = _load(ctx)
            _sampler(pipe, ctx)([class_prompt(concept.cls)], [0])
    del pipe
    cost = {"personalise_s": 0.0, "first_image_after_s": round(t_first.seconds, 2),
            "time_to_first_image_s": round(t_first.seconds, 2), "peak_memory_bytes": mem.peak_bytes,
            "rss_before_bytes": int(mem.rss_before), "artifact_bytes": 0}
    return Personalised(concept.cls, _sampler(base_pipe, ctx), cost)


def ceiling(ctx: RunContext, base_pipe, concept, photos_dir: Path) -> Personalised:
    """Marker: the ceiling's images are renders (see run.py); nothing is sampled."""
    return Personalised(concept.cls, None, {})


def tune_method(method: str, ctx: RunContext, concept, photos_dir: Path) -> Personalised:
    """A registered fine-tuning method with its default recipe (plus ctx overrides); the concept folder is kept
    under ctx.work until the subject is scored, and a killed run resumes from the method's own checkpoints."""
    from ..methods import apply_concepts, tune
    from ..methods.core import work_dir_for

    out = ctx.work / "concepts" / method / concept.slug
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # a previous run finished training but not scoring: train again (honest timing)
        shutil.rmtree(out)
    resume = work_dir_for(out).exists()
    from ..methods import METHODS

    trains = METHODS[method].recipe is not None  # encoder methods (InstantBooth) have no validation grids
    cfg = {**({"validation_images": 0} if trains else {}), **ctx.method_config.get(method, {})}
    with PeakMemory(device=ctx.device) as mem:
        with Timer() as t_tune:
            tune(method, photos_dir, concept.cls, out, model=ctx.model, steps=ctx.tune_steps, config=cfg,
                 resume=resume, progress=ctx.progress, device=ctx.device, captions=ctx.captions and trains)
        with Timer() as t_first:
            meta = json.loads((out / "concept.json").read_text())
            pipe = apply_concepts(_load(ctx), [out])
            sample = _sampler(pipe, ctx)
            phrase = f"{meta['tokens'][0]} {concept.cls}"
            sample([f"a photo of {phrase}"], [0])
    cost = {"personalise_s": round(t_tune.seconds, 2), "first_image_after_s": round(t_first.seconds, 2),
            "time_to_first_image_s": round(t_tune.seconds + t_first.seconds, 2),
            "peak_memory_bytes": mem.peak_bytes, "rss_before_bytes": int(mem.rss_before),
            "artifact_bytes": folder_bytes(out), "train_steps": meta["training"]["steps"],
            "train_seconds": meta["training"]["train_seconds"], "resumed": resume}
    if (out / "encoder").is_dir():  # InstantBooth: a copy of the shared encoder travels with each concept
        cost["shared_encoder_bytes"] = folder_bytes(out / "encoder")

    def close():
        if not ctx.keep_concepts:
            shutil.rmtree(out, ignore_errors=True)

    return Personalised(phrase, sample, cost, close)


def personalise(method: str, ctx: RunContext, base_pipe, concept, photos_dir: Path) -> Personalised:
    if method == "floor":
        return floor(ctx, base_pipe, concept, photos_dir)
    if method == "ceiling":
        return ceiling(ctx, base_pipe, concept, photos_dir)
    return tune_method(method, ctx, concept, photos_dir)
