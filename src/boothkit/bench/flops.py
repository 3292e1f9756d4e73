"""FLOPs and memory bytes of what boothkit trains and samples, counted on models built on the meta device.

Shared by the cost questions of several issues (SDXL's cost table, the GPU-hours of real-data pretraining,
InstantBooth against DreamBooth): each builds the diffusers / transformers modules from their configs on
`torch.device("meta")` (no weight is allocated, an SDXL UNet builds in a second), runs them on meta tensors of the
right shapes inside `torch.utils.flop_counter.FlopCounterMode`, and reads the count. The count is what autograd
actually runs: a training step's backward computes weight gradients only for what trains, and input gradients
only where they must flow (Textual Inversion's backward goes through the whole UNet and text encoder to reach one
embedding row, but computes no UNet weight gradient).

What is counted: FlopCounterMode's matrix products (mm, addmm, bmm, baddbmm), convolutions and attention (on the
meta device scaled_dot_product_attention decomposes into counted bmm's; on a CPU tensor it would count 0), forward
and backward; a multiply-add is 2 FLOPs. Not counted: element-wise work (norms, activations, the optimizer's
update, bias adds), a few percent of a step. Bytes are weights, gradients and optimizer state; activations are not
counted (they depend on batch, resolution and gradient checkpointing).

Models: "sd15" and "sdxl" are the published architectures, kept as JSON under
assets/reference_configs/ (README.md there cites the sources); a path to a diffusers pipeline folder counts that
model instead (e.g. the shipped world model, `boothkit.pipeline.world_path()`).

Public functions (a family is "sd15", "sdxl" or a pipeline folder; resolution in pixels, None = the model's own):

    train_step_flops(family, method, *, batch, resolution=None, rank=4, cached=False) -> StepFlops
    sampling_step_flops(family, *, resolution=None, guidance=True, instantbooth_images=0) -> int
    vae_flops(family, part, *, images=1, resolution=None) -> int          # part: "encode" | "decode"
    text_encoder_flops(family, *, prompts=1, backward=False) -> int        # every text encoder of the family
    vision_tower_flops(family, *, images=1) -> int                         # the CLIP vision tower
    parameter_counts(family) -> dict[str, int]
    training_bytes(family, method, *, precision="fp32", rank=4) -> dict[str, int]
    instantbooth_vs_dreambooth(family, *, photos=4, ...) -> dict            # the FLOPs ratio of issue 18
    pretrain_step_flops(family, method, *, batch, resolution=None, gradient_checkpointing=False) -> dict
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

#: the published architectures (see assets/reference_configs/README.md)
REFERENCE_CONFIGS = Path(__file__).resolve().parents[1] / "assets" / "reference_configs"
FAMILIES = ("sd15", "sdxl")
#: what trains in each fine-tuning method (methods/<name>/): the UNet's share decides the backward
TRAINING_METHODS = ("lora", "dreambooth", "custom", "ti")
#: LoRA's target projections (methods/lora/config.py UNET_TARGETS; diffusers' DreamBooth-LoRA recipe)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
PRECISIONS = ("fp32", "bf16", "adam8bit")
#: the text encoders' window (CLIP's 77 positions); prompts are padded to it, as the pipelines do
TEXT_LENGTH = 77


# --- configs and meta-device models ----------------------------------------------------------------------------

def _source(family: str | Path) -> Path:
    if str(family) in FAMILIES:
        return REFERENCE_CONFIGS / str(family)
    path = Path(family)
    if not (path / "unet" / "config.json").is_file():
        raise ValueError(f"{family!r}: not one of {FAMILIES} and not a diffusers pipeline folder (no unet/config.json)")
    return path


@functools.lru_cache(maxsize=64)
def _config(family: str, part: str) -> dict | None:
    """A component's config: reference_configs/<family>/<part>.json or <folder>/<part>/config.json (None: absent)."""
    root = _source(family)
    if str(family) in FAMILIES:
        name = {"image_encoder": "clip_vit_l14_vision"}.get(part, part)
        path = root / f"{name}.json"
    else:
        path = root / part / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def config(family: str | Path, part: str) -> dict:
    """The config of `part` (unet, vae, text_encoder, text_encoder_2, image_encoder) of a family; a copy."""
    cfg = _config(str(family), part)
    if cfg is None:
        raise ValueError(f"{family}: no {part} config")
    return dict(cfg)


