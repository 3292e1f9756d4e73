"""The world protocol: which held-out subjects, which reference photos, which prompts and seeds (all fixed).

A prompt is a `BenchPrompt`: its group (as DreamBench has them), the attributes it asks for, and a template with
`{subject}` standing for the personalised phrase ("sks dog", or "a dog" for the floor). Because every prompt is a
scene of the world, the ceiling baseline renders it exactly with the subject's glyph, and its attributes can be
read back from the pixels of any generated image.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from ..world.concepts import Concept, concept_index, heldout_concepts, train_concepts
from ..world.scenes import POS_PHRASE, Scene, SceneObject, article, centre_of, fixed_scene

GROUPS = ("recontext", "style", "composition", "bare")


@dataclass(frozen=True)
class BenchPrompt:
    """One prompt of the suite. Attributes left None are not asked for (and not scored)."""

    key: str  #: stable id, used in file names and results
    group: str  #: one of GROUPS
    bg: str | None = None
    position: str | None = None
    size: str | None = None
    style: str | None = None
    companion_side: str | None = None  #: composition: where the companion goes ("right" or "bottom")

    def sides(self) -> tuple[str, str]:
        """Composition: (the subject's position, the companion's position)."""
        return ("left", "right") if self.companion_side == "right" else ("top", "bottom")

    def text(self, subject: str, companion: str | None = None) -> str:
        """The prompt with `subject` as the subject phrase ("sks dog")."""
        if self.group == "bare":
            return f"a photo of {subject}"
        if self.group == "composition":
            mine, theirs = self.sides()
            return (f"a photo of {article(subject)} {subject} {POS_PHRASE[mine]} and {article(companion)} {companion} "
                    f"{POS_PHRASE[theirs]}")
        words = [w for w in (self.size, self.style) if w] + [subject]
        thing = " ".join(words)
        parts = [f"a photo of {article(thing)} {thing}"]
        if self.position:
            parts.append(POS_PHRASE[self.position])
        if self.bg:
            parts.append(f"on {article(self.bg)} {self.bg} background")
        return " ".join(parts)

    def asked(self) -> list[str]:
        return [k for k in ("bg", "position", "size", "style") if getattr(self, k)]


#: The full suite: 12 prompts over the four groups.
FULL_PROMPTS: tuple[BenchPrompt, ...] = (
    BenchPrompt("bare", "bare"),
    BenchPrompt("bg-red", "recontext", bg="red"),
    BenchPrompt("bg-blue-left", "recontext", bg="blue", position="left"),
    BenchPrompt("top", "recontext", position="top"),
    BenchPrompt("small", "recontext", size="small"),
    BenchPrompt("large-green", "recontext", size="large", bg="green"),
    BenchPrompt("right-yellow", "recontext", position="right", bg="yellow"),
    BenchPrompt("grayscale", "style", style="grayscale"),
    BenchPrompt("upside-down", "style", style="upside-down"),
    BenchPrompt("outline-purple", "style", style="outline", bg="purple"),
    BenchPrompt("with-companion-right", "composition", companion_side="right"),
    BenchPrompt("with-companion-below", "composition", companion_side="bottom"),
)
#: The quick suite: one prompt per group.
QUICK_PROMPTS: tuple[BenchPrompt, ...] = tuple(p for p in FULL_PROMPTS
                                               if p.key in ("bare", "bg-red", "grayscale", "with-companion-right"))
PROMPTS = {p.key: p for p in FULL_PROMPTS}


@dataclass
class Preset:
    """How big a world run is."""

    name: str
    subjects_per_class: dict[str, int]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    n_references: int = 4
    drift_seeds: tuple[int, ...] = (0, 1)
    sample_steps: int = 20
    guidance: float = 5.0
    subject_offset: int = 0  #: skip the first k held-out subjects of each class (val: disjoint from full's)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["subject_offset"]:  # omitted when 0, so runs recorded before the field existed keep their protocol
            del d["subject_offset"]
        return d


PRESETS = {
    "quick": Preset("quick", {"animal": 1, "object": 1}, tuple(p.key for p in QUICK_PROMPTS), (0, 1)),
    "full": Preset("full", {"person": 4, "animal": 4, "object": 4, "face": 4, "food": 4},
                   tuple(p.key for p in FULL_PROMPTS), (0, 1)),
    # for choosing knobs (InstantBooth's alpha/beta, recipes): the next 2 held-out subjects of each class after full's
    # 4, so what is tuned here is reported on subjects it was not tuned on
    "val": Preset("val", {"person": 2, "animal": 2, "object": 2, "face": 2, "food": 2},
                  tuple(p.key for p in FULL_PROMPTS), (0,), subject_offset=4),
}


def preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    p = Preset(**{**PRESETS[name].to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    p.prompts, p.seeds, p.drift_seeds = tuple(p.prompts), tuple(p.seeds), tuple(p.drift_seeds)
    for k in p.prompts:
        if k not in PROMPTS:
            raise ValueError(f"unknown prompt {k!r}; choose from {sorted(PROMPTS)}")
    return p


def class_prompt(noun: str) -> str:
    """ "a photo of a dog": the class prompt (the floor's bare prompt, drift, CLIP-T's text for the bare prompt)."""
    return f"a photo of {article(noun)} {noun}"


def subjects(p: Preset) -> list[Concept]:
    """Held-out subjects: k of each class after the preset's offset, in the world's fixed held-out order."""
    out, o = [], p.subject_offset
    for cls, k in p.subjects_per_class.items():
        pool = heldout_concepts(cls)
        if len(pool) < o + k:
            raise ValueError(f"the world has {len(pool)} held-out {cls} subjects, the preset asks for {o + k}")
        out += pool[o:o + k]
    return out


def companion(subject: Concept) -> Concept:
    """A fixed train concept of another class to stand beside the subject (composition prompts)."""
    pool = [c for c in train_concepts() if c.cls != subject.cls and c.cls in ("animal", "plant", "food", "vehicle")]
    return random.Random(f"bench-companion:{subject.id}").choice(pool)


def others(subject: Concept, k: int = 2) -> list[Concept]:
    """Fixed train concepts (other classes) for the drift check "do other concepts still render"."""
    pool = [c for c in train_concepts() if c.cls != subject.cls]
    return random.Random(f"bench-others:{subject.id}").sample(pool, k)


def ceiling_scene(prompt: BenchPrompt, subject: Concept, comp: Concept | None = None) -> Scene:
    """The prompt drawn exactly with the subject's glyph (unnamed attributes: white, medium, centre, colour)."""
    idx = concept_index()
    row = idx[subject.id]
    if prompt.group == "composition":
        sides = prompt.sides()
        objs = []
        for (r, c), side in zip(((row, subject), (idx[comp.id], comp)), sides):
            cx, cy = centre_of(side, 32)
            objs.append(SceneObject(r, c.name, c.cls, "medium", side, "color", 32.0, cx, cy))
        return Scene("white", objs)
    return fixed_scene(row, subject, bg=prompt.bg or "white", size=prompt.size or "medium",
                       position=prompt.position or "center", style=prompt.style or "color")


@dataclass
class SubjectPlan:
    """Everything fixed about one subject in a run."""

    concept: Concept
    companion: Concept
    others: list[Concept] = field(default_factory=list)
