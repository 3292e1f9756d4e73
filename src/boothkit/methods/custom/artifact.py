"""Custom Diffusion artifact, in diffusers' formats.

- `pytorch_custom_diffusion_weights.safetensors`: '<attn2 processor name>.to_k_custom_diffusion.weight' etc.,
  the keys `unet.load_attn_procs` / `save_attn_procs` use.
- `<token>.safetensors` per modifier token: {token: [1, dim]}, read by `pipe.load_textual_inversion`; on SDXL one
  file per text encoder, named as diffusers' SDXL scripts name per-encoder files (`<new1>.safetensors` for
  text_encoder, `<new1>_2.safetensors` for text_encoder_2: `slot.file_name`), each loaded with
  `load_textual_inversion(file, token=..., text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)`.

diffusers 0.42.1's `unet.load_attn_procs` parses this file but then only installs the processors when given its
private `_pipeline` argument, and even then insists on a processor for every attention layer (safetensors cannot
store the empty self-attention entries). So `load` below installs the parsed processors itself, with diffusers'
public CustomDiffusionAttnProcessor2_0; tests check the result matches diffusers' own parser.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"


def embedding_file(token: str, slot) -> str:
    """The file of a modifier token's embedding in one text encoder (a family slot): "<new1>.safetensors" for the
    first (SD's only one), "<new1>_2.safetensors" for SDXL's text_encoder_2."""
    return slot.file_name(token)


def save_parts(unet_state: dict, embeddings: dict[str, list[torch.Tensor]], folder: Path, family) -> list[str]:
    """Write the K/V weights and each token's embeddings: {token: one [dim] tensor per text encoder of the family,
    in slot order}."""
    folder = Path(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in unet_state.items()}, str(folder / WEIGHTS),
              metadata={"format": "pt"})
    files = [WEIGHTS]
    for token, vecs in embeddings.items():
        if len(vecs) != len(family.slots):
            raise ValueError(f"{token}: {len(vecs)} embeddings for the {len(family.slots)} text encoders")
        for slot, vec in zip(family.slots, vecs):
            name = embedding_file(token, slot)
            save_file({token: vec.detach().cpu().reshape(1, -1).contiguous()}, str(folder / name))
            files.append(name)
    return files


def load_embeddings(folder: Path, family, token: str) -> list[torch.Tensor]:
    """A modifier token's trained embedding in each text encoder of the family: one [dim] tensor per slot."""
    from ...inputs import InputError

    out = []
    for slot in family.slots:
        path = Path(folder) / embedding_file(token, slot)
        if not path.is_file():
            raise InputError(f"{path}: missing (the embedding of {token} in {slot.encoder})")
        tensors = load_file(str(path))
        if token not in tensors:
            raise InputError(f"{path}: has no embedding for {token!r}")
        out.append(tensors[token].reshape(-1))
    return out


def save(recipe, folder: Path) -> dict:
    from .model import processor_state

    embeddings = {}  # token -> its row in each text encoder
    for token in (s.token for s in recipe.subjects):
        embeddings[token] = [getattr(recipe, slot.encoder).get_input_embeddings().weight.detach()[ids[token][0]]
                             .clone() for slot, ids in zip(recipe.family.slots, recipe.slot_token_ids)]
    files = save_parts(processor_state(recipe.unet), embeddings, folder, recipe.family)
    return {"files": files, "train_q_out": recipe.cfg.train_q_out}


def load(pipe, folder: Path, meta: dict) -> None:
    from ...families import family_of
    from .model import install_processors

    folder = Path(folder)
    if getattr(pipe, "_boothkit_custom_loaded", None):
        raise ValueError(f"{folder}: a Custom Diffusion concept ({pipe._boothkit_custom_loaded}) is already loaded; "
                         "concepts trained separately must be combined with `boothkit merge` first")
    state = load_file(str(folder / WEIGHTS))
    install_processors(pipe.unet, False, state)
    for token in meta["tokens"]:
        for slot in family_of(pipe).slots:
            pipe.load_textual_inversion(str(folder), weight_name=embedding_file(token, slot), token=token,
                                        text_encoder=getattr(pipe, slot.encoder),
                                        tokenizer=getattr(pipe, slot.tokenizer))
    pipe._boothkit_custom_loaded = str(folder)


def export_webui(ctx):
    """The changed key/value projections as a LoRA (dW's SVD factors: exact, or the best fit of rank --rank) and
    each modifier token as an A1111 embedding (methods/webui.py; SDXL: clip_l and clip_g). None when the concept also
    trained to_out's bias (train_q_out), which no LoRA holds."""
    from ..webui import WebuiFiles, a1111_embedding, lowrank_lora, replace_token

    folder = Path(ctx.folder)
    state = load_file(str(folder / WEIGHTS))
    if any(k.endswith(".bias") for k in state):
        return None
    pipe = ctx.load_base()
    unet = pipe.unet  # its own projections are the base's: the concept lives in the processors
    deltas = {}
    for key, w in state.items():  # '<...>.attn2.processor.to_k_custom_diffusion.weight'
        proc, param = key.rsplit(".processor.", 1)
        layer = param.replace("_custom_diffusion", "").removesuffix(".weight")  # to_k, to_v (to_q, to_out.0)
        base = unet.get_submodule(f"{proc}.{layer}").weight
        deltas[f"unet.{proc}.{layer}"] = w.to(base.dtype) - base.detach()
    tensors, info, err = lowrank_lora(pipe, deltas, rank=ctx.options.get("rank") or 0)
    tokens = ctx.meta["tokens"]
    names = [ctx.name] + [f"{ctx.name}-{i + 1}" for i in range(1, len(tokens))]
    classes = ctx.meta.get("classes") or [ctx.meta.get("class", "")] * len(tokens)
    prompt = "a photo of " + " and ".join(f"{t} {c}".strip() for t, c in zip(tokens, classes))  # every subject
    files, metadata = {f"lora/{ctx.name}": tensors}, {f"lora/{ctx.name}": info}
    for token, name in zip(tokens, names):
        files[f"embeddings/{name}"] = a1111_embedding(load_embeddings(folder, ctx.family, token), ctx.family)
        prompt = replace_token(prompt, token, name)
    return WebuiFiles(prompt=f"{prompt} <lora:{ctx.name}:1>", files=files, metadata=metadata,
                      notes={"lora_relative_error": round(err, 8)})
