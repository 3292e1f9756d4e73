"""Stable Diffusion XL (Podell et al. 2023, arXiv 2307.01952): two text encoders and micro-conditioning.

Conditioning, as diffusers' StableDiffusionXLPipeline.encode_prompt and its SDXL training scripts compute it:
- the context is the PENULTIMATE hidden state of both CLIP text encoders (CLIP ViT-L 768 + OpenCLIP bigG 1280 on
  SDXL base), concatenated along the width: [B, 77, 2048];
- the pooled embedding is text_encoder_2's projected EOS embedding (`text_embeds`, [B, 1280]);
- the UNet also reads `time_ids` = (original h, w, crop top, left, target h, w) per image (§2.2 of the paper),
  embedded with the pooled text (`addition_embed_type="text_time"`);
- the VAE overflows in fp16 (its config sets force_upcast): it runs in fp32.
"""

from __future__ import annotations

import re

import torch

from .base import Family, TextConditioning, TextEncoderSlot, _device


class StableDiffusionXL(Family):
    name = "sdxl"
    label = "Stable Diffusion XL"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    slots = (
        TextEncoderSlot(encoder="text_encoder", tokenizer="tokenizer",
                        a1111_key="clip_l", kohya_prefix="lora_te1", lora_layers_kwarg="text_encoder_lora_layers"),
        TextEncoderSlot(encoder="text_encoder_2", tokenizer="tokenizer_2",
                        a1111_key="clip_g", kohya_prefix="lora_te2", lora_layers_kwarg="text_encoder_2_lora_layers",
                        file_suffix="_2"),
    )

    def vae_fp32(self, pipe) -> bool:
        return bool(getattr(pipe.vae.config, "force_upcast", True))

    def encode_ids(self, ids: list[torch.Tensor], encoders: list) -> TextConditioning:
        hidden, pooled = [], None
        for enc, i in zip(encoders, ids):
            out = enc(i.to(_device(enc)), output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds [B, P]; the last one wins, as diffusers
                pooled = out[0]
            hidden.append(out.hidden_states[-2])  # [B, L, D_i]: the penultimate layer
        return TextConditioning(torch.cat(hidden, dim=-1), pooled)

    def unet_kwargs(self, text: TextConditioning, micro: torch.Tensor | None) -> dict:
        if text.pooled is None or micro is None:
            raise ValueError("SDXL's UNet needs the pooled text embedding and the micro-conditioning (time_ids)")
        pooled = text.pooled
        return {"added_cond_kwargs": {"text_embeds": pooled,
                                      "time_ids": micro.to(pooled.device, pooled.dtype)}}  # [B, 6]

    def pipe_embeds(self, text: TextConditioning) -> dict:
        return {"prompt_embeds": text.hidden, "pooled_prompt_embeds": text.pooled}

    def kohya_unet_path(self, unet_config, path: str) -> str:
        """kohya's SDXL LoRAs name UNet modules as Stability's own (sgm) UNet does: a down block's layers are
        `input_blocks.N` (N counts conv_in, every resnet/attention layer and each downsampler), the mid block's
        attention is `middle_block.1`, an up block's layers `output_blocks.N`; inside a layer the attention module is
        `.1` and keeps diffusers' names (transformer_blocks.0.attn2.to_k). Only the transformer blocks' modules are
        mapped: they are all a LoRA, Custom Diffusion or a DreamBooth extraction touches."""
        per = unet_config.layers_per_block
        if not isinstance(per, int):
            raise ValueError(f"UNet layers_per_block={per!r} (per block): kohya's SDXL layout has one number")
        m = re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", path)
        if m:  # input_blocks.0 is conv_in; each down block: `per` layers, then its downsampler
            return f"input_blocks.{1 + int(m[1]) * (per + 1) + int(m[2])}.1.{m[3]}"
        m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", path)
        if m:  # resnet, attention, resnet
            return f"middle_block.1.{m[1]}"
        m = re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", path)
        if m:  # each up block: `per + 1` layers (the upsampler sits inside the last)
            return f"output_blocks.{int(m[1]) * (per + 1) + int(m[2])}.1.{m[3]}"
        raise ValueError(f"UNet module {path}: kohya's SDXL layout is mapped here for the transformer blocks only")
