"""Using a trained InstantBooth: on any diffusers Stable Diffusion pipeline, and boothkit's own path.

With diffusers alone (plus this module)::

    from diffusers import StableDiffusionPipeline                   # or StableDiffusionXLPipeline
    from boothkit.methods.instantbooth import install_instantbooth

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)       # a pipeline with an image_encoder
    ib = install_instantbooth(pipe, "instantbooth-person")          # adapters -> pipe.unet's attn1 processors
    ib.set_images([Image.open(p) for p in photos])                  # any number of reference photos
    image = pipe(**ib.pipe_kwargs("a photo of sks person on a red background")).images[0]
    ib.remove()                                                     # the UNet is stock again

No gradient step anywhere: the reference photos go through the frozen vision tower and the two heads once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ...inputs import InputError
from . import artifact
from .modules import (Attached, InstantBooth, attach, image_features, model_dims, normalise_pixels,
                      single_token_id)


#: how N reference photos' patch tokens reach the adapters: "concat" (all N * T tokens, the paper) or "mean"
PATCH_MODES = ("concat", "mean")


def track_guidance(pipe, condition) -> Callable[[], None]:
    """Wrap `pipe.encode_prompt` so that every call tells `condition` how many rows of the coming UNet batch are
    classifier-free guidance's negative half (diffusers' pipelines batch [negative, positive]): what image guidance
    (`ImageCondition.uncond_beta`) needs. Works for `pipe(prompt=...)` and `pipe(prompt_embeds=...)` alike.
    -> a function that unwraps it."""
    import functools
    import inspect

    own = "encode_prompt" in vars(pipe)  # already wrapped by someone (else: the class's method)
    original = pipe.encode_prompt
    sig = inspect.signature(original)

    @functools.wraps(original)  # keeps the signature: a wrapper around this one can still bind by name
    def encode_prompt(*args, **kwargs):
        out = original(*args, **kwargs)  # (prompt_embeds, negative, ...): SDXL adds the pooled embeddings
        guided = sig.bind(*args, **kwargs).arguments.get("do_classifier_free_guidance")
        condition.uncond_rows = out[0].shape[0] if guided else 0
        return out

    pipe.encode_prompt = encode_prompt

    def undo() -> None:
        if own:
            pipe.encode_prompt = original
        else:
            vars(pipe).pop("encode_prompt", None)

    return undo


class InstantBoothPipeline:
    """The handle `install_instantbooth` returns: reference images in, prompt embeddings out."""

    def __init__(self, pipe, model: InstantBooth, meta: dict, attached: Attached,
                 untrack: Callable[[], None] | None = None):
        self.pipe, self.model, self.meta, self.attached, self._untrack = pipe, model, meta, attached, untrack
        self.concept: torch.Tensor | None = None  # [text_dim], set by set_images
        self.token_id = single_token_id(pipe.tokenizer, model.cfg.identifier)

    @property
    def cfg(self):
        return self.model.cfg

    def pixel_values(self, images) -> torch.Tensor:
        """PIL images -> [N, 3, S, S] the way pretraining fed the vision tower (resize, mean/std of the artifact)."""
        import numpy as np

        pre = self.meta["preprocessing"]
        s = pre["image_size"]
        from PIL import Image

        arr = [np.asarray(im.convert("RGB").resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
               for im in images]
        x = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2)  # [N, 3, S, S] in [0, 1]
        return normalise_pixels(x, s, pre["mean"], pre["std"])

    @torch.no_grad()
    def encode_images(self, images, mask_background: bool = True, patches: str = "concat", *,
                      class_noun: str | None = None, segmenter: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """N >= 1 reference images of ONE subject -> (concept embedding [text_dim], patches [1, N * T, cross_dim]).

        mask_background: each photo's subject cut out on white and framed square at 3/4 of the side, as pretraining
        showed the encoder its conditions (methods.vision.framed_references: the mask from the photo's alpha, else
        the `segmenter` (a CLIPSeg folder or id) prompted with `class_noun`, else a flat background, else the whole
        photo, with a warning); False: the photos as given (already framed cut-outs).
        patches="mean": the N images' tokens are averaged position by position instead -> [1, T, cross_dim], the
        token count pretraining conditioned on (one image per scene); the framing makes the positions comparable.
        """
        if patches not in PATCH_MODES:
            raise InputError(f"InstantBooth patches must be one of {PATCH_MODES} (got {patches!r})")
        if not images:
            raise InputError("InstantBooth needs at least one reference image")
        enc = self.pipe.image_encoder
        if mask_background:
            from .. import vision

            noun = class_noun or self.meta.get("class") or "object"
            images = vision.framed_references(images, noun, segmenter=segmenter, device=enc.device)
        embeds, tokens = image_features(enc, self.pixel_values(images))  # [N, E], [N, T, H]
        head_param = next(self.model.concept_head.parameters())
        embeds, tokens = embeds.to(head_param), tokens.to(head_param)
        if patches == "mean":
            tokens = tokens.mean(0, keepdim=True)  # [1, T, H] (with the paper's linear head: the mean of its outputs)
        concept, patch_tokens = self.model.encode(embeds[None], tokens[None])  # [1, D], [1, N * T or T, C]
        return concept[0], patch_tokens

    @torch.no_grad()
    def set_images(self, images, beta: float | None = None, mask_background: bool = True, *,
                   class_noun: str | None = None, segmenter: str = "") -> None:
        """Encode N >= 1 reference images of ONE subject (see encode_images): the mean concept embedding and all N
        images' patches."""
        self.concept, patches = self.encode_images(images, mask_background, class_noun=class_noun,
                                                   segmenter=segmenter)
        self.attached.set_patches(patches, self.cfg.beta if beta is None else beta)

    @torch.no_grad()
    def encode_text(self, prompt: str | list[str], alpha: float | None = None):
        """The prompt's text conditioning (boothkit.families.TextConditioning) with the identifier's position
        replaced by alpha * concept: hidden [B, 77, text_dim] (SDXL: both encoders' states, and the prompt's own
        pooled embedding, see concept.py)."""
        from ...families import family_of
        from .modules import inject_concept

        if self.concept is None:
            raise InputError("call set_images(...) before encode_prompt(...)")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        family = family_of(self.pipe)
        ids = family.token_ids(self.pipe, prompts)
        for p, row in zip(prompts, ids[0]):
            if not (row == self.token_id).any():
                raise InputError(f"prompt {p!r} does not contain the identifier {self.cfg.identifier!r} "
                                 f"(e.g. 'a photo of {self.cfg.identifier} {self.meta.get('class') or 'person'}')")
        text = family.encode_ids(ids, family.text_encoders(self.pipe))  # as the pipeline's encode_prompt computes it
        text.hidden = inject_concept(text.hidden, ids[0], self.token_id, self.concept.to(text.hidden.device),
                                     self.cfg.alpha if alpha is None else alpha)
        return text

    def encode_prompt(self, prompt: str | list[str], alpha: float | None = None) -> torch.Tensor:
        """Text encoder output with the identifier's output replaced by alpha * concept -> [B, 77, text_dim]
        (`pipe(prompt_embeds=...)` on SD; on SDXL use `pipe(**handle.pipe_kwargs(prompt))`, which also passes the
        pooled embedding)."""
        return self.encode_text(prompt, alpha).hidden

    def pipe_kwargs(self, prompt: str | list[str], alpha: float | None = None) -> dict:
        """The pipe(...) arguments that draw `prompt` with the subject, on any supported pipeline."""
        from ...families import family_of

        return family_of(self.pipe).pipe_embeds(self.encode_text(prompt, alpha))

    def remove(self) -> None:
        """Detach the adapters (and the guidance tracking): pipe is the stock pipeline again."""
        self.attached.detach()
        if self._untrack:
            self._untrack()
            self._untrack = None


