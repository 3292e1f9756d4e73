"""Full DreamBooth artifact: the concept folder is a complete diffusers pipeline folder (plus concept.json).

The base model's pipeline class (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`) `.from_pretrained(concept_dir)`
loads it directly; boothkit's loader swaps the fine-tuned
UNet (and text encoder, when trained) into an already loaded base pipeline.
"""

from __future__ import annotations

from pathlib import Path


def save(recipe, folder: Path) -> dict:
    recipe.pipe.save_pretrained(str(folder), safe_serialization=True)
    files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    return {"files": files, "trained_modules": list(recipe.train_modules)}


def module_state(folder: Path, name: str) -> dict:
    """The fine-tuned weights of one pipeline module (unet, text_encoder, text_encoder_2): every safetensors file of
    its folder."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted((Path(folder) / name).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def load(pipe, folder: Path, meta: dict) -> None:
    for name in meta.get("trained_modules", ["unet"]):
        module = getattr(pipe, name)
        state = module_state(folder, name)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}/{name}: weights do not match the base model's {name} "
                             f"(missing {len(missing)}, unexpected {len(unexpected)})")
        module.to(pipe.device, pipe.dtype)


def export_webui(ctx):
    """A LoRA extracted from the fine-tuned weights (methods/webui.py), as kohya's extract_lora_from_models does:
    the changes of the UNet transformer blocks' linear layers (and each trained text encoder's: SDXL's two), fitted
    at the export's rank, in the family's kohya names. export.json says how much of the whole change that leaves
    out."""
    from ...inputs import InputError
    from ..webui import DREAMBOOTH_RANK, WebuiFiles, lowrank_lora

    base = ctx.load_plain()
    deltas, total2, kept2 = {}, 0.0, 0.0
    for name in ctx.meta.get("trained_modules", ["unet"]):
        module = getattr(base, name)
        plain = module.state_dict()
        for key, w in module_state(ctx.folder, name).items():
            b = plain.get(key)
            if b is None or b.shape != w.shape:
                raise InputError(f"{ctx.folder}/{name}: {key} does not match the base model's {name}")
            d = w.double() - b.double()
            n2 = float((d ** 2).sum())
            total2 += n2
            path = key.rsplit(".", 1)[0]
            if n2 == 0 or not key.endswith(".weight") or not _lora_layer(name, path, module):
                continue
            deltas[f"{name}.{path}"] = d
            kept2 += n2
    if not deltas:
        raise InputError(f"{ctx.folder}: no linear layer of the transformer blocks changed; nothing to extract")
    tensors, info, err = lowrank_lora(base, deltas, rank=DREAMBOOTH_RANK if ctx.options.get("rank") is None
                                      else ctx.options["rank"])
    token, cls = ctx.meta["tokens"][0], ctx.meta.get("class", "")
    return WebuiFiles(prompt=f"{ctx.meta['prompt']} <lora:{ctx.name}:1>", files={f"lora/{ctx.name}": tensors},
                      metadata={f"lora/{ctx.name}": info},
                      notes={"lora_relative_error": round(err, 6),
                             "change_outside_the_lora": round(((total2 - kept2) / total2) ** 0.5 if total2 else 0.0,
                                                              6),
                             "extracted_from": f"full DreamBooth ({token} {cls})".strip()})


def _lora_layer(module_name: str, path: str, module) -> bool:
    """A linear layer kohya's LoRA covers: in the UNet's transformer blocks (attention, feed-forward, projections);
    in a text encoder's attention and MLP (not SDXL's text_projection)."""
    import torch

    layer = module.get_submodule(path)
    if not isinstance(layer, torch.nn.Linear):
        return False
    if module_name == "unet":
        return ".attentions." in f".{path}"
    return ".self_attn." in path or ".mlp." in path
