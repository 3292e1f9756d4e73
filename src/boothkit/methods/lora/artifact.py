"""LoRA artifact: `pytorch_lora_weights.safetensors` in diffusers' format (`pipe.load_lora_weights` reads it)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "pytorch_lora_weights.safetensors"


def save(recipe, folder: Path) -> dict:
    """The UNet's adapter and each trained text encoder's, through the family's save_lora_weights (SD: one text
    encoder, SDXL: text_encoder and text_encoder_2), with each adapter's config in the file's metadata."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers_and_meta(module):
        return (convert_state_dict_to_diffusers(get_peft_model_state_dict(module)),
                module.peft_config["default"].to_dict())  # rank, alpha -> scale: read back by load_lora_weights

    unet_layers, unet_meta = layers_and_meta(recipe.unet)
    text = {}
    for slot in recipe.family.slots:
        if slot.encoder in recipe.train_modules:
            layers, meta = layers_and_meta(getattr(recipe, slot.encoder))
            text[slot.lora_layers_kwarg] = layers
            text[slot.lora_layers_kwarg.replace("_lora_layers", "_lora_adapter_metadata")] = meta
    recipe.family.lora_writer().save_lora_weights(str(folder), unet_lora_layers=unet_layers, weight_name=WEIGHTS,
                                                  safe_serialization=True, unet_lora_adapter_metadata=unet_meta,
                                                  **text)
    return {"files": [WEIGHTS], "lora": {"rank": recipe.cfg.rank, "alpha": recipe.cfg.alpha}}


def load(pipe, folder: Path, meta: dict) -> str:
    """Load as a named adapter (the concept folder's name), so several LoRA concepts can be combined."""
    name = "".join(ch if ch.isalnum() else "_" for ch in Path(folder).resolve().name) or "concept"
    pipe.load_lora_weights(str(folder), weight_name=WEIGHTS, adapter_name=name)
    return name


def export_webui(ctx):
    """The LoRA in kohya's layout (methods/webui.py), as diffusers loads it into the base pipeline."""
    from ..webui import WebuiFiles, kohya_lora

    tensors, info = kohya_lora(ctx.load_base())
    key = f"lora/{ctx.name}"
    return WebuiFiles(prompt=f"{ctx.meta['prompt']} <lora:{ctx.name}:1>", files={key: tensors}, metadata={key: info})
