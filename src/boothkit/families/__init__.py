"""Base-model families: one module per family (sd.py, sdxl.py) behind one interface (base.Family).

    family_of(pipe)            the family of a loaded pipeline
    family_of_class(name)      the family whose pipeline class is `name` (model_index.json's `_class_name`), or None
    family_named("sdxl")       by the name concept.json records

Methods and the training core ask the family, never `if sdxl:` in their own code.
"""

from __future__ import annotations

from .base import Family, TextConditioning, TextEncoderSlot, micro_conditioning
from .sd import StableDiffusion
from .sdxl import StableDiffusionXL

#: every family boothkit supports
FAMILIES: tuple[Family, ...] = (StableDiffusion(), StableDiffusionXL())


def family_of(pipe) -> Family:
    """The family of a loaded diffusers pipeline; ValueError for a pipeline boothkit does not support."""
    for f in FAMILIES:
        if f.matches(pipe):
            return f
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}: boothkit works with "
                     f"{', '.join(c for f in FAMILIES for c in f.pipeline_classes)}")


def family_of_class(class_name: str) -> Family | None:
    for f in FAMILIES:
        if class_name in f.pipeline_classes:
            return f
    return None


def family_named(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"unknown base-model family {name!r}; known: {[f.name for f in FAMILIES]}")


def supported_classes() -> list[str]:
    return [c for f in FAMILIES for c in f.pipeline_classes]


__all__ = ["FAMILIES", "Family", "TextConditioning", "TextEncoderSlot", "family_named", "family_of",
           "family_of_class", "micro_conditioning", "supported_classes"]
