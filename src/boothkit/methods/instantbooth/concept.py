"""InstantBooth as a registered method: `tune --method instantbooth` encodes the photos (no gradient step) into a
concept folder that `apply_concepts`, `boothkit generate --concept`, the app and the benchmark load like any other.

A concept folder holds:
    concept.json                       what every method writes (method, tokens, class, base model hash, ...)
    instantbooth_concept.safetensors   "concept" [text_dim]: the concept embedding (mean over the photos, through
                                       the concept head); "patches" [N * T, cross_dim]: the photos' patch tokens
                                       through the patch head. Precomputed, so generation needs no image encoder.
    encoder/                           a copy of the InstantBooth artifact the photos were encoded with (its
                                       adapters are needed at generation; the copy keeps the folder self-contained)

Loading installs the adapters on `pipe.unet` (attn1 processors + block pre-hooks, as `install_instantbooth`) with
the patches, and wraps `pipe.encode_prompt` so that a prompt's identifier gets the concept embedding in place of its
text-encoder output (times alpha). Everything else about the pipeline is unchanged: plain `pipe(prompt)` calls work.
With `uncond_beta` set (`--set uncond_beta=0`), `inference.track_guidance` also tells the adapters which rows of the
UNet batch are classifier-free guidance's negative half, which then gets the adapters at that strength (image
guidance).

On SDXL (boothkit.families) the concept embedding replaces the identifier's position of the concatenated context
(both text encoders' penultimate states, 768 + 1280 wide on SDXL base), and the pooled embedding stays the prompt's
own (text_encoder_2's projection of the prompt as written, the identifier a plain word), in pretraining and at
generation alike: it carries the prompt's global content; the subject enters through the context position and the
adapters.

Two subjects in one prompt (beyond the paper): each concept has its own identifier (`--identifier`, one token,
e.g. "sks" and "zwx") and its own patches. Both concepts' identifiers get their own concept embedding; the adapters
attend to both subjects' patches at once (concatenated). Known failure: nothing ties subject i's patches to the
image region of identifier i, so appearances mix (measured in notes/issue-5.md). Both concepts must come from the
same encoder (the adapters are shared).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ...inputs import InputError
from .config import _Dict, _need
from .inference import PATCH_MODES, track_guidance
from .modules import single_token_id

CONCEPT_WEIGHTS = "instantbooth_concept.safetensors"
ENCODER_DIR = "encoder"


@dataclass
class ConceptConfig(_Dict):
    """`tune --method instantbooth` settings: which encoder, and the inference knobs stored with the concept."""

    encoder: str = ""  #: InstantBooth artifact folder ("" = the one shipped for the base model: boothkit.encoders)
    alpha: float | None = None  #: concept scale at generation (None: the encoder's default)
    beta: float | None = None  #: adapter strength at generation (None: the encoder's default)
    #: cut each photo's subject out on white and frame it square at 3/4 of the side, as pretraining showed the
    #: encoder its conditions (the mask: the photo's alpha, else `segmenter`, else a flat background, else the whole
    #: photo); False: the photos as given (already framed cut-outs)
    mask_background: bool = True
    segmenter: str = ""  #: CLIPSeg folder or hub id that cuts the subject out of photos without alpha ("" = none)
    patches: str = "concat"  #: "concat": all N photos' patch tokens (the paper); "mean": averaged over the photos
    #: adapter strength in classifier-free guidance's unconditional half (None: beta, as in both halves: the paper;
    #: 0: adapters off there, so guidance also pushes towards the photos, as IP-Adapter's negative image does)
    uncond_beta: float | None = None
    steps: int = 0  #: no training happens; kept so that --steps is accepted (it is ignored)

    def validate(self) -> None:
        _need(self.alpha is None or self.alpha >= 0, f"alpha must be >= 0 (got {self.alpha})")
        _need(self.beta is None or self.beta >= 0, f"beta must be >= 0 (got {self.beta})")
        _need(self.uncond_beta is None or self.uncond_beta >= 0, f"uncond_beta must be >= 0 (got {self.uncond_beta})")
        _need(self.patches in PATCH_MODES, f"patches must be one of {PATCH_MODES} (got {self.patches!r})")


def encoder_dir(cfg: ConceptConfig, model: str) -> Path:
    """The encoder a concept is made with: cfg.encoder, else the one shipped for the base model (boothkit.encoders,
    matched by the model's hash; InputError saying what to do when none fits)."""
    if cfg.encoder:
        return Path(cfg.encoder)
    from ...encoders import shipped_instantbooth

    return Path(shipped_instantbooth(model, flag="instantbooth").path)


def tower(cfg: ConceptConfig, model: str, class_noun: str) -> str | None:
    """The vision tower to load beside the base model for `tune` (MethodSpec.image_encoder): the one the encoder was
    trained with when it was not the base model's own."""
    from .. import vision
    from .artifact import read_meta

    return vision.tower_source(read_meta(encoder_dir(cfg, model)))


def encode(pipe, photos, class_noun: str, token: str, cfg: ConceptConfig, folder: Path, model_hash: str) -> dict:
    """Encode the photos with the encoder into `folder` (a staging folder that tune() publishes)."""
    from safetensors.torch import save_file

    from .artifact import read_meta
    from .inference import install_instantbooth

    from .. import vision

    enc = encoder_dir(cfg, getattr(pipe, "boothkit_model", None) or "world")
    where = f"instantbooth encoder {enc}"
    vision.require_tower(pipe, where)
    vision.check_fits(pipe, read_meta(enc), where)
    ib = install_instantbooth(pipe, enc, alpha=cfg.alpha, beta=cfg.beta)
    try:
        if token != ib.cfg.identifier:
            ib.token_id = single_token_id(pipe.tokenizer, token)
        concept, patches = ib.encode_images(photos, mask_background=cfg.mask_background, patches=cfg.patches,
                                            class_noun=class_noun, segmenter=cfg.segmenter)
    finally:
        ib.remove()
    save_file({"concept": concept.float().cpu().contiguous(), "patches": patches[0].float().cpu().contiguous()},
              str(folder / CONCEPT_WEIGHTS))
    shutil.copytree(enc, folder / ENCODER_DIR, ignore=shutil.ignore_patterns("*.work", "checkpoint-*"))
    return {"files": [CONCEPT_WEIGHTS, ENCODER_DIR], "instantbooth": {
        "encoder": str(enc), "alpha": ib.cfg.alpha, "beta": ib.cfg.beta, "uncond_beta": cfg.uncond_beta,
        "n_photos": len(photos),
        "patch_tokens": int(patches.shape[1])}}


class _Installed:
    """The InstantBooth state on one pipeline: the shared adapters and every loaded concept."""

    def __init__(self, attached, encoder_key: str, beta: float):
        self.attached, self.encoder_key, self.beta = attached, encoder_key, beta
        self.concepts: list[tuple[int, torch.Tensor, float]] = []  # (token id, concept [D], alpha)
        self.patches: list[torch.Tensor] = []

    def add(self, token_id: int, concept: torch.Tensor, alpha: float, patches: torch.Tensor) -> None:
        if any(t == token_id for t, _, _ in self.concepts):
            raise InputError("two InstantBooth concepts use the same identifier: give each its own "
                             "(tune --identifier)")
        self.concepts.append((token_id, concept, alpha))
        self.patches.append(patches)
        self.attached.set_patches(torch.cat(self.patches, dim=0)[None], self.beta)


def load(pipe, folder: Path, meta: dict) -> None:
    """Install a concept folder on `pipe` (adapters on pipe.unet once; the concept embedding at its identifier)."""
    import hashlib
    import inspect

    from safetensors.torch import load_file

    from . import artifact
    from .modules import attach, inject_concept

    folder = Path(folder)
    enc = folder / ENCODER_DIR
    model, ameta = artifact.load(enc, alpha=meta.get("instantbooth", {}).get("alpha"),
                                 beta=meta.get("instantbooth", {}).get("beta"))
    from ...families import family_of

    # the concept's embedding and patches are precomputed: no vision tower is needed here, only the sizes they fill
    have = {"text_dim": family_of(pipe).text_width(pipe), "cross_dim": int(pipe.unet.config.cross_attention_dim)}
    for k in ("text_dim", "cross_dim"):
        if have[k] != ameta["dims"][k]:
            raise InputError(f"--concept {folder}: made for {k}={ameta['dims'][k]}, this pipeline has {have[k]}")
    key = hashlib.sha1((enc / artifact.WEIGHTS).read_bytes()).hexdigest()
    state: _Installed | None = getattr(pipe, "_boothkit_instantbooth", None)
    if state is None:
        p = next(pipe.unet.parameters())
        model.to(p.device, p.dtype)
        state = _Installed(attach(pipe.unet, model, beta=model.cfg.beta), key, model.cfg.beta)
        # image guidance is a property of the pipeline's adapters: the first concept loaded decides it for all
        state.attached.condition.uncond_beta = meta.get("instantbooth", {}).get("uncond_beta")
        pipe._boothkit_instantbooth = state
        track_guidance(pipe, state.attached.condition)  # which rows are guidance's negative half, per call
        original = pipe.encode_prompt
        sig = inspect.signature(original)

        def encode_prompt(*args, **kwargs):
            out = original(*args, **kwargs)  # (prompt_embeds, negative, ...): SDXL adds the pooled embeddings
            b = sig.bind(*args, **kwargs)
            prompt = b.arguments.get("prompt")
            if prompt is None or b.arguments.get("prompt_embeds") is not None:
                return out
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            n = int(b.arguments.get("num_images_per_prompt") or 1)
            tok = pipe.tokenizer
            if hasattr(pipe, "maybe_convert_prompt"):
                prompts = [pipe.maybe_convert_prompt(p, tok) for p in prompts]
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.repeat_interleave(n, dim=0)
            pe = out[0]
            for token_id, concept, alpha in state.concepts:
                pe = inject_concept(pe, ids, token_id, concept.to(pe.device), alpha)
            return (pe, *out[1:])

        pipe.encode_prompt = encode_prompt
    elif state.encoder_key != key:
        raise InputError(f"--concept {folder}: its InstantBooth encoder differs from the one of the concept "
                         "already loaded; concepts used together must come from the same encoder")
    t = load_file(str(folder / CONCEPT_WEIGHTS))
    p = next(pipe.unet.parameters())
    token_id = single_token_id(pipe.tokenizer, meta["tokens"][0])
    state.add(token_id, t["concept"].to(p.device, p.dtype), model.cfg.alpha, t["patches"].to(p.device, p.dtype))

