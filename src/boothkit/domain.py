"""Does a subject fit the base model? Warnings for what the shipped world model cannot know.

The world model (boothkit.world) learned from emoji scenes only, so two things a user can hand it run, but poorly:

- **A class noun it never read.** Its captions use 7 class nouns (`world.concepts.CLASSES`) and the names of the
  1,189 train emoji; a class noun with any other word (or one that names a held-out emoji, which no pretrained part
  of the model saw) is a word its text encoder never learned, so the concept rests on the photos alone.
  `class_warning` says so and suggests the world class to use instead.
- **Photos far from its scenes** (real photos, screenshots, drawings). Measured with the world's own CLIP vision
  tower (the image encoder the encoder methods read): the mean of its last-layer patch tokens, as a Mahalanobis
  distance from their distribution over world reference renders of train emoji (`BANK` renders; mean and
  covariance, shrunk by `SHRINK` towards its mean variance, computed once and cached per world-model hash). The
  photos' median distance above `PHOTO_THRESHOLD` warns. Measured on this project's data (BANK of 256 renders):
  world reference sets (4 renders of each of the 110 held-out emoji) have medians up to 17.2 (99th percentile
  13.2), single renders up to 20.6 (99th percentile 15.4); the real photos of `tests/data/dreambench` (dog, cat,
  backpack) and the DreamBench poop-emoji photos have medians of 25 to 59, but a single real photo can score as
  low as 19, so one photo alone may pass. A set mixing both is judged by its median photo. Computing the
  distribution takes about 4 s once per base model (then read from the cache).

Other base models get no check (a real Stable Diffusion has read nearly every noun and seen photos): the
functions return None / [] for them. Nothing here refuses anything: these are warnings, the CLI and the app print
or return them. Methods never import this module (methods do not know the world).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

PHOTO_THRESHOLD = 20.0  #: median distance above which photos are out of the world model's domain
BANK = (64, 4, 3)  #: reference renders the distribution is measured on: (train emoji, renders each, seed)
SHRINK = 0.05  #: covariance shrinkage: C + SHRINK * mean variance * I
_STATS_VERSION = 1  #: bump when the measurement changes (the cache key)


def is_world_model(model: str) -> bool:
    """True for "world" and for the shipped world folder given as a path."""
    from .pipeline import ModelNotFoundError, resolve_model, world_path

    if model == "world":
        return True
    try:
        return Path(resolve_model(model)).resolve() == world_path().resolve()
    except (ModelNotFoundError, OSError):
        return False


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[frozenset, dict]:
    """-> (every word of the world's train captions, {held-out emoji word: its class})."""
    from .world.concepts import CLASSES, all_concepts

    words = set(CLASSES)
    heldout: dict[str, str] = {}
    for c in all_concepts():
        for w in re.findall(r"[a-z]+", c.name.lower()):
            if c.heldout:
                heldout.setdefault(w, c.cls)
            else:
                words.add(w)
    return frozenset(words), heldout


def world_class(class_noun: str) -> str | None:
    """The world class a class noun belongs to: the class itself ("person"), else the class of the world concepts
    named by the noun ("rat" -> animal: exact name first, then names containing the word); None if unknown. Used to
    pick and check the shipped E4T encoders (boothkit.encoders), which are per world class."""
    from collections import Counter

    from .world.concepts import CLASSES, all_concepts

    noun = class_noun.strip().lower()
    if noun in CLASSES:
        return noun
    exact = [c.cls for c in all_concepts() if c.name == noun]
    if exact:
        return exact[0]
    words = Counter(c.cls for c in all_concepts() if noun in c.name.replace(",", " ").split())
    return words.most_common(1)[0][0] if words else None


def class_warning(class_noun: str, model: str = "world", flag: str = "--class") -> str | None:
    """A one-line warning when the world model never read the class noun; None when it did, or for other models."""
    if not is_world_model(model):
        return None
    from .world.concepts import CLASSES

    known, heldout = _vocabulary()
    words = re.findall(r"[a-z]+", class_noun.lower())
    unknown = [w for w in words if w not in known]
    if words and not unknown:
        return None
    guess = next((heldout[w] for w in unknown if w in heldout), None)
    if guess:
        why = "it names a held-out emoji, which no pretrained part of the world model saw"
        hint = f"its world class, {guess!r}, starts from what the model knows"
    else:
        why = f"its captions use the classes {', '.join(CLASSES)} and the names of the train emoji"
        hint = "a world class (e.g. 'object') starts from what the model knows"
    return (f"{flag} {class_noun!r}: the world model never read {'the word ' + repr(unknown[0]) if unknown else 'it'}"
            f" ({why}); the concept will rest on the photos alone: {hint}")


def photo_warning(images: list, model: str = "world") -> str | None:
    """A one-line warning when the photos (RGB PIL images) are far from the world model's scenes; None when they
    are not, or for other models."""
    if not images or not is_world_model(model):
        return None
    import statistics

    median = statistics.median(photo_distances(images))
    if median <= PHOTO_THRESHOLD:
        return None
    return (f"the photos look unlike anything the world model was trained on (emoji on flat backgrounds): world-CLIP "
            f"distance {median:.0f}, its own scenes score under {PHOTO_THRESHOLD:.0f}; it will learn them poorly. "
            "For real photos use a real base model (--model)")


def subject_warnings(images: list, class_noun: str | None, model: str, flag: str = "--class") -> list[str]:
    """class_warning and photo_warning together (the ones that apply)."""
    found = [class_warning(class_noun, model, flag) if class_noun else None, photo_warning(images, model)]
    return [w for w in found if w]


def photo_distances(images: list) -> list[float]:
    """Each photo's distance from the world scenes (see the module docstring), in order."""
    import torch

    mean, precision = _world_stats()
    f = _features(images).double() - mean
    return [float(v) for v in torch.sqrt(((f @ precision) * f).sum(1).clamp_min(0))]


@lru_cache(maxsize=1)
def _encoder():
    import torch
    from transformers import CLIPVisionModelWithProjection

    from .pipeline import world_path

    enc = CLIPVisionModelWithProjection.from_pretrained(str(world_path() / "image_encoder"))
    return enc.to("cpu", torch.float32).eval()


def _features(images: list):
    """RGB PIL images -> [N, hidden] mean patch token of the world vision tower (centre square, 64 px, [-1, 1])."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    enc = _encoder()
    size = int(enc.config.image_size)
    arr = np.stack([np.asarray(ImageOps.fit(im.convert("RGB"), (size, size), Image.BICUBIC), dtype=np.float32)
                    for im in images]) / 255.0
    x = (torch.from_numpy(arr).permute(0, 3, 1, 2) - 0.5) / 0.5  # the world feature extractor's mean and std
    with torch.no_grad():
        return enc(pixel_values=x).last_hidden_state[:, 1:].mean(1)  # [N, hidden]


@lru_cache(maxsize=1)
def _world_stats():
    """(mean [H], precision [H, H]) of world reference renders' features, float64; cached on disk per model."""
    import torch
    from safetensors.torch import load_file, save_file

    from .cache import cache_dir, cache_root
    from .pipeline import model_hash

    name = f"world-domain-{model_hash('world')}-v{_STATS_VERSION}.safetensors"
    path = cache_root() / "domain" / name
    if path.is_file():
        try:
            t = load_file(str(path))
            return t["mean"], t["precision"]
        except (OSError, ValueError, KeyError):
            pass  # rebuilt below
    mean, precision = _measure_world()
    try:
        folder = cache_dir() / "domain"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{name}.tmp"
        save_file({"mean": mean, "precision": precision}, str(tmp))
        tmp.replace(path)
    except OSError:
        pass  # the cache is an optimisation only
    return mean, precision


def _measure_world():
    import random

    import torch

    from .world.concepts import all_concepts
    from .world.references import render_references

    n_concepts, per, seed = BANK
    train = [c for c in all_concepts() if not c.heldout]
    renders = []
    for c in random.Random(0).sample(train, n_concepts):
        renders += render_references(c, n=per, seed=seed)[0]
    f = torch.cat([_features(renders[i:i + 128]) for i in range(0, len(renders), 128)]).double()
    mean = f.mean(0)
    x = f - mean
    cov = x.T @ x / len(x)
    cov = cov + SHRINK * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    return mean.contiguous(), torch.linalg.inv(cov).contiguous()
