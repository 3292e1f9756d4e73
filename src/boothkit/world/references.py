"""Reference photos of a subject: renders under varied backgrounds, sizes and positions (colour style only)."""

from __future__ import annotations

import random

from .atlas import load_atlas
from .concepts import Concept, concept_index
from .render import SceneBatch, SceneRenderer, to_pil
from .scenes import BACKGROUNDS, POSITIONS, fixed_scene

_RENDERERS: dict[str, SceneRenderer] = {}


def renderer(device: str = "cpu") -> SceneRenderer:
    """A cached renderer per device."""
    if device not in _RENDERERS:
        _RENDERERS[device] = SceneRenderer(load_atlas(), device)
    return _RENDERERS[device]


def render_references(concept: Concept, n: int = 5, seed: int = 0, caption_name: str | None = None):
    """-> (PIL images, scenes): the subject in n different contexts, deterministic in seed.

    caption_name: what the scenes' captions call the subject (e.g. "sks animal", for training captions); the
    images are the same either way."""
    rng = random.Random(f"refs:{concept.id}:{seed}")
    row = concept_index()[concept.id]
    bgs = list(BACKGROUNDS)
    rng.shuffle(bgs)
    scenes = []
    for i in range(n):
        size = rng.choice(["medium", "large", "large"])
        pos = "center" if size == "large" else rng.choice(POSITIONS)
        scenes.append(fixed_scene(row, concept, bg=bgs[i % len(bgs)], size=size, position=pos, name=caption_name))
    images = renderer().render(SceneBatch.from_scenes(scenes))
    return to_pil(images), scenes
