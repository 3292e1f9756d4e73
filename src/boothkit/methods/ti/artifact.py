"""Textual Inversion artifact: `learned_embeds.safetensors` = {token: [n_vectors, dim]} (pipe.load_textual_inversion)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

WEIGHTS = "learned_embeds.safetensors"


def token_embeddings(recipe, token: str) -> torch.Tensor:
    emb = recipe.text_encoder.get_input_embeddings().weight.detach()
    return emb[recipe.vectors[token]].clone().cpu().contiguous()  # [n, D]


def save(recipe, folder: Path) -> dict:
    token = recipe.subjects[0].token
    save_file({token: token_embeddings(recipe, token)}, str(Path(folder) / WEIGHTS))
    return {"files": [WEIGHTS], "num_vectors": recipe.cfg.num_vectors}


def load(pipe, folder: Path, meta: dict) -> None:
    pipe.load_textual_inversion(str(folder), weight_name=WEIGHTS, token=meta["tokens"][0])


def export_webui(ctx):
    """The learned vectors as an A1111 embedding (methods/webui.py); its file name replaces the token in prompts."""
    from safetensors.torch import load_file

    from ..webui import WebuiFiles, a1111_embedding, replace_token

    token = ctx.meta["tokens"][0]
    vectors = load_file(str(Path(ctx.folder) / WEIGHTS))[token]  # [n_vectors, dim]
    return WebuiFiles(prompt=replace_token(ctx.meta["prompt"], token, ctx.name),
                      files={f"embeddings/{ctx.name}": a1111_embedding(vectors)})
