"""`boothkit export`: a concept in the files AUTOMATIC1111, ComfyUI, SD.Next and InvokeAI read ("webui" format).

    lora/<name>.safetensors        LoRA weights (the LoRA method, E4T's weight offsets) in kohya's layout:
                                   `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha` (and
                                   `lora_te_<module>...` for a text-encoder LoRA). Converted by diffusers'
                                   `convert_state_dict_to_kohya` from the PEFT state dict that diffusers' own loader
                                   builds from the concept's file, so what is exported is what `generate --concept`
                                   draws with. The alpha is the concept's (kohya scales by alpha / rank).
    embeddings/<name>.safetensors  a token embedding (Textual Inversion, E4T's word) as A1111 saves one:
                                   {"emb_params": [n_vectors, dim]}; the webui's trigger word is the file's name.
    export.json                    what was exported, from which concept and base model, and the prompt to use.

Custom Diffusion's changed key/value projections become a LoRA too: each change dW = W_custom - W_base as the
factors of its SVD (`lowrank_lora`: every non-zero singular value, so the change itself up to float error, or with
--rank the best fit of that rank, its error in export.json); each modifier token becomes an embedding (<name>,
<name>-2, ... when there are several).

A full DreamBooth concept becomes a LoRA extracted from it, as kohya's extract_lora_from_models does: the changes of
the transformer blocks' and text encoder's linear layers, fitted at rank DREAMBOOTH_RANK (or --rank); what that
leaves out (convolutions, norms, biases, embeddings, and the fit's residual) is measured in export.json.

Each method says what it exports in its artifact.py (`export_webui`, the MethodSpec's `export`). InstantBooth
concepts have no file of these kinds; `EXPORT_HINTS` says what to do instead.
The output folder is written staged and renamed into place: on any error nothing is left behind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..inputs import InputError, read_concept, staged_folder

FORMAT = "webui"
DREAMBOOTH_RANK = 64  #: default rank of a LoRA extracted from a full DreamBooth concept (a common kohya choice)
EXPORT_FILE = "export.json"

#: why a method has no webui export, and what to use instead
EXPORT_HINTS = {
    "custom": "this Custom Diffusion concept also trained the output projection's bias (train_q_out), which a "
              "webui LoRA cannot hold; use it with diffusers (boothkit generate --concept)",
    "instantbooth": "InstantBooth's adapters are attention processors that no webui loads; use boothkit generate "
                    "--concept, or install_instantbooth() on a diffusers pipeline",
}


@dataclass
class ExportContext:
    """What a method's `export_webui` gets: the concept, the export name, and the base pipeline on demand."""

    folder: Path
    meta: dict
    name: str
    load_base: Callable[[], object]  #: a fresh base pipeline with the concept applied; loaded when called
    load_plain: Callable[[], object]  #: a fresh base pipeline as it is (the concept's model, or --model)
    options: dict = field(default_factory=dict)  #: {"rank": r or None}: the LoRA rank of a fit (0: exact)


@dataclass
class WebuiFiles:
    """What a method exports: tensors per file, keyed "lora/NAME" or "embeddings/NAME" (folder/stem, ".safetensors"
    is added), and the prompt that uses them."""

    prompt: str
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  #: safetensors metadata per file key
    notes: dict = field(default_factory=dict)  #: anything export.json should say about the conversion


