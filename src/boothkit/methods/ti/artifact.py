"""Textual Inversion artifact: one file per text encoder, {token: [n_vectors, dim]}, as diffusers' scripts write it.

SD: `learned_embeds.safetensors` (train_textual_inversion.py). SDXL: `learned_embeds.safetensors` for text_encoder and
`learned_embeds_2.safetensors` for text_encoder_2 (train_textual_inversion_sdxl.py); the family's slots name the
files (`slot.ti_weights`). Each is read by `pipe.load_textual_inversion(file, token=..., text_encoder=...,
tokenizer=...)` into its encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "learned_embeds.safetensors"  #: the first text encoder's file (SD's only one)


def token_embeddings(recipe, token: str, slot_index: int = 0) -> torch.Tensor:
    """The trained vectors of `token` in one text encoder: [n, D]."""
    slot = recipe.family.slots[slot_index]
    emb = getattr(recipe, slot.encoder).get_input_embeddings().weight.detach()
    return emb[recipe.slot_vectors[slot_index][token]].clone().cpu().contiguous()


def save(recipe, folder: Path) -> dict:
    token = recipe.subjects[0].token
    files = []
    for i, slot in enumerate(recipe.family.slots):
        save_file({token: token_embeddings(recipe, token, i)}, str(Path(folder) / slot.ti_weights))
        files.append(slot.ti_weights)
    return {"files": files, "num_vectors": recipe.cfg.num_vectors}


def load(pipe, folder: Path, meta: dict) -> None:
    """Each text encoder's file into that encoder (diffusers' loader; multi-vector tokens become <t>, <t>_1, ...)."""
    from ...families import family_of

    for slot in family_of(pipe).slots:
        pipe.load_textual_inversion(str(folder), weight_name=slot.ti_weights, token=meta["tokens"][0],
                                    text_encoder=getattr(pipe, slot.encoder), tokenizer=getattr(pipe, slot.tokenizer))


def vectors_per_encoder(folder: Path, family, token: str) -> list[torch.Tensor]:
    """The concept's vectors of `token`, one [n, dim] tensor per text encoder (slot order)."""
    from ...inputs import InputError

    out = []
    for slot in family.slots:
        path = Path(folder) / slot.ti_weights
        if not path.is_file():
            raise InputError(f"{path}: missing ({family.label} concepts have one embedding file per text encoder)")
        tensors = load_file(str(path))
        if token not in tensors:
            raise InputError(f"{path}: has no embedding for the concept's token {token!r}")
        out.append(tensors[token])
    return out


def export_webui(ctx):
    """The learned vectors as an A1111 embedding (methods/webui.py: SD {"emb_params"}, SDXL {"clip_l", "clip_g"}); its
    file name replaces the token in prompts."""
    from ..webui import WebuiFiles, a1111_embedding, replace_token

    token = ctx.meta["tokens"][0]
    vectors = vectors_per_encoder(ctx.folder, ctx.family, token)  # [n_vectors, dim] per encoder
    return WebuiFiles(prompt=replace_token(ctx.meta["prompt"], token, ctx.name),
                      files={f"embeddings/{ctx.name}": a1111_embedding(vectors, ctx.family)})
