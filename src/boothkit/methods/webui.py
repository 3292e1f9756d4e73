"""`boothkit export`: a concept in the files AUTOMATIC1111, ComfyUI, SD.Next and InvokeAI read ("webui" format).

    lora/<name>.safetensors        LoRA weights (the LoRA method, E4T's weight offsets) in kohya's layout:
                                   `lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`, and for the
                                   text encoders `lora_te_<module>...` (SD 1.x/2.x) or `lora_te1_...`/`lora_te2_...`
                                   (SDXL). The UNet's modules keep diffusers' names on SD (as kohya's SD LoRAs) and
                                   take Stability's (sgm) names on SDXL (`lora_unet_input_blocks_4_1_...`, as kohya's
                                   SDXL LoRAs: `Family.kohya_unet_path`). Read from the PEFT adapter that diffusers'
                                   own loader builds from the concept's file, so what is exported is what `generate
                                   --concept` draws with. The alpha is the concept's (kohya scales by alpha / rank).
    embeddings/<name>.safetensors  a token embedding (Textual Inversion, E4T's word, Custom Diffusion's modifier
                                   tokens) as A1111 saves one: {"emb_params": [n_vectors, 768]} on SD, one tensor per
                                   text encoder on SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]} (`slot.a1111_key`);
                                   the webui's trigger word is the file's name.
    export.json                    what was exported, from which concept and base model, and the prompt to use.

Custom Diffusion's changed key/value projections become a LoRA too: each change dW = W_custom - W_base as the
factors of its SVD (`lowrank_lora`: every non-zero singular value, so the change itself up to float error, or with
--rank the best fit of that rank, its error in export.json); each modifier token becomes an embedding (<name>,
<name>-2, ... when there are several).

A full DreamBooth concept becomes a LoRA extracted from it, as kohya's extract_lora_from_models does: the changes of
the transformer blocks' and text encoders' linear layers, fitted at rank DREAMBOOTH_RANK (or --rank); what that
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

    @property
    def family(self):
        """The base-model family the concept was made for (concept.json's "family"; SD before SDXL support)."""
        from ..families import family_named

        return family_named(self.meta.get("family", "sd"))


@dataclass
class WebuiFiles:
    """What a method exports: tensors per file, keyed "lora/NAME" or "embeddings/NAME" (folder/stem, ".safetensors"
    is added), and the prompt that uses them."""

    prompt: str
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  #: safetensors metadata per file key
    notes: dict = field(default_factory=dict)  #: anything export.json should say about the conversion


def a1111_embedding(vectors: torch.Tensor | list[torch.Tensor], family=None) -> dict[str, torch.Tensor]:
    """A token's vectors -> A1111's safetensors embedding: one [n_vectors, dim] (or [dim]) tensor per text encoder of
    the family, in slot order, each under its `slot.a1111_key`: SD {"emb_params": [n, 768]}, SDXL {"clip_l": [n, 768],
    "clip_g": [n, 1280]}. A single tensor is SD's one encoder (family None: SD)."""
    from ..families import family_named

    family = family or family_named("sd")
    per_slot = [vectors] if isinstance(vectors, torch.Tensor) else list(vectors)
    if len(per_slot) != len(family.slots):
        raise ValueError(f"{len(per_slot)} embeddings for the {len(family.slots)} text encoders of {family.label}")
    return {slot.a1111_key: v.detach().to("cpu", torch.float32).reshape(-1, v.shape[-1]).contiguous()
            for slot, v in zip(family.slots, per_slot)}


def kohya_name(pipe, module: str, path: str) -> str:
    """The kohya LoRA name of a linear layer: module "unet" / a text encoder's pipeline name, path its module path in
    diffusers / transformers names -> e.g. "lora_unet_down_blocks_0_attentions_0_..._to_q" (SD),
    "lora_unet_input_blocks_4_1_..._to_q" (SDXL), "lora_te_text_model_encoder_layers_0_self_attn_q_proj" (SD),
    "lora_te2_text_model_..." (SDXL). Text-encoder paths get the `text_model.` level that webuis' key maps expect
    (transformers 5's CLIPTextModel has none; CLIPTextModelWithProjection has it)."""
    from ..families import family_of

    fam = family_of(pipe)
    if module == "unet":
        try:
            path = fam.kohya_unet_path(pipe.unet.config, path)
        except ValueError as e:
            raise InputError(f"export: {e}") from None
        return "lora_unet_" + path.replace(".", "_")
    slot = next((s for s in fam.slots if s.encoder == module), None)
    if slot is None:
        raise InputError(f"export: {module} is not a text encoder of {fam.label}")
    if not path.startswith("text_model."):
        path = "text_model." + path
    return f"{slot.kohya_prefix}_" + path.replace(".", "_")


def lowrank_lora(pipe, deltas: dict[str, torch.Tensor], rank: int = 0, rtol: float = 1e-6
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str], float]:
    """Weight changes {"<module>.<path>": dW [out, in]} (module: unet, text_encoder, text_encoder_2) as a kohya LoRA:
    dW ~ up @ down from its SVD (Eckart-Young: the best rank-r fit), as kohya's extract_lora_from_models does.
    rank 0: every singular value above rtol * the largest (the change itself, to float error), so modules may differ
    in rank. pipe: a pipeline of the concept's base model (its family names the modules: kohya_name).

    One alpha for every module (the largest rank), the webui's scale alpha / rank_m folded back into each `up`, so
    up @ down * alpha / rank_m is the fit: loaders that mishandle per-module alphas (diffusers 0.42.1 drops some of
    a kohya file's alpha pattern) then still draw the same.
    -> (tensors, safetensors metadata, relative error ||dW - fit||_F / ||dW||_F over all modules)
    """
    fits, err2, norm2 = {}, 0.0, 0.0
    for key, dw in deltas.items():
        dw = dw.detach().to("cpu", torch.float64)
        u, sv, vh = torch.linalg.svd(dw, full_matrices=False)  # dw = u diag(sv) vh
        r = int((sv > rtol * sv[0]).sum()) if float(sv[0]) > 0 else 1
        r = max(1, min(r, rank) if rank else r)
        up, down = u[:, :r] * sv[:r], vh[:r]  # [out, r], [r, in]
        err2 += float(((dw - up @ down) ** 2).sum())
        norm2 += float((dw ** 2).sum())
        fits[key] = (up, down)
    alpha = max(d.shape[0] for _, d in fits.values())
    tensors = {}
    for key, (up, down) in fits.items():
        module, path = key.split(".", 1)
        name = kohya_name(pipe, module, path)
        tensors[f"{name}.lora_down.weight"] = down.float().contiguous()
        tensors[f"{name}.lora_up.weight"] = (up * (down.shape[0] / alpha)).float().contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    ranks = sorted({d.shape[0] for _, d in fits.values()})
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(alpha), "ss_network_alpha": str(alpha),
            "boothkit_lora_ranks": json.dumps(ranks)}
    return tensors, meta, (err2 / norm2) ** 0.5 if norm2 else 0.0


