"""Pretrained encoders of the encoder methods (InstantBooth, E4T): the ones shipped with boothkit and the ones
`boothkit pretrain` wrote, found from their json files alone (no model is loaded; `boothkit encoders` lists them).

Each encoder folder holds a json (`KINDS`) recording the base model it was trained for (`base_model`, and its
`model_hash`, which is what decides whether it fits a pipeline) and the class(es) it was trained on.

This is also where the methods find a default encoder when none is named (`shipped_instantbooth`, `shipped_e4t`):
the shipped ones are world encoders, so the E4T lookup and its class check read which world class a noun belongs
to (boothkit.domain.world_class); the methods themselves never import the world.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

#: kind -> (json file, weights file), as boothkit.methods.<kind>.artifact names them (a test checks they agree)
KINDS = {"instantbooth": ("instantbooth.json", "instantbooth.safetensors"),
         "e4t": ("e4t_encoder.json", "e4t_encoder.safetensors")}
#: what each kind is used with
USE = {"instantbooth": "generate --instant [DIR] --images PHOTOS; tune --method instantbooth --set encoder=DIR",
       "e4t": "tune --method e4t --set encoder=DIR (default: the shipped encoder of the class)"}


def assets_root() -> Path:
    return Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class Encoder:
    kind: str  #: "instantbooth" or "e4t"
    path: str  #: the encoder folder
    classes: str  #: the class it was trained on ("all" for every class)
    base_model: str | None  #: the base model it was trained for, as given to pretrain ("world", a folder, a hub id)
    model_hash: str | None  #: that model's hash (boothkit.pipeline.model_hash): what must match a pipeline
    steps: int | None  #: pretraining steps
    shipped: bool  #: ships with boothkit

    def to_dict(self) -> dict:
        return asdict(self)


def read(folder: str | Path, shipped: bool = False) -> Encoder | None:
    """The encoder in `folder`, or None when it holds none (or an unreadable json)."""
    folder = Path(folder)
    for kind, (meta_file, weights) in KINDS.items():
        if (folder / meta_file).is_file() and (folder / weights).is_file():
            try:
                meta = json.loads((folder / meta_file).read_text())
            except (OSError, ValueError):
                return None
            cls = meta.get("classes") or meta.get("class") or "all"
            steps = (meta.get("pretrain") or {}).get("steps")
            return Encoder(kind, str(folder), str(cls), meta.get("base_model"), meta.get("model_hash"),
                           int(steps) if isinstance(steps, (int, float)) else None, shipped)
    return None


def shipped() -> list[Encoder]:
    """Every encoder shipped under src/boothkit/assets/<kind>/<name>/, by kind then name."""
    found = []
    for kind in KINDS:
        root = assets_root() / kind
        if root.is_dir():
            found += [e for e in (read(p, shipped=True) for p in sorted(root.iterdir()) if p.is_dir()) if e]
    return found


def find(folders: list[str | Path], depth: int = 3) -> list[Encoder]:
    """Encoders in these folders (each a folder that is one, or holds some up to `depth` levels down), sorted by
    path. The encoder copies inside InstantBooth concept folders are left out (they belong to their concept)."""
    found: dict[str, Encoder] = {}
    for top in map(Path, folders):
        stack = [(top, 0)]
        while stack:
            folder, level = stack.pop()
            if (folder.parent / "concept.json").is_file() and folder != top:
                continue
            e = read(folder)
            if e is not None:
                found[e.path] = e
                continue
            if level < depth and folder.is_dir():
                try:
                    stack += [(p, level + 1) for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
                except OSError:
                    pass
    return [found[k] for k in sorted(found)]


def shipped_instantbooth(model: str, flag: str = "--instant") -> Encoder:
    """The InstantBooth encoder shipped for base model `model` (matched by model hash); InputError (naming `flag`,
    the option that asked for it) saying what ships and what to do when none fits."""
    from .inputs import InputError
    from .pipeline import model_hash

    have = model_hash(model)
    ib = [e for e in shipped() if e.kind == "instantbooth"]
    for e in ib:
        if e.model_hash == have:
            return e
    what = ", ".join(f"{Path(e.path).name} (for {e.base_model!r})" for e in ib) or "none"
    then = "pass --instant DIR" if flag == "--instant" else "pass --set encoder=DIR"
    raise InputError(f"{flag}: no InstantBooth encoder ships for base model {model!r} (shipped: {what}); train "
                     f"one with `boothkit pretrain instantbooth --model MODEL --data DATA --out DIR` and {then}")


def shipped_e4t(class_noun: str, model: str = "world") -> Encoder:
    """The E4T encoder shipped for a subject's class noun on base model `model` (matched by model hash): one trained
    for the noun itself, else one for the world class the noun belongs to ("rat" -> animal); InputError saying what
    to do when none fits."""
    from .domain import world_class
    from .inputs import InputError
    from .pipeline import model_hash

    noun = class_noun.strip().lower()
    have = model_hash(model)
    fitting = [e for e in shipped() if e.kind == "e4t" and e.model_hash == have]
    domain = world_class(noun)
    for want in (noun, domain):
        for e in fitting:
            if want and e.classes == want:
                return e
    if not fitting:
        raise InputError(f"e4t: no E4T encoder ships for base model {model!r}; pretrain one with `boothkit pretrain "
                         f"e4t --data DATA --class {noun} --model {model} --out DIR` and pass it with --set "
                         "encoder=DIR")
    if domain is None:
        from .world.concepts import CLASSES

        raise InputError(f"e4t: class {class_noun!r} is not a world class and names no world concept, so no shipped "
                         f"encoder applies; pretrain one for the class it belongs to (one of {', '.join(CLASSES)}) "
                         f"with `boothkit pretrain e4t --class CLASS --out DIR` and pass it with --set encoder=DIR")
    which = f"class {class_noun!r}" + (f" (world class {domain!r})" if domain != noun else "")
    raise InputError(f"e4t: no pretrained encoder ships for {which}; pretrain one with "
                     f"`boothkit pretrain e4t --class {domain} --out DIR` and pass it with --set encoder=DIR")


def e4t_class_conflict(encoder_class: str, class_noun: str) -> str | None:
    """Why an E4T encoder pretrained on `encoder_class` must not tune a subject of `class_noun`, or None when it may:
    refused when both nouns belong to known world classes that differ (a "person" encoder for a "rat"); a noun the
    world does not know is the user's call ("pet", "golden retriever")."""
    from .domain import world_class

    if not encoder_class or encoder_class.strip().lower() == class_noun.strip().lower():
        return None
    mine, theirs = world_class(class_noun), world_class(encoder_class)
    if mine is None or theirs is None or mine == theirs:
        return None
    return (f"was pretrained for class {encoder_class!r}, but {class_noun!r} is in class {mine!r}: use that class's "
            f"encoder (`boothkit pretrain e4t --class {mine}`)")
