"""Full DreamBooth artifact: the concept folder is a complete diffusers pipeline folder (plus concept.json).

`StableDiffusionPipeline.from_pretrained(concept_dir)` loads it directly; boothkit's loader swaps the fine-tuned
UNet (and text encoder, when trained) into an already loaded base pipeline.
"""

from __future__ import annotations

from pathlib import Path


def save(recipe, folder: Path) -> dict:
    recipe.pipe.save_pretrained(str(folder), safe_serialization=True)
    files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    return {"files": files, "trained_modules": list(recipe.train_modules)}


def load(pipe, folder: Path, meta: dict) -> None:
    from safetensors.torch import load_file

    for name in meta.get("trained_modules", ["unet"]):
        module = getattr(pipe, name)
        files = sorted((Path(folder) / name).glob("*.safetensors"))
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}/{name}: weights do not match the base model's {name} "
                             f"(missing {len(missing)}, unexpected {len(unexpected)})")
        module.to(pipe.device, pipe.dtype)