def text_encoder_parts(family: str | Path) -> list[str]:
    return [p for p in ("text_encoder", "text_encoder_2") if _config(str(family), p) is not None]


def meta_unet(family: str | Path):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config(family, "unet"))


def meta_vae(family: str | Path):
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL.from_config(config(family, "vae"))


def meta_text_encoder(family: str | Path, part: str = "text_encoder"):
    """CLIPTextModel, or CLIPTextModelWithProjection when the config names it (SDXL's second encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = config(family, part)
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in cfg.get("architectures", []) \
        else CLIPTextModel
    with torch.device("meta"):
        return cls(CLIPTextConfig(**_model_keys(cfg)))


def meta_vision_tower(family: str | Path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**_model_keys(config(family, "image_encoder"))))


def _model_keys(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version",
                                                                                  "torch_dtype", "dtype")}


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs that FlopCounterMode counts while fn(*args, **kwargs) runs (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


# --- the UNet ---------------------------------------------------------------------------------------------------

def latent_side(family: str | Path, resolution: int | None) -> int:
    """Latent side for an image side: resolution / the VAE's downscale (2 ** (levels - 1)); None: the UNet's own."""
    if resolution is None:
        return int(config(family, "unet")["sample_size"])
    factor = 2 ** (len(config(family, "vae")["block_out_channels"]) - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not a multiple of the VAE's downscale {factor}")
    return resolution // factor


def default_resolution(family: str | Path) -> int:
    return latent_side(family, None) * 2 ** (len(config(family, "vae")["block_out_channels"]) - 1)


def _unet_inputs(unet, batch: int, side: int, context_grad: bool = False) -> tuple[tuple, dict]:
    """Meta inputs of one UNet call: (latents, timesteps, context), and SDXL's added conditioning."""
    cfg = unet.config
    latents = torch.empty(batch, cfg.in_channels, side, side, device="meta")
    t = torch.full((batch,), 500, device="meta", dtype=torch.long)
    context = torch.empty(batch, TEXT_LENGTH, cfg.cross_attention_dim, device="meta", requires_grad=context_grad)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 micro-conditioning numbers
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(batch, pooled, device="meta"),
                                       "time_ids": torch.empty(batch, 6, device="meta")}
    return (latents, t, context), kwargs


def mark_trainable(unet, method: str, rank: int = 4) -> list[torch.nn.Parameter]:
    """Make the UNet's parameters of `method` trainable, as the method's recipe does; -> them.

    lora: peft LoRA of rank r on to_q/to_k/to_v/to_out.0 (B = 0 only changes values, not the work); dreambooth:
    every weight; custom: the cross-attention (attn2) key and value projections, whose copies Custom Diffusion's
    processor trains (the same products); ti: none (only the context needs a gradient).
    """
    if method not in TRAINING_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {TRAINING_METHODS}")
    unet.requires_grad_(False)
    if method == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS)))
    elif method == "dreambooth":
        unet.requires_grad_(True)
    elif method == "custom":
        for name, mod in unet.named_modules():
            if name.endswith("attn2"):
                mod.to_k.weight.requires_grad_(True)
                mod.to_v.weight.requires_grad_(True)
    return [p for p in unet.parameters() if p.requires_grad]


def _text_trains(method: str) -> bool:
    """Whether the method's gradient must reach the text encoder (a new token embedding trains)."""
    return method in ("ti", "custom")


@dataclass
class StepFlops:
    """FLOPs of one optimizer step of a fine-tuning method, by part."""

    unet_forward: int
    unet_backward: int
    vae_encode: int  #: 0 when cached (the latents of each photo and flip are computed once, before the steps)
    text_forward: int  #: 0 when cached (a frozen text encoder's prompts are encoded once)
    text_backward: int  #: to the trained token embedding (TI, Custom Diffusion); otherwise 0

    @property
    def total(self) -> int:
        return self.unet_forward + self.unet_backward + self.vae_encode + self.text_forward + self.text_backward

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def unet_train_flops(family: str | Path, method: str, *, batch: int, resolution: int | None = None,
                     rank: int = 4) -> tuple[int, int]:
    """(forward, backward) FLOPs of the UNet in one training step of `method` on `batch` images."""
    unet = meta_unet(family)
    mark_trainable(unet, method, rank)
    args, kwargs = _unet_inputs(unet, batch, latent_side(family, resolution), context_grad=_text_trains(method))
    out = []

    def forward():
        out.append(unet(*args, **kwargs).sample)

    fwd = count_flops(forward)
    bwd = count_flops(lambda: out[0].float().pow(2).mean().backward())
    return fwd, bwd


