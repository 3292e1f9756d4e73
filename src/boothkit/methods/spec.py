"""What a registered method provides (one `METHOD = MethodSpec(...)` line in methods/<name>/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str  #: registry key and `--method` value
    config: type  #: the method's config dataclass (extends training.config.TrainConfig)
    recipe: type  #: the Recipe subclass: what trains and the per-batch loss
    load: Callable[[object, Path, dict], None]  #: load a concept folder into a pipeline (artifact.load)
    default_identifier: str  #: the token prompts use when the user gives none
    uses_prior: Callable[[object], bool]  #: whether this config needs class / regularisation images
    multi_concept: bool = False  #: whether several subjects can train jointly