def install_instantbooth(pipe, weights_dir: str | Path, alpha: float | None = None,
                         beta: float | None = None, uncond_beta: float | None = None) -> InstantBoothPipeline:
    """Install a trained InstantBooth (artifact folder) into a diffusers StableDiffusionPipeline.

    The adapters become attention processors of every transformer block's ``attn1`` in ``pipe.unet`` (plus a
    forward pre-hook per block); the heads stay in the returned handle. The pipeline needs ``image_encoder`` (the
    vision tower the artifact was trained with) and its tokenizer must read the identifier as one token.
    Then: ``handle.set_images(photos)`` and ``pipe(prompt_embeds=handle.encode_prompt(prompt), ...)``.
    alpha / beta override the artifact's inference defaults (concept scale, adapter strength). uncond_beta: image
    guidance, the adapters' strength in guidance's negative half (None: beta there too, the paper; 0: off, as
    IP-Adapter's negative image), for which `pipe.encode_prompt` is wrapped until `remove()`.
    """
    model, meta = artifact.load(weights_dir, alpha=alpha, beta=beta)
    have = model_dims(pipe)
    for k in ("vision_hidden", "vision_embed", "text_dim", "cross_dim"):
        if have[k] != meta["dims"][k]:
            raise InputError(f"--instant {weights_dir}: made for {k}={meta['dims'][k]}, this pipeline has {have[k]} "
                             f"(it was trained on base model {meta.get('base_model')!r})")
    p = next(pipe.unet.parameters())
    model.to(p.device, p.dtype)
    attached = attach(pipe.unet, model, beta=model.cfg.beta)
    untrack = None
    if uncond_beta is not None:
        attached.condition.uncond_beta = float(uncond_beta)
        untrack = track_guidance(pipe, attached.condition)
    return InstantBoothPipeline(pipe, model, meta, attached, untrack)


