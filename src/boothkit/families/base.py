"""What every base-model family provides: the one interface methods and the training core call.

A family knows its pipeline class, its text encoders and how a prompt becomes the UNet's conditioning. Methods
never ask which family they run on: they ask the family (`family_of(pipe)`) for token ids, text conditioning, the
UNet's extra inputs and the file layouts of its loaders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextEncoderSlot:
    """One (tokenizer, text encoder) pair of a pipeline and how its files name it."""

    encoder: str  #: pipeline attribute of the text encoder: "text_encoder", "text_encoder_2"
    tokenizer: str  #: pipeline attribute of its tokenizer: "tokenizer", "tokenizer_2"
    a1111_key: str  #: key of this encoder's vectors in an AUTOMATIC1111 embedding file ("emb_params", "clip_l", ...)
    kohya_prefix: str  #: kohya LoRA key prefix of this encoder ("lora_te", "lora_te1", "lora_te2")
    lora_layers_kwarg: str  #: save_lora_weights' argument for this encoder's LoRA layers
    #: suffix of this encoder's per-encoder files ("" for the first, "_2" for SDXL's second), as diffusers' SDXL
    #: scripts name them (learned_embeds.safetensors, learned_embeds_2.safetensors)
    file_suffix: str = ""

    @property
    def ti_weights(self) -> str:
        """This encoder's Textual Inversion file, as diffusers' training scripts name it (learned_embeds[_2])."""
        return self.file_name("learned_embeds")

    def file_name(self, stem: str, ext: str = ".safetensors") -> str:
        """This encoder's file of a per-encoder artifact: "<new1>" -> "<new1>.safetensors", "<new1>_2.safetensors"."""
        return f"{stem}{self.file_suffix}{ext}"


@dataclass
class TextConditioning:
    """A batch of prompts as the UNet reads them."""

    hidden: torch.Tensor  #: [B, L, D] the cross-attention context (SDXL: both encoders' penultimate states, concatenated)
    pooled: torch.Tensor | None = None  #: [B, P] SDXL's pooled text embedding (text_encoder_2's projection); SD: None

    def rows(self, index) -> "TextConditioning":
        """The conditioning of some prompts of the batch (an index or slice along B)."""
        return TextConditioning(self.hidden[index], None if self.pooled is None else self.pooled[index])

    @staticmethod
    def cat(parts: list["TextConditioning"]) -> "TextConditioning":
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return TextConditioning(torch.cat([p.hidden for p in parts]), pooled)


class Family:
    """Base class: SD-1.x/2.x behaviour; a family overrides what differs."""

    name: str = ""  #: "sd", "sdxl": recorded in concept.json and artifacts
    label: str = ""  #: for people: "Stable Diffusion 1.x/2.x"
    pipeline_classes: tuple[str, ...] = ()  #: model_index.json `_class_name` values of this family (first: the one loaded)
    slots: tuple[TextEncoderSlot, ...] = ()

    # --- loading ---------------------------------------------------------------------------------------------
    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_classes[0])

    def load_kwargs(self) -> dict:
        """Extra from_pretrained arguments for this family's pipeline class."""
        return {}

    def matches(self, pipe) -> bool:
        return type(pipe).__name__ in self.pipeline_classes or any(
            c.__name__ in self.pipeline_classes for c in type(pipe).__mro__)

    # --- shapes ----------------------------------------------------------------------------------------------
    def default_resolution(self, pipe) -> int:
        """The image side the UNet was made for: sample_size x the VAE's downscale (SD-1.5: 512, SDXL: 1024)."""
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def context_dim(self, pipe) -> int:
        """Width of the UNet's cross-attention context (the text conditioning's D)."""
        return int(pipe.unet.config.cross_attention_dim)

    def latent_channels(self, pipe) -> int:
        return int(pipe.unet.config.in_channels)

    def vae_fp32(self, pipe) -> bool:
        """Whether the VAE must run in fp32 (SDXL's VAE overflows in fp16: its config says force_upcast)."""
        return False

    # --- text ------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> list:
        """The pipeline's text encoder modules, in slot order."""
        return [getattr(pipe, s.encoder) for s in self.slots]

    def tokenizers(self, pipe) -> list:
        return [getattr(pipe, s.tokenizer) for s in self.slots]

    def token_ids(self, pipe, prompts: list[str]) -> list[torch.Tensor]:
        """[B] prompts -> one [B, L] id tensor per slot, padded to each tokenizer's length (truncated)."""
        out = []
        for tok in self.tokenizers(pipe):
            out.append(tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                           return_tensors="pt").input_ids)
        return out

    def encode_ids(self, ids: list[torch.Tensor], encoders: list) -> TextConditioning:
        """Token ids (one tensor per slot) through the text encoders (callables: possibly accelerate-wrapped).
        SD: the last hidden state of its one encoder."""
        (enc,), (i,) = encoders, ids
        return TextConditioning(enc(i.to(_device(enc)))[0])

    def encode_prompts(self, pipe, prompts: list[str], encoders: list | None = None) -> TextConditioning:
        """[B] prompts -> their conditioning, as the family's pipeline computes it for a positive prompt."""
        return self.encode_ids(self.token_ids(pipe, prompts), encoders or self.text_encoders(pipe))

    def text_width(self, pipe) -> int:
        """D of TextConditioning.hidden (what replaces a token's output, e.g. InstantBooth's concept embedding)."""
        return sum(int(e.config.hidden_size) for e in self.text_encoders(pipe))

    # --- the UNet --------------------------------------------------------------------------------------------
    def unet_kwargs(self, text: TextConditioning, micro: torch.Tensor | None) -> dict:
        """Extra keyword arguments of the UNet's forward for a batch: SD none; SDXL added_cond_kwargs.
        micro: [B, 6] (original h, w, crop top, left, target h, w) per image, or None (SD ignores it)."""
        return {}

    def pipe_embeds(self, text: TextConditioning) -> dict:
        """pipe(...) arguments that pass precomputed conditioning instead of a prompt."""
        return {"prompt_embeds": text.hidden}

    # --- files -----------------------------------------------------------------------------------------------
    def lora_writer(self):
        """The pipeline class whose save_lora_weights writes this family's LoRA file."""
        return self.pipeline_class()

    def kohya_unet_path(self, unet_config, path: str) -> str:
        """A UNet module path (diffusers' names, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
        as LoRA files made by kohya's scripts name it, before "." becomes "_". SD: diffusers' own names (kohya trains
        SD 1.x/2.x on a UNet with diffusers' module names)."""
        return path


def _device(module) -> torch.device:
    """Where a (possibly wrapped) module's parameters live."""
    return next(module.parameters()).device


def micro_conditioning(original: tuple[int, int], crop_top_left: tuple[int, int], target: tuple[int, int]
                       ) -> list[int]:
    """SDXL's size and crop conditioning of one training image (Podell et al. 2023, §2.2), as diffusers' SDXL
    training scripts compute it: (original h, w) of the photo, (top, left) of the crop in the resized photo,
    (target h, w)."""
    return [int(original[0]), int(original[1]), int(crop_top_left[0]), int(crop_top_left[1]), int(target[0]),
            int(target[1])]