def a1111_embedding(vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """[n_vectors, dim] (or [dim]) -> A1111's safetensors embedding."""
    return {"emb_params": vectors.detach().to("cpu", torch.float32).reshape(-1, vectors.shape[-1]).contiguous()}


def lowrank_lora(deltas: dict[str, torch.Tensor], rank: int = 0, rtol: float = 1e-6
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str], float]:
    """Weight changes {"unet.<module path>": dW [out, in]} as a kohya LoRA: dW ~ up @ down from its SVD (Eckart-Young:
    the best rank-r fit), as kohya's extract_lora_from_models does. rank 0: every singular value above rtol * the
    largest (the change itself, to float error), so modules may differ in rank.

    One alpha for every module (the largest rank), the webui's scale alpha / rank_m folded back into each `up`, so
    up @ down * alpha / rank_m is the fit: loaders that mishandle per-module alphas (diffusers 0.42.1 drops some of
    a kohya file's alpha pattern) then still draw the same.
    -> (tensors, safetensors metadata, relative error ||dW - fit||_F / ||dW||_F over all modules)
    """
    from diffusers.utils import convert_state_dict_to_kohya

    fits, err2, norm2 = {}, 0.0, 0.0
    for path, dw in deltas.items():
        dw = dw.detach().to("cpu", torch.float64)
        u, sv, vh = torch.linalg.svd(dw, full_matrices=False)  # dw = u diag(sv) vh
        r = int((sv > rtol * sv[0]).sum()) if float(sv[0]) > 0 else 1
        r = max(1, min(r, rank) if rank else r)
        up, down = u[:, :r] * sv[:r], vh[:r]  # [out, r], [r, in]
        err2 += float(((dw - up @ down) ** 2).sum())
        norm2 += float((dw ** 2).sum())
        fits[path] = (up, down)
    alpha = max(d.shape[0] for _, d in fits.values())
    peft = {}
    for path, (up, down) in fits.items():
        peft[f"{path}.lora_A.weight"] = down.float().contiguous()
        peft[f"{path}.lora_B.weight"] = (up * (down.shape[0] / alpha)).float().contiguous()
    tensors = {_sd1_name(k): (torch.tensor(float(alpha)) if k.endswith(".alpha") else v.contiguous())
               for k, v in convert_state_dict_to_kohya(peft).items()}
    ranks = sorted({d.shape[0] for _, d in fits.values()})
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(alpha), "ss_network_alpha": str(alpha),
            "boothkit_lora_ranks": json.dumps(ranks)}
    return tensors, meta, (err2 / norm2) ** 0.5 if norm2 else 0.0