def load_reference_images(images) -> list:
    """A folder (or list) of photos -> validated RGB PIL images (boothkit.inputs rules); PIL images pass through."""
    from PIL import Image

    from ...inputs import load_subject_images

    if isinstance(images, (list, tuple)) and images and all(isinstance(i, Image.Image) for i in images):
        return list(images)
    return load_subject_images(images)


def subject_noun(prompt: str, identifier: str) -> str | None:
    """The word a prompt puts after the identifier ("a photo of sks dog on a beach" -> "dog"): the class noun a
    segmenter is prompted with when the artifact names none."""
    words = prompt.replace(",", " ").split()
    return next((words[i + 1] for i, w in enumerate(words[:-1]) if w == identifier), None)


def generate_instant(pipe, artifact_dir: str | Path, ref_images, prompt: str, cfg=None, *, alpha: float | None = None,
                     beta: float | None = None, uncond_beta: float | None = None, mask_background: bool = True,
                     segmenter: str = "", check_model: bool = True) -> list:
    """Personalised images without any training step: -> list of PIL images (image i uses seed cfg.seed + i).

    ref_images: a folder of photos, a list of files, or PIL images (any number, one subject). cfg: a
    boothkit.generate.GenerateConfig (n, seed, steps, guidance, size, negative prompt). The pipeline is left as it
    was (adapters removed) when this returns. mask_background / segmenter: how the subject is cut out of the photos
    (InstantBoothPipeline.encode_images). check_model: refuse an artifact trained for another base model, family or
    vision tower (methods.vision.check_fits).
    """
    from ...generate import GenerateConfig, check_prompt, native_size
    from .. import vision

    cfg = cfg or GenerateConfig()
    meta = artifact.read_meta(artifact_dir)
    vision.require_tower(pipe, f"--instant {artifact_dir}")
    if check_model:
        vision.check_fits(pipe, meta, f"--instant {artifact_dir}")
    refs = load_reference_images(ref_images)
    check_prompt(pipe, prompt)
    ib = install_instantbooth(pipe, artifact_dir, alpha=alpha, beta=beta, uncond_beta=uncond_beta)
    try:
        ib.set_images(refs, mask_background=mask_background, segmenter=segmenter,
                      class_noun=meta.get("class") or subject_noun(prompt, ib.cfg.identifier))
        embeds = ib.pipe_kwargs(prompt)
        size = native_size(pipe)
        out = []
        for i in range(cfg.n):
            g = torch.Generator("cpu").manual_seed(cfg.seed + i)  # CPU noise: the same pixels on every device
            out.append(pipe(**embeds, height=cfg.height or size, width=cfg.width or size,
                            num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                            negative_prompt=cfg.negative_prompt, generator=g).images[0])
        return out
    finally:
        ib.remove()
