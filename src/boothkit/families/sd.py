"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, its last hidden state as the cross-attention context."""

from __future__ import annotations

from .base import Family, TextEncoderSlot


class StableDiffusion(Family):
    name = "sd"
    label = "Stable Diffusion 1.x/2.x"
    pipeline_classes = ("StableDiffusionPipeline",)
    slots = (TextEncoderSlot(encoder="text_encoder", tokenizer="tokenizer", a1111_key="emb_params",
                             kohya_prefix="lora_te", lora_layers_kwarg="text_encoder_lora_layers"),)

    def load_kwargs(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}
