"""Personalisation methods behind one interface (contract shared by the CLI, the app and the benchmark).

Owned by the fine-tuning-methods work (issue 4). The public surface, which other layers may call:

    tune(method: str, images: str | Path | list[Path], class_noun: str, out: str | Path, *, model: str = "world",
         steps: int | None = None, identifier: str | None = None, config: dict | None = None,
         resume: bool = False, progress: Callable[[int, int], None] | None = None) -> Path
        Personalise `model` on the subject photos; write a concept folder at `out` (concept.json + weights in
        diffusers formats) and return its path. Raises boothkit.inputs.InputError on bad photos or arguments,
        leaving nothing half-written in `out`.

    apply_concepts(pipe, concept_dirs: list[str | Path]) -> pipe
        Load concept folders into a loaded pipeline (refuses a concept made for another base model).

    METHODS: dict[str, ...]  # registered method names, e.g. "dreambooth", "lora", "ti", "custom"

Extra keyword arguments of tune: `subjects` (more (images, class) pairs trained jointly, Custom Diffusion),
`on_step(step, loss)`, `device`.
"""

from __future__ import annotations

from .spec import MethodSpec

#: name -> MethodSpec. One registration line per method.
METHODS: dict[str, MethodSpec] = {}


def _register(spec: MethodSpec) -> None:
    METHODS[spec.name] = spec


from .lora import METHOD as _lora  # noqa: E402

_register(_lora)
from .ti import METHOD as _ti  # noqa: E402

_register(_ti)
from .dreambooth import METHOD as _dreambooth  # noqa: E402

_register(_dreambooth)
from .custom import METHOD as _custom  # noqa: E402

_register(_custom)
from .e4t import METHOD as _e4t  # noqa: E402

_register(_e4t)
from .instantbooth import METHOD as _instantbooth  # noqa: E402

_register(_instantbooth)

from .core import apply_concepts, tune  # noqa: E402

__all__ = ["METHODS", "MethodSpec", "apply_concepts", "tune"]
