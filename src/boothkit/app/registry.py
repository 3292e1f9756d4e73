"""Which personalisation methods the app offers, and which one it picks by default.

The app offers what `boothkit.methods.METHODS` registers and can run here (a method whose `unavailable_reason()`
names a missing piece, such as an encoder that is not shipped, is left out); imported lazily: the app works, without
concept creation, when no method is installed. The default is InstantBooth when it is registered (the issue's choice:
a result in seconds, no training); otherwise the first registered method in `SPEED_ORDER`, which lists the methods
from fastest to slowest on the world model; a method not listed there comes after all that are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

#: The default's preference: fastest first among methods that work for any class. E4T is fast but only has
#: encoders for some classes (person, animal, face, food, object on the world model), so it comes after LoRA.
SPEED_ORDER = ("instantbooth", "lora", "e4t", "ti", "custom", "dreambooth")
PREFERRED_DEFAULT = "instantbooth"

log = logging.getLogger("boothkit.app")


@dataclass(frozen=True)
class MethodSpec:
    """One method as the app sees it."""

    name: str  #: the name in METHODS and in the API
    tune: Callable  #: tune(images, class_noun, out, *, model, steps, resume, progress) -> concept folder
    apply: Callable  #: apply(pipe, concept_dirs) -> pipe
    supports_resume: bool = True  #: an interrupted job is re-run with resume=True (else marked failed)
    #: export(concept_dir, out_dir, *, name, model): AUTOMATIC1111/ComfyUI files (boothkit export); None: none
    export: Callable | None = None


def _supports_resume(entry) -> bool:
    """A method says it can't resume with `supports_resume = False` on its registry entry; default: it can
    (the contract's tune() takes resume=True and continues from its last checkpoint)."""
    return bool(getattr(entry, "supports_resume", True))


def registered_methods() -> dict[str, MethodSpec]:
    """MethodSpecs for everything boothkit.methods registers ({} if that package has no METHODS yet)."""
    try:
        import boothkit.methods as m
    except Exception as e:  # a broken methods package must not stop the server from generating
        log.warning("boothkit.methods could not be imported (%s: %s): no method is offered", type(e).__name__, e)
        return {}
    registry = getattr(m, "METHODS", None)
    tune = getattr(m, "tune", None)
    apply = getattr(m, "apply_concepts", None)
    if not registry or tune is None or apply is None:
        return {}
    out = {}
    for name, entry in registry.items():
        why = entry.unavailable_reason() if hasattr(entry, "unavailable_reason") else None
        if why:
            log.info("method %s is not offered: %s", name, why)
            continue

        def _tune(images, class_noun, out_dir, *, _name=name, **kw):
            return tune(_name, images, class_noun, out_dir, **kw)

        export = None
        if getattr(entry, "export", None) is not None:
            from boothkit.methods.webui import export_concept as export
        out[name] = MethodSpec(name=name, tune=_tune, apply=apply, supports_resume=_supports_resume(entry),
                               export=export)
    return out


def default_method(methods: dict[str, MethodSpec]) -> str | None:
    """InstantBooth if offered, else the fastest offered method by SPEED_ORDER, else None (nothing offered)."""
    if not methods:
        return None
    if PREFERRED_DEFAULT in methods:
        return PREFERRED_DEFAULT
    rank = {n: i for i, n in enumerate(SPEED_ORDER)}
    return min(methods, key=lambda n: (rank.get(n, len(rank)), n))


def ordered(methods: dict[str, MethodSpec]) -> list[str]:
    """Method names for a picker: the default first, then by SPEED_ORDER."""
    rank = {n: i for i, n in enumerate(SPEED_ORDER)}
    d = default_method(methods)
    return sorted(methods, key=lambda n: (n != d, rank.get(n, len(rank)), n))

