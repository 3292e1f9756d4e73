"""Scenes of the emoji world: what is drawn where, and the caption that says so.

A scene is 64x64 RGB: a named background colour and one or two glyphs, each with a named size, position and
style. `sample_scene` draws a `Scene` (pure Python, cheap: the data loader's workers run it), `caption` writes
the text, and `boothkit.world.render.SceneRenderer` turns a batch of scenes into pixels on the CPU or the GPU.
Every scene keeps its ground truth (boxes, colours, style) for evaluation.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from .concepts import Concept

IMAGE = 64  #: scene side in pixels

#: Named background colours (RGB 0-255). Chosen far apart so that a border median names them unambiguously.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "red": (214, 48, 49),
    "orange": (240, 140, 30),
    "yellow": (246, 222, 70),
    "green": (60, 168, 80),
    "blue": (40, 100, 220),
    "purple": (136, 72, 190),
    "white": (245, 245, 245),
    "gray": (120, 120, 120),
}

#: Longer side of the glyph in pixels, per size word.
SIZES: dict[str, int] = {"small": 20, "medium": 32, "large": 44}

POSITIONS: tuple[str, ...] = ("center", "left", "right", "top", "bottom")
POS_PHRASE = {"center": "in the center", "left": "on the left", "right": "on the right",
               "top": "at the top", "bottom": "at the bottom"}

#: Styles: "color" is the plain glyph; the others are named in captions.
STYLES: tuple[str, ...] = ("color", "grayscale", "upside-down", "outline")
_STYLE_ADJ = {"color": "", "grayscale": "grayscale", "upside-down": "upside-down", "outline": "outline"}

MARGIN = 2  #: pixels kept between a glyph at an edge position and the border


def offset(size: int) -> int:
    """How far (px) a glyph of this size moves from the centre for left/right/top/bottom."""
    return (IMAGE - size) // 2 - MARGIN


def centre_of(position: str, size: int) -> tuple[float, float]:
    """Pixel centre (x, y) of a glyph at a named position."""
    c, d = IMAGE / 2, offset(size)
    return {
        "center": (c, c), "left": (c - d, c), "right": (c + d, c), "top": (c, c - d), "bottom": (c, c + d),
    }[position]


@dataclass
class SceneObject:
    """One glyph in a scene."""

    concept: int  #: row in all_concepts() / the atlas
    name: str  #: what the caption calls it (the concept's name, or its class noun)
    cls: str
    size: str
    position: str
    style: str
    size_px: float  #: longer side actually drawn (size word plus jitter)
    cx: float  #: centre x in pixels
    cy: float  #: centre y in pixels


@dataclass
class Scene:
    """What one 64x64 image shows, and its caption."""

    bg: str
    objects: list[SceneObject]
    caption: str = ""
    named: dict[str, bool] = field(default_factory=dict)  #: which attributes the caption states

    def to_dict(self) -> dict:
        return asdict(self)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _phrase(obj: SceneObject, named: dict[str, bool]) -> str:
    words = []
    if named.get("size", True):
        words.append(obj.size)
    if obj.style != "color":
        words.append(_STYLE_ADJ[obj.style])
    words.append(obj.name)
    text = " ".join(words)
    return f"{article(text)} {text}"


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """Write the caption of a scene from one of a few templates (rng picks; None = the first template)."""
    named = scene.named or {}
    pick = (lambda xs: xs[0]) if rng is None else rng.choice
    bg = scene.bg if named.get("bg", True) else None
    if len(scene.objects) == 1:
        o = scene.objects[0]
        thing = _phrase(o, named)
        pos = POS_PHRASE[o.position] if named.get("position", True) else None
        templates = [
            lambda: " ".join(x for x in [thing, pos, f"on {article(bg)} {bg} background" if bg else None] if x),
            lambda: "a photo of " + " ".join(x for x in [thing, pos, f"on {article(bg)} {bg} background" if bg else None] if x),
            lambda: ", ".join(x for x in [thing, pos, f"{bg} background" if bg else None] if x),
            lambda: ", ".join(x for x in [f"{bg} background" if bg else None, " ".join(x for x in [thing, pos] if x)] if x),
        ]
        return pick(templates)()
    a, b = scene.objects
    first = f"{_phrase(a, named)} {POS_PHRASE[a.position]}"
    second = f"{_phrase(b, named)} {POS_PHRASE[b.position]}"
    templates = [
        lambda: f"{first} and {second}" + (f" on {article(bg)} {bg} background" if bg else ""),
        lambda: f"{first}, {second}" + (f", {bg} background" if bg else ""),
    ]
    return pick(templates)()


@dataclass
class SceneSampler:
    """Draws random scenes from a pool of concepts (train concepts for pretraining)."""

    concepts: list[tuple[int, Concept]]  #: (atlas row, concept)
    p_two: float = 0.2  #: share of two-object scenes
    p_class_only: float = 0.15  #: share of objects called by their class noun only (the class prior)
    p_styled: float = 0.4  #: share of single objects drawn in a non-colour style
    p_drop: float = 0.1  #: chance to leave each of size / position / background out of the caption
    jitter: float = 2.0  #: +- pixels of random jitter in size and position

    def _object(self, rng: random.Random, size: str, position: str, style: str) -> SceneObject:
        row, c = rng.choice(self.concepts)
        name = c.cls if rng.random() < self.p_class_only else c.name
        px = SIZES[size] + rng.uniform(-self.jitter, self.jitter)
        cx, cy = centre_of(position, SIZES[size])
        cx += rng.uniform(-self.jitter, self.jitter)
        cy += rng.uniform(-self.jitter, self.jitter)
        return SceneObject(row, name, c.cls, size, position, style, px, cx, cy)

    def sample(self, rng: random.Random) -> Scene:
        bg = rng.choice(list(BACKGROUNDS))
        named = {k: rng.random() >= self.p_drop for k in ("size", "position", "bg")}
        if rng.random() < self.p_two:
            axis = rng.choice([("left", "right"), ("top", "bottom")])
            sizes = [rng.choice(["small", "medium"]) for _ in range(2)]
            objs = [self._object(rng, s, p, "color") for s, p in zip(sizes, axis)]
            named["position"] = True
            if rng.random() < 0.5:
                objs.reverse()  # "a X on the right and a Y on the left" as well
        else:
            style = rng.choice(STYLES[1:]) if rng.random() < self.p_styled else "color"
            objs = [self._object(rng, rng.choice(list(SIZES)), rng.choice(POSITIONS), style)]
        scene = Scene(bg, objs, named=named)
        scene.caption = caption(scene, rng)
        return scene


def fixed_scene(row: int, concept: Concept, bg: str = "white", size: str = "medium", position: str = "center",
                style: str = "color", name: str | None = None) -> Scene:
    """A scene with one glyph at exact named attributes (references, evaluation targets)."""
    cx, cy = centre_of(position, SIZES[size])
    obj = SceneObject(row, name or concept.name, concept.cls, size, position, style, float(SIZES[size]), cx, cy)
    scene = Scene(bg, [obj], named={"size": True, "position": True, "bg": True})
    scene.caption = caption(scene)
    return scene