def kohya_lora(pipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The one LoRA adapter loaded into `pipe` (UNet and, if any, the text encoders) in kohya's layout, with alphas.

    -> (tensors, safetensors metadata in kohya's `ss_*` names)
    """
    from peft.utils import get_peft_model_state_dict

    from ..families import family_of

    fam = family_of(pipe)
    tensors, alphas, ranks = {}, {}, set()
    for name in ["unet"] + [s.encoder for s in fam.slots]:
        module = getattr(pipe, name)
        configs = getattr(module, "peft_config", None) or {}
        if len(configs) > 1:
            raise InputError(f"export: the {name} carries {len(configs)} LoRA adapters; export one concept at a "
                             "time")
        for adapter, cfg in configs.items():
            if getattr(cfg, "rank_pattern", None) or getattr(cfg, "alpha_pattern", None):
                raise InputError("export: per-module LoRA ranks or alphas are not supported by this export")
            alphas[name], ranks = float(cfg.lora_alpha), ranks | {int(cfg.r)}
            for key, value in get_peft_model_state_dict(module, adapter_name=adapter).items():
                path, dot, kind = key.rpartition(".lora_")
                if not dot or kind not in ("A.weight", "B.weight"):
                    raise InputError(f"export: {name} LoRA tensor {key} has no kohya equivalent (plain LoRA only)")
                stem = kohya_name(pipe, name, path)
                part = "lora_down" if kind == "A.weight" else "lora_up"  # kohya's names of PEFT's A and B
                tensors[f"{stem}.{part}.weight"] = value.detach().to("cpu", torch.float32).contiguous()
                tensors[f"{stem}.alpha"] = torch.tensor(alphas[name])  # kohya's scale is alpha / rank
    if not tensors:
        raise InputError("export: the concept loaded no LoRA weights")
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(max(ranks)),
            "ss_network_alpha": str(alphas.get("unet", next(iter(alphas.values()))))}
    return tensors, meta


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


def _check_family(folder: Path, meta: dict, model: str) -> None:
    """InputError when --model is of another base-model family than the concept (its webui files are laid out for
    the concept's family: an SD embedding has no clip_g, an SDXL LoRA names blocks SD does not have)."""
    from ..families import family_named
    from ..pipeline import model_family

    fam, made_for = model_family(model), family_named(meta.get("family", "sd"))
    if fam.name != made_for.name:
        raise InputError(f"--concept {folder} was made for a {made_for.label} base model ({meta.get('base_model')!r}); "
                         f"--model {model} is {fam.label}: concepts do not carry over between families")


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
    if model is not None:  # checked before any file is read, also for exports that load no pipeline (TI)
        _check_family(folder, meta, model)

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
