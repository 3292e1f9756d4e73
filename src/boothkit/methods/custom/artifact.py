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
