"""E4T's two artifacts: the pretrained domain encoder (per class) and the tuned concept (per subject).

Pretrained domain encoder, a folder (assets/e4t/<class>/ ships one per world class; `boothkit pretrain e4t` writes
one for any base model and data):

    e4t_encoder.safetensors   encoder.*  the head (CLIP features -> embedding offset)
                              unet.*     the domain's weight offsets (peft LoRA tensors, adapter name dropped)
    e4t_encoder.json          encoder config and sizes, class word, what it was trained for (base model + hash,
                              family, vision tower + hash: methods.vision), preprocessing, pretraining

Tuned concept (what `tune` writes; core.tune adds concept.json), in the formats stock diffusers loaders read:

    learned_embeds.safetensors    {token: [1, D]}: the final word e = embed(class) + s * E(photos), computed once
                                  with the tuned encoder (pipe.load_textual_inversion; the TI method's file);
                                  SDXL: also learned_embeds_2.safetensors, the word in text_encoder_2 (each file
                                  loads into its encoder, as the TI method's SDXL concepts)
    pytorch_lora_weights.safetensors  the tuned weight offsets as a LoRA (pipe.load_lora_weights; the LoRA
                                  method's writer)

Why this split: the paper keeps the encoder at inference (its word depends on the timestep through UNet features).
Our encoder sees the photos only (modules.py), so its output for a subject is one fixed vector and the encoder is
not needed any more after tuning: a concept is ~1 kB of embedding plus a few hundred kB of low-rank offsets,
instead of a model per concept, and any diffusers pipeline loads it without boothkit.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from ...inputs import InputError, save_weights_folder
from ..lora import artifact as lora_artifact
from ..ti import artifact as ti_artifact
from .config import EncoderConfig
from .modules import DomainEncoder

ENCODER_WEIGHTS = "e4t_encoder.safetensors"
ENCODER_META = "e4t_encoder.json"
FORMAT = "boothkit-e4t-encoder"


# --- the pretrained domain encoder ----------------------------------------------------------------------------
def is_encoder(folder: str | Path) -> bool:
    return (Path(folder) / ENCODER_META).is_file() and (Path(folder) / ENCODER_WEIGHTS).is_file()


def resolve_encoder(path: str, class_noun: str, model: str = "world") -> Path:
    """`path` if given, else the encoder shipped for the class noun on base model `model` (boothkit.encoders); an
    InputError saying what to do when there is none."""
    if path:
        read_encoder_meta(path)
        return Path(path)
    from ...encoders import shipped_e4t

    return Path(shipped_e4t(class_noun, model).path)


def read_encoder_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not is_encoder(folder):
        raise InputError(f"e4t encoder {folder}: not a pretrained E4T encoder (needs {ENCODER_META} and "
                         f"{ENCODER_WEIGHTS}; make one with `boothkit pretrain e4t`)")
    try:
        meta = json.loads((folder / ENCODER_META).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"e4t encoder {folder}: {ENCODER_META} is not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise InputError(f"e4t encoder {folder}: {ENCODER_META} has format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}")
    return meta


def save_encoder(encoder: DomainEncoder, offsets: dict[str, torch.Tensor], folder: str | Path,
                 meta: dict | None = None) -> Path:
    """Write a pretrained encoder to `folder` atomically (replacing an older E4T encoder there, nothing else).

    offsets: the UNet's weight offsets as peft names them without the adapter (get_peft_model_state_dict).
    """
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors.update({f"unet.{k}": v for k, v in offsets.items()})
    return save_weights_folder(folder, tensors, meta, encoder.cfg.to_dict(), encoder.dims, weights=ENCODER_WEIGHTS,
                               meta_file=ENCODER_META, fmt=FORMAT, kind="an E4T encoder", is_ours=is_encoder)


def load_encoder(folder: str | Path) -> tuple[DomainEncoder, dict[str, torch.Tensor], dict]:
    """-> (encoder head on the CPU, weight offsets {peft name: tensor}, json)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_encoder_meta(folder)
    encoder = DomainEncoder(EncoderConfig.from_dict(meta["config"]), meta["dims"])
    tensors = load_file(str(folder / ENCODER_WEIGHTS))
    head = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    offsets = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
    want = set(encoder.state_dict())
    if set(head) != want or not offsets or len(head) + len(offsets) != len(tensors):
        raise InputError(f"e4t encoder {folder}: {ENCODER_WEIGHTS} does not match its {ENCODER_META} "
                         f"(missing {sorted(want - set(head))[:3]})")
    encoder.load_state_dict(head)
    return encoder, offsets, meta


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# --- the tuned concept ------------------------------------------------------------------------------------------
def save(recipe, folder: Path) -> dict:
    """Write the final word (one textual-inversion file per text encoder of the family: SD learned_embeds, SDXL
    also learned_embeds_2) and the tuned weight offsets (LoRA file) into folder."""
    from safetensors.torch import save_file

    token = recipe.subjects[0].token
    words = [w.detach().to("cpu", torch.float32).reshape(1, -1).contiguous() for w in recipe.word()]  # [1, D_i]
    files = []
    for slot, word in zip(recipe.family.slots, words):
        save_file({token: word}, str(Path(folder) / slot.ti_weights))
        files.append(slot.ti_weights)
    enc = recipe.encoder.cfg
    # the LoRA writer reads unet, train_modules and cfg.rank / cfg.alpha; the offsets' shape is the encoder's
    lora = lora_artifact.save(SimpleNamespace(unet=recipe.unet, train_modules=("unet",), family=recipe.family,
                                              cfg=SimpleNamespace(rank=enc.rank, alpha=enc.alpha)), folder)
    return {"files": [*files, *lora["files"]], "lora": lora["lora"],
            "e4t": {"encoder": str(recipe.encoder_path),
                    "encoder_sha256": _sha256(recipe.encoder_path / ENCODER_WEIGHTS),
                    "encoder_class": recipe.encoder_meta.get("class"),
                    "class_word": recipe.class_word, "offset_norm": round(float(recipe.offset().detach().norm()), 5),
                    "word_norm": round(float(torch.cat(words, -1).norm()), 5)}}


def load(pipe, folder: Path, meta: dict) -> str:
    """The word through load_textual_inversion, the weight offsets through load_lora_weights (named adapter),
    recorded in `pipe.e4t_adapters`: several E4T concepts share their domain's pretrained offsets, so
    apply_concepts (methods/core.py), which activates every adapter it loaded, weights them 1/k each (the domain
    part applied once, each subject's tuned part at 1/k) instead of adding the domain offsets k times."""
    ti_artifact.load(pipe, folder, meta)
    name = lora_artifact.load(pipe, folder, meta)
    pipe.e4t_adapters = [*getattr(pipe, "e4t_adapters", []), name]
    return name


def export_webui(ctx):
    """The tuned word as an A1111 embedding and the weight offsets as a kohya LoRA (methods/webui.py)."""
    from ..webui import WebuiFiles, kohya_lora

    words = ti_artifact.export_webui(ctx)
    tensors, info = kohya_lora(ctx.load_base())
    return WebuiFiles(prompt=f"{words.prompt} <lora:{ctx.name}:1>",
                      files={**words.files, f"lora/{ctx.name}": tensors}, metadata={f"lora/{ctx.name}": info})
