"""What a registered method provides (one `METHOD = MethodSpec(...)` line in methods/<name>/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str  #: registry key and `--method` value
    config: type  #: the method's config dataclass (extends training.config.TrainConfig)
    recipe: type | None  #: the Recipe subclass: what trains and the per-batch loss (None: an encoder method)
    load: Callable[[object, Path, dict], None]  #: load a concept folder into a pipeline (artifact.load)
    default_identifier: str  #: the token prompts use when the user gives none
    uses_prior: Callable[[object], bool]  #: whether this config needs class / regularisation images
    multi_concept: bool = False  #: whether several subjects can train jointly
    #: encoder methods (no per-subject training): encode(pipe, photos, class_noun, token, cfg, folder, model_hash)
    #: writes the concept's files into folder and returns {"files": [...], ...}; recipe is then None
    encode: Callable | None = None
    #: None when the method can run with its defaults here; else a sentence why not (e.g. no shipped encoder).
    #: The app offers, and the benchmark runs by default, only available methods.
    available: Callable[[], str | None] | None = None
    #: export_webui(ExportContext) -> WebuiFiles (methods/webui.py: kohya LoRA, A1111 embedding); None: no such file
    export: Callable | None = None
    #: encoder methods: image_encoder(cfg, model, class_noun) -> the vision tower `tune` loads beside the base model
    #: (the one the method's pretrained encoder was trained with; None: the base model's own)
    image_encoder: Callable | None = None

    def unavailable_reason(self) -> str | None:
        return self.available() if self.available else None
