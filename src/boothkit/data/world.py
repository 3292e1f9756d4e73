"""The emoji world as one data source among the others (`--data world`, the default).

Record i is a single-object scene of a TRAIN concept (held-out subjects are never drawn for training), a pure
function of (options.seed, i): its caption names the object by its class noun (the identifier is put in front of it
like in any caption), its mask is the renderer's alpha, and its `condition` is another render of the same concept:
- "plain" (InstantBooth): the same glyph at the same place in its plain colour style, on white, with its alpha; the
  device-side condition augmentation (`boothkit.data.condition`) then cuts it out and re-centres it. Colour only, so
  style words ("grayscale", "outline") stay in the caption's control.
- "view" (E4T): a reference-like photo of the same concept (random background, medium/large, centred or at an
  edge, as `world.references` draws them), so the encoder cannot copy the target's background or position.
- "none": no condition; it is derived from the target.
Validation records are scenes of HELD-OUT concepts of the class (evaluated, never trained on).
This is the only module of boothkit.data that imports boothkit.world.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import InputError
from ..training.config import DictConfig
from .base import MapSource, TrainIndex
from .record import Record, ScanReport, Unusable

CONDITIONS = ("plain", "view", "none")


@dataclass
class WorldOptions(DictConfig):
    """How the world draws its records."""

    condition: str = "plain"  #: plain (InstantBooth), view (E4T: another photo of the concept) or none
    scenes: int = 1_000_000  #: distinct scenes per epoch: record i (i < scenes) is a pure function of (seed, i)
    p_styled: float = 0.4  #: share of targets drawn grayscale, upside-down or outline (named in the caption)
    seed: int = 0  #: which scenes the records are (the loader's seed decides their order and augmentation)

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise InputError(f"world condition must be one of {CONDITIONS} (got {self.condition!r})")
        if self.scenes < 1 or not 0 <= self.p_styled <= 1:
            raise InputError("world options: scenes must be >= 1 and p_styled in [0, 1]")


class WorldSource(MapSource):
    """Single-object world scenes of the train concepts of one class (or of all classes: class_noun "all")."""

    kind = "world"

    def __init__(self, *, class_noun: str, identifier: str, options: WorldOptions | None = None,
                 spec: str = "world"):
        from ..world.concepts import CLASSES, concept_index, heldout_concepts, train_concepts

        if class_noun != "all" and class_noun not in CLASSES:
            raise InputError(f"--data world: the world has no class {class_noun!r} (classes: {', '.join(CLASSES)}, "
                             "or all)")
        self.spec, self.class_noun, self.identifier = spec, class_noun, identifier
        self.options = options or WorldOptions()
        self.has_condition = self.options.condition != "none"
        idx = concept_index()
        pick = lambda cs: [(idx[c.id], c) for c in cs if class_noun == "all" or c.cls == class_noun]  # noqa: E731
        self.pool, self.heldout_pool = pick(train_concepts()), pick(heldout_concepts())
        self._concepts = dict(self.pool + self.heldout_pool)  # atlas row -> concept
        if not self.pool:
            raise InputError(f"--data world: no train concepts of class {class_noun!r}")
        self.report = ScanReport(spec, self.kind, read=self.options.scenes, usable=self.options.scenes)
        self._renderer = None

    def __getstate__(self):  # workers started by spawn build their own renderer
        return {**self.__dict__, "_renderer": None}

    def renderer(self):
        if self._renderer is None:
            from ..world.atlas import load_atlas
            from ..world.render import SceneRenderer

            self._renderer = SceneRenderer(load_atlas(progress=False), "cpu")
        return self._renderer

    def __len__(self) -> int:
        return self.options.scenes

    def key(self, i: int) -> str:
        return f"world:{i}"

    def train_index(self, n_heldout: int) -> TrainIndex:
        return TrainIndex(len(self), [])  # validation draws held-out CONCEPTS instead (see validation)

    def heldout_indices(self, n: int) -> list[int]:
        return []

    def _scenes(self, i: int, heldout: bool):
        """-> (target scene, condition scene or None), a pure function of (seed, i, heldout)."""
        from ..world.scenes import BACKGROUNDS, POSITIONS, SceneSampler, caption, fixed_scene

        pool = self.heldout_pool if heldout else self.pool
        rng = random.Random(f"boothkit-data-world:{self.options.seed}:{'heldout' if heldout else 'train'}:{i}")
        s = SceneSampler(pool, p_two=0.0, p_class_only=0.0, p_styled=self.options.p_styled).sample(rng)
        obj = s.objects[0]
        obj.name = obj.cls  # the caption names it by its class noun; the identifier goes in front of that
        s.caption = caption(s, rng)
        view = None
        if self.options.condition == "view":
            size = rng.choice(["medium", "large", "large"])  # as world.references draws reference photos
            pos = "center" if size == "large" else rng.choice(POSITIONS)
            view = fixed_scene(obj.concept, self._concepts[obj.concept], bg=rng.choice(list(BACKGROUNDS)), size=size,
                               position=pos)
        return s, view

    def _render(self, indices: list[int], heldout: bool) -> list[Record]:
        from ..world.render import SceneBatch, to_pil
        from .captions import rewrite_caption

        pairs = [self._scenes(i, heldout) for i in indices]
        b = len(pairs)
        one = lambda sb: SceneBatch(*(getattr(sb, f) if f == "bg" else getattr(sb, f)[:, :1]  # noqa: E731
                                      for f in sb.__dataclass_fields__))  # single objects: draw one slot, not two
        sb = one(SceneBatch.from_scenes([s for s, _ in pairs]))
        if self.options.condition == "plain":  # same glyph and place, colour style, on white
            cond = SceneBatch(sb.concept, sb.size_px, sb.cx, sb.cy, torch.zeros_like(sb.style), sb.valid,
                              torch.ones_like(sb.bg))
        elif self.options.condition == "view":
            cond = one(SceneBatch.from_scenes([v for _, v in pairs]))
        else:
            cond = None
        both = sb if cond is None else SceneBatch(*(torch.cat([getattr(sb, f), getattr(cond, f)])
                                                    for f in sb.__dataclass_fields__))
        images, masks = self.renderer().render(both, return_masks=True)  # [B or 2B, 3, 64, 64] in [0, 1], [.., 1, ..]
        out = []
        prefix = "world-heldout" if heldout else "world"
        for j, (i, (s, _)) in enumerate(zip(indices, pairs)):
            obj = s.objects[0]
            text = rewrite_caption(s.caption, obj.cls, self.identifier)
            rec = Record(to_pil(images[j:j + 1])[0], text, f"{prefix}:{i}", _mask(masks[j, 0]),
                         meta={"source": "world", "class": obj.cls, "concept": obj.concept, "mask_from": "alpha",
                               "style": obj.style, "scene_caption": s.caption})
            if cond is not None:
                rec.condition, rec.condition_mask = to_pil(images[b + j:b + j + 1])[0], _mask(masks[b + j, 0])
            out.append(rec)
        return out

    def load(self, i: int, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Record:
        return self._render([i], False)[0]

    def load_many(self, indices: list[int], **kw) -> list[Record | Unusable]:
        return self._render(list(indices), False)  # one renderer call for the whole batch

    def validation(self, n: int, **kw) -> list[Record]:
        """n scenes of held-out concepts of the class (never trained on), the same for every run."""
        if n <= 0 or not self.heldout_pool:
            return []
        return self._render(list(range(n)), True)


def _mask(alpha: torch.Tensor) -> Image.Image:
    """[H, W] in [0, 1] -> "L"."""
    return Image.fromarray((alpha.clamp(0, 1) * 255).round().byte().cpu().numpy().astype(np.uint8), "L")