def train_step_flops(family: str | Path, method: str, *, batch: int, resolution: int | None = None, rank: int = 4,
                     cached: bool = False) -> StepFlops:
    """FLOPs of one training step: `batch` images through the UNet (prior-preservation images included: a
    DreamBooth step at batch_size 2 with prior preservation is batch 4), their VAE encoding and their prompts' text
    encoding (none of the two when `cached` and the text encoder is frozen; the VAE is always cacheable here)."""
    fwd, bwd = unet_train_flops(family, method, batch=batch, resolution=resolution, rank=rank)
    text_trains = _text_trains(method)
    vae = 0 if cached else vae_flops(family, "encode", images=batch, resolution=resolution)
    text = 0 if cached and not text_trains else text_encoder_flops(family, prompts=batch)
    text_back = text_encoder_flops(family, prompts=batch, backward=True) - text_encoder_flops(family, prompts=batch) \
        if text_trains else 0
    return StepFlops(fwd, bwd, vae, text, text_back)


def sampling_step_flops(family: str | Path, *, resolution: int | None = None, guidance: bool = True,
                        instantbooth_images: int = 0, patch_kv: bool = False) -> int:
    """One denoising step of one image: the UNet at batch 2 with classifier-free guidance (1 without).

    instantbooth_images: N > 0 adds InstantBooth's gated adapters in every transformer block, attending to the
    patch tokens of N reference photos (methods/instantbooth/modules.py, built on the meta UNet); patch_kv: also
    count the patches' keys and values, which the adapters compute once per image (the first step) and cache.
    """
    unet = meta_unet(family)
    batch = 2 if guidance else 1
    args, kwargs = _unet_inputs(unet, batch, latent_side(family, resolution))
    if instantbooth_images:
        handle = _attach_instantbooth(family, unet)
        tokens = _vision_tokens(family)
        patches = torch.empty(1, instantbooth_images * tokens, unet.config.cross_attention_dim, device="meta")
        handle.set_patches(patches)
        if not patch_kv:  # fill the processors' caches outside the count
            with torch.no_grad():
                unet(*args, **kwargs)
    with torch.no_grad():
        return count_flops(lambda: unet(*args, **kwargs))