def kohya_lora(pipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The one LoRA adapter loaded into `pipe` (UNet and, if any, text encoder) in kohya's layout, with alphas.

    -> (tensors, safetensors metadata in kohya's `ss_*` names)
    """
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict

    peft, alphas, ranks = {}, {}, set()
    for prefix, kohya_prefix, module in (("unet", "lora_unet_", pipe.unet), ("text_encoder", "lora_te1_",
                                                                              pipe.text_encoder)):
        configs = getattr(module, "peft_config", None) or {}
        if len(configs) > 1:
            raise InputError(f"export: the {prefix} carries {len(configs)} LoRA adapters; export one concept at a "
                             "time")
        for adapter, cfg in configs.items():
            if getattr(cfg, "rank_pattern", None) or getattr(cfg, "alpha_pattern", None):
                raise InputError("export: per-module LoRA ranks or alphas are not supported by this export")
            part = get_peft_model_state_dict(module, adapter_name=adapter)
            peft.update({f"{prefix}.{k}": v for k, v in part.items()})
            alphas[kohya_prefix], ranks = float(cfg.lora_alpha), ranks | {int(cfg.r)}
    if not peft:
        raise InputError("export: the concept loaded no LoRA weights")
    tensors = {}
    for key, value in convert_state_dict_to_kohya(peft).items():
        prefix = next(p for p in alphas if key.startswith(p))
        if key.endswith(".alpha"):  # diffusers writes alpha = rank (scale 1); kohya's scale is alpha / rank
            value = torch.tensor(alphas[prefix])
        tensors[_sd1_name(key)] = value.detach().to("cpu", torch.float32).contiguous()
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(max(ranks)),
            "ss_network_alpha": str(alphas.get("lora_unet_", next(iter(alphas.values()))))}
    return tensors, meta


def _sd1_name(key: str) -> str:
    """Text-encoder keys as kohya's scripts write them for SD 1.x/2.x: `lora_te_text_model_encoder_layers_...`.

    SD 1.x/2.x have one text encoder, lora_te_ (lora_te1_/lora_te2_ are SDXL's); and transformers 5's CLIPTextModel
    has no `text_model.` level in its module names, which webuis' key maps expect.
    """
    for prefix in ("lora_te1_", "lora_te_"):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            return "lora_te_" + (rest if rest.startswith("text_model_") else "text_model_" + rest)
    return key


def replace_token(prompt: str, token: str, word: str) -> str:
    return re.sub(rf"(?<!\S){re.escape(token)}(?!\S)", word, prompt)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def export_name(name: str | None, folder: Path) -> str:
    """The files' stem (the webui's LoRA name and embedding trigger word): --name, or the concept folder's name."""
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-.")[:64].rstrip("-.") or "concept"
    if not _NAME.match(name) or len(name) > 64:
        raise InputError(f"--name {name!r}: use letters, digits, '_', '-' or '.' (at most 64, no leading symbol); "
                         "it becomes the file names and the webui's trigger word")
    return name


def export_concept(concept: str | Path, out: str | Path, *, name: str | None = None, model: str | None = None,
                   fmt: str = FORMAT, rank: int | None = None) -> dict:
    """Write `concept` in webui files under `out` (a new or empty folder); returns export.json's content.

    rank: the LoRA rank of the fit of weight changes, for Custom Diffusion (None or 0: exact) and full DreamBooth
    (None: DREAMBOOTH_RANK; 0: exact); LoRA and E4T concepts are exported at their own rank."""
    from . import METHODS
    from .core import apply_concepts

    if fmt != FORMAT:
        raise InputError(f"--format {fmt!r}: the only export format is {FORMAT!r} (AUTOMATIC1111, ComfyUI, ...)")
    folder = Path(concept)
    meta = read_concept(folder)
    method = meta.get("method")
    spec = METHODS.get(method)
    if spec is None:
        raise InputError(f"--concept {folder}: unknown method {method!r}")
    if spec.export is None:
        raise InputError(f"{folder}: {method} concepts cannot be exported for a webui: "
                         f"{EXPORT_HINTS.get(method, 'no webui file holds them')}")
    if rank is not None and rank < 0:
        raise InputError(f"--rank must be >= 0 (0: exact; got {rank})")
    stem = export_name(name, folder)
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not empty; pick a new folder")

    def load_plain():
        from ..pipeline import load_pipeline
        from .core import check_base_model

        pipe = load_pipeline(model or meta.get("base_model") or "world", device="cpu", dtype="fp32", progress=False)
        check_base_model(pipe, folder, meta)
        return pipe

    def load_base():
        return apply_concepts(load_plain(), [folder])

    got: WebuiFiles | None = spec.export(ExportContext(folder, meta, stem, load_base, load_plain, {"rank": rank}))
    if got is None:
        raise InputError(f"{folder}: this {method} concept cannot be exported for a webui: "
                         f"{EXPORT_HINTS.get(method, 'no webui file holds it')}")
    from safetensors.torch import save_file

    from .. import __version__

    record = {"format": FORMAT, "concept": folder.resolve().name, "method": method, "name": stem, "prompt": got.prompt,
              "base_model": meta.get("base_model"), "model_hash": meta.get("model_hash"),
              "tokens": meta.get("tokens"), "boothkit_version": __version__, **got.notes,
              "files": sorted(f"{key}.safetensors" for key in got.files)}
    with staged_folder(out) as tmp:
        for key, tensors in got.files.items():
            (tmp / key).parent.mkdir(parents=True, exist_ok=True)
            info = {"boothkit_concept": folder.resolve().name, "boothkit_method": method,
                    "boothkit_model_hash": str(meta.get("model_hash")), "boothkit_version": __version__,
                    **got.metadata.get(key, {})}
            save_file(tensors, str(tmp / f"{key}.safetensors"), metadata=info)
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1))
    return record
