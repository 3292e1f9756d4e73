"""Custom Diffusion artifact, in diffusers' formats.

- `pytorch_custom_diffusion_weights.safetensors`: '<attn2 processor name>.to_k_custom_diffusion.weight' etc.,
  the keys `unet.load_attn_procs` / `save_attn_procs` use.
- `<token>.safetensors` per modifier token: {token: [1, dim]}, read by `pipe.load_textual_inversion`.

diffusers 0.42.1's `unet.load_attn_procs` parses this file but then only installs the processors when given its
private `_pipeline` argument, and even then insists on a processor for every attention layer (safetensors cannot
store the empty self-attention entries). So `load` below installs the parsed processors itself, with diffusers'
public CustomDiffusionAttnProcessor2_0; tests check the result matches diffusers' own parser.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

WEIGHTS = "pytorch_custom_diffusion_weights.safetensors"


def embedding_file(token: str) -> str:
    return f"{token}.safetensors"


def save_parts(unet_state: dict, embeddings: dict, folder: Path) -> list[str]:
    folder = Path(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in unet_state.items()}, str(folder / WEIGHTS),
              metadata={"format": "pt"})
    files = [WEIGHTS]
    for token, vec in embeddings.items():
        save_file({token: vec.detach().cpu().reshape(1, -1).contiguous()}, str(folder / embedding_file(token)))
        files.append(embedding_file(token))
    return files


def save(recipe, folder: Path) -> dict:
    from .model import processor_state

    emb = recipe.text_encoder.get_input_embeddings().weight.detach()
    embeddings = {tok: emb[ids[0]].clone() for tok, ids in recipe.token_ids.items()}
    files = save_parts(processor_state(recipe.unet), embeddings, folder)
    return {"files": files, "train_q_out": recipe.cfg.train_q_out}


def load(pipe, folder: Path, meta: dict) -> None:
    from .model import install_processors

    folder = Path(folder)
    if getattr(pipe, "_boothkit_custom_loaded", None):
        raise ValueError(f"{folder}: a Custom Diffusion concept ({pipe._boothkit_custom_loaded}) is already loaded; "
                         "concepts trained separately must be combined with `boothkit merge` first")
    state = load_file(str(folder / WEIGHTS))
    install_processors(pipe.unet, False, state)
    for token in meta["tokens"]:
        pipe.load_textual_inversion(str(folder), weight_name=embedding_file(token), token=token)
    pipe._boothkit_custom_loaded = str(folder)


def export_webui(ctx):
    """The changed key/value projections as a LoRA (dW's SVD factors: exact, or the best fit of rank --rank) and
    each modifier token as an A1111 embedding (methods/webui.py). None when the concept also trained to_out's bias
    (train_q_out), which no LoRA holds."""
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
        files[f"embeddings/{name}"] = a1111_embedding(load_file(str(folder / embedding_file(token)))[token])
        prompt = replace_token(prompt, token, name)
    return WebuiFiles(prompt=f"{prompt} <lora:{ctx.name}:1>", files=files, metadata=metadata,
                      notes={"lora_relative_error": round(err, 8)})