def _vision_tokens(family: str | Path) -> int:
    """CLS + patch tokens of the vision tower: (image_size / patch_size)^2 + 1."""
    cfg = config(family, "image_encoder")
    return (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1


def _instantbooth_model(family: str | Path, unet):
    from ..methods.instantbooth.config import InstantBoothConfig
    from ..methods.instantbooth.modules import InstantBooth, transformer_blocks

    vision = config(family, "image_encoder")
    dims = {"vision_hidden": int(vision["hidden_size"]), "vision_embed": int(vision["projection_dim"]),
            "image_size": int(vision["image_size"]), "text_dim": int(unet.config.cross_attention_dim),
            "cross_dim": int(unet.config.cross_attention_dim),
            "blocks": {n: int(m.norm1.normalized_shape[0]) for n, m in transformer_blocks(unet).items()}}
    with torch.device("meta"):
        return InstantBooth(InstantBoothConfig(), dims)


def _attach_instantbooth(family: str | Path, unet):
    from ..methods.instantbooth.modules import attach

    return attach(unet, _instantbooth_model(family, unet))


def instantbooth_encode_flops(family: str | Path, *, images: int) -> dict[str, int]:
    """Photos -> concept embedding and patch tokens: the vision tower on each photo, then the two heads."""
    unet = meta_unet(family)
    model = _instantbooth_model(family, unet)
    vision = config(family, "image_encoder")
    embeds = torch.empty(1, images, int(vision["projection_dim"]), device="meta")
    tokens = torch.empty(1, images, _vision_tokens(family), int(vision["hidden_size"]), device="meta")
    with torch.no_grad():
        heads = count_flops(lambda: model.encode(embeds, tokens))
    return {"vision_tower": vision_tower_flops(family, images=images), "heads": heads}


# --- VAE, text encoders, vision tower ---------------------------------------------------------------------------

def vae_flops(family: str | Path, part: str, *, images: int = 1, resolution: int | None = None) -> int:
    """The VAE's encoder (images -> posterior) or decoder (latents -> images) on `images` images."""
    vae = meta_vae(family)
    res = resolution or default_resolution(family)
    side = latent_side(family, res)
    cfg = config(family, "vae")
    with torch.no_grad():
        if part == "encode":
            x = torch.empty(images, cfg.get("in_channels", 3), res, res, device="meta")
            return count_flops(lambda: vae.encode(x))
        if part == "decode":
            z = torch.empty(images, cfg.get("latent_channels", 4), side, side, device="meta")
            return count_flops(lambda: vae.decode(z))
    raise ValueError(f"part must be encode or decode (got {part!r})")


def text_encoder_flops(family: str | Path, *, prompts: int = 1, backward: bool = False) -> int:
    """Every text encoder of the family on `prompts` prompts of 77 tokens; backward: plus the gradient back to the
    input embeddings (what a trained token embedding needs; the encoders' weights stay frozen)."""
    total = 0
    for part in text_encoder_parts(family):
        enc = meta_text_encoder(family, part)
        enc.requires_grad_(False)
        ids = torch.zeros(prompts, TEXT_LENGTH, dtype=torch.long, device="meta")
        if not backward:
            with torch.no_grad():
                total += count_flops(lambda: enc(input_ids=ids))
            continue
        emb = enc.get_input_embeddings()
        emb.weight.requires_grad_(True)
        out = []
        total += count_flops(lambda: out.append(enc(input_ids=ids).last_hidden_state))
        total += count_flops(lambda: out[0].float().pow(2).mean().backward())
    return total


def vision_tower_flops(family: str | Path, *, images: int = 1) -> int:
    tower = meta_vision_tower(family)
    cfg = config(family, "image_encoder")
    x = torch.empty(images, cfg.get("num_channels", 3), cfg["image_size"], cfg["image_size"], device="meta")
    with torch.no_grad():
        return count_flops(lambda: tower(pixel_values=x))


# --- parameters, gradients, optimizer state ---------------------------------------------------------------------

def parameter_counts(family: str | Path) -> dict[str, int]:
    out = {"unet": _numel(meta_unet(family)), "vae": _numel(meta_vae(family))}
    for part in text_encoder_parts(family):
        out[part] = _numel(meta_text_encoder(family, part))
    if _config(str(family), "image_encoder") is not None:
        out["image_encoder"] = _numel(meta_vision_tower(family))
    return out


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def trainable_parameters(family: str | Path, method: str, *, rank: int = 4, new_tokens: int = 1,
                         whole_matrix: bool = False) -> int:
    """Parameters the optimizer holds: the UNet's share (mark_trainable) plus, for TI and Custom Diffusion, the new
    token's row in each text encoder (boothkit's EmbeddingRows, methods/ti/model.py). whole_matrix: each text
    encoder's whole token-embedding matrix instead (with `new_tokens` added rows), as diffusers' textual_inversion.py
    and train_custom_diffusion.py optimise it (only the new rows change, but the matrix is one parameter: its
    gradient and AdamW moments are full-size)."""
    n = sum(p.numel() for p in mark_trainable(meta_unet(family), method, rank))
    if _text_trains(method):
        n += sum((int(config(family, p)["vocab_size"]) + new_tokens if whole_matrix else new_tokens)
                 * int(config(family, p)["hidden_size"]) for p in text_encoder_parts(family))
    return n


def training_bytes(family: str | Path, method: str, *, precision: str = "fp32", rank: int = 4,
                   whole_matrix: bool = False) -> dict[str, int]:
    """Memory for weights, gradients and optimizer state of a fine-tuning run (activations not included).

    fp32: every weight, gradient and AdamW moment in 4 bytes. bf16: as diffusers' scripts and boothkit's loop
    train with mixed precision: frozen weights in 2 bytes, trained weights (the master copy), their gradients and
    AdamW's two moments in 4. adam8bit: bf16 plus bitsandbytes' 8-bit AdamW, 1 byte per moment (its per-block
    statistics, under 1%, left out). The VAE and the text encoders are held, frozen, by every method.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (got {precision!r})")
    counts = parameter_counts(family)
    held = sum(v for k, v in counts.items() if k != "image_encoder")
    trained = trainable_parameters(family, method, rank=rank, whole_matrix=whole_matrix)
    new = trained if method == "lora" else 0  # LoRA's A and B are new weights
    if _text_trains(method):  # the new token's row in each text encoder's embedding
        new += sum(int(config(family, p)["hidden_size"]) for p in text_encoder_parts(family))
    frozen = held + new - trained
    frozen_bytes = 4 if precision == "fp32" else 2
    moment_bytes = 1 if precision == "adam8bit" else 4
    out = {"parameters": held + new, "trainable_parameters": trained,
           "weights_bytes": frozen * frozen_bytes + trained * 4, "gradient_bytes": trained * 4,
           "optimizer_bytes": trained * 2 * moment_bytes}
    out["total_bytes"] = out["weights_bytes"] + out["gradient_bytes"] + out["optimizer_bytes"]
    return out


# --- InstantBooth against DreamBooth ------------------------------------------------------------------------------

def dreambooth_to_first_image_flops(family: str | Path, *, steps: int, batch: int, prior: bool,
                                    class_images: int, class_sample_steps: int, sample_steps: int, photos: int = 4,
                                    flip: bool = True, resolution: int | None = None,
                                    cached: bool = True) -> dict[str, int]:
    """Full DreamBooth from photos to its first image: class images (prior preservation), `steps` training steps
    of `batch` subject images (+ as many class images), then one image of `sample_steps` guided steps. cached: the
    VAE latents of every photo and class image (both flips) and the two prompts' text are computed once
    (training/recipe.py with cfg.cache) instead of at every step."""
    step = train_step_flops(family, "dreambooth", batch=batch * (2 if prior else 1), resolution=resolution,
                            cached=cached)
    out = {"training": steps * step.total, "first_image": _one_image_flops(family, sample_steps, resolution)}
    if prior:
        out["class_images"] = class_images * _one_image_flops(family, class_sample_steps, resolution)
    if cached:
        encoded = (photos + (class_images if prior else 0)) * (2 if flip else 1)
        out["cache"] = vae_flops(family, "encode", images=encoded, resolution=resolution) \
            + text_encoder_flops(family, prompts=2 if prior else 1)
    out["total"] = sum(out.values())
    return out


def _one_image_flops(family: str | Path, sample_steps: int, resolution: int | None, instantbooth_images: int = 0):
    """Prompt and negative prompt through the text encoders, guided denoising steps, the VAE decode."""
    text = text_encoder_flops(family, prompts=2)
    decode = vae_flops(family, "decode", images=1, resolution=resolution)
    if not instantbooth_images:
        return text + sample_steps * sampling_step_flops(family, resolution=resolution) + decode
    first = sampling_step_flops(family, resolution=resolution, instantbooth_images=instantbooth_images,
                                patch_kv=True)
    rest = sampling_step_flops(family, resolution=resolution, instantbooth_images=instantbooth_images)
    return text + first + (sample_steps - 1) * rest + decode


def instantbooth_vs_dreambooth(family: str | Path, *, photos: int = 4, sample_steps: int = 20,
                               resolution: int | None = None, dreambooth: dict | None = None) -> dict:
    """The FLOPs of InstantBooth from photos to its first image (vision tower and heads on the photos, then one
    guided image with the adapters) against full DreamBooth's (`dreambooth`: keyword arguments of
    dreambooth_to_first_image_flops, default boothkit's DreamBooth recipe), and their ratio."""
    from ..methods.dreambooth.config import DreamBoothConfig

    d = DreamBoothConfig()
    recipe = {"steps": d.steps, "batch": d.batch_size, "prior": d.prior_preservation,
              "class_images": d.num_class_images, "class_sample_steps": d.class_sample_steps,
              "sample_steps": sample_steps, **(dreambooth or {})}
    db = dreambooth_to_first_image_flops(family, resolution=resolution, photos=photos, **recipe)
    ib = {**instantbooth_encode_flops(family, images=photos),
          "first_image": _one_image_flops(family, sample_steps, resolution, instantbooth_images=photos)}
    ib["total"] = sum(ib.values())
    return {"resolution": resolution or default_resolution(family), "photos": photos, "sample_steps": sample_steps,
            "dreambooth_recipe": recipe, "dreambooth_flops": db, "instantbooth_flops": ib,
            "ratio": round(db["total"] / ib["total"], 1)}


# --- encoder pretraining (InstantBooth, E4T) ---------------------------------------------------------------------

PRETRAIN_METHODS = ("instantbooth", "e4t")


def pretrain_step_flops(family: str | Path, method: str, *, batch: int, resolution: int | None = None,
                        gradient_checkpointing: bool = False, rank: int = 4) -> dict[str, int]:
    """FLOPs of one pretraining step of an encoder on `batch` dataset images, by part, as the pretraining recipes
    run it (methods/instantbooth/pretrain.py, methods/e4t/pretrain.py): the frozen CLIP vision tower on each
    image's condition, the frozen VAE encoder on its pixels (a dataset's random crops are not cached), then

    instantbooth: the text encoders forward (frozen, no gradient: the concept is injected into their output); the
    concept and patch heads forward and backward; the UNet forward with the gated adapters in every transformer
    block attending to the image's patch tokens, and backward (gradients to the adapters, the patch tokens and
    the context; no UNet weight gradient);
    e4t: the domain encoder's head forward and backward (a few small matrices: counted as part of `heads`); the
    text encoders forward and backward to the injected word; the UNet with rank-`rank` weight offsets forward and
    backward (LoRA-shaped, as mark_trainable("lora")).

    gradient_checkpointing: the UNet's forward runs twice (once more in the backward pass), as diffusers'
    checkpointing recomputes each block's activations.
    """
    if method not in PRETRAIN_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {PRETRAIN_METHODS}")
    res = resolution or default_resolution(family)
    out = {"vision_tower": vision_tower_flops(family, images=batch),
           "vae_encode": vae_flops(family, "encode", images=batch, resolution=res)}
    unet = meta_unet(family)
    if method == "instantbooth":
        out["text_forward"] = text_encoder_flops(family, prompts=batch)
        out["text_backward"] = 0
        model = _instantbooth_model(family, unet)
        vision = config(family, "image_encoder")
        embeds = torch.empty(batch, 1, int(vision["projection_dim"]), device="meta")
        tokens = torch.empty(batch, 1, _vision_tokens(family), int(vision["hidden_size"]), device="meta")
        enc = []
        heads_fwd = count_flops(lambda: enc.append(model.encode(embeds, tokens)))
        concept, patches = enc[0]
        heads_bwd = count_flops(lambda: (concept.float().sum() + patches.float().sum()).backward())
        out["heads"] = heads_fwd + heads_bwd
        unet.requires_grad_(False)
        from ..methods.instantbooth.modules import attach

        handle = attach(unet, model)
        handle.set_patches(torch.empty(batch, _vision_tokens(family), unet.config.cross_attention_dim,
                                       device="meta", requires_grad=True))
        context_grad = True
    else:
        fwd_text = text_encoder_flops(family, prompts=batch)
        out["text_forward"] = fwd_text
        out["text_backward"] = text_encoder_flops(family, prompts=batch, backward=True) - fwd_text
        # the head: LayerNorm + two linears from the CLIP features to the words' widths (methods/e4t/modules.py)
        from ..methods.e4t.config import EncoderConfig

        vision = config(family, "image_encoder")
        feats = int(vision["projection_dim"]) + int(vision["hidden_size"])
        words = sum(int(config(family, p)["hidden_size"]) for p in text_encoder_parts(family))
        hidden = EncoderConfig().hidden
        out["heads"] = 3 * 2 * batch * (feats * hidden + hidden * words)  # forward, input and weight gradients
        mark_trainable(unet, "lora", rank)
        context_grad = True
    args, kwargs = _unet_inputs(unet, batch, latent_side(family, res), context_grad=context_grad)
    res_out = []
    fwd = count_flops(lambda: res_out.append(unet(*args, **kwargs).sample))
    bwd = count_flops(lambda: res_out[0].float().pow(2).mean().backward())
    out["unet_forward"] = fwd * (2 if gradient_checkpointing else 1)
    out["unet_backward"] = bwd
    out["total"] = sum(out.values())
    return out
