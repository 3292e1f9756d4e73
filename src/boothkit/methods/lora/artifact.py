"""LoRA artifact: `pytorch_lora_weights.safetensors` in diffusers' format (`pipe.load_lora_weights` reads it)."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = "pytorch_lora_weights.safetensors"


def save(recipe, folder: Path) -> dict:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(recipe.unet))
    # the adapter config (rank, alpha -> scale) goes into the file's metadata, where load_lora_weights reads it
    unet_meta = recipe.unet.peft_config["default"].to_dict()
    text_layers = text_meta = None
    if "text_encoder" in recipe.train_modules:
        text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(recipe.text_encoder))
        text_meta = recipe.text_encoder.peft_config["default"].to_dict()
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=unet_layers,
                                              text_encoder_lora_layers=text_layers, weight_name=WEIGHTS,
                                              safe_serialization=True, unet_lora_adapter_metadata=unet_meta,
                                              text_encoder_lora_adapter_metadata=text_meta)
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
