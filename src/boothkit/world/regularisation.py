"""The world model's regularisation captions for Custom Diffusion's closed-form merge.

Scene-caption templates over every class noun of the world (plus the concepts' own), naming the world's backgrounds
and positions as its captions do: the ordinary text whose behaviour the merged weights must keep on the world model.
`boothkit merge` uses them by default when --model is the world model; on other models the user gives real captions
(--reg-captions), as the paper does.
"""

from __future__ import annotations

from .concepts import CLASSES
from .scenes import BACKGROUNDS, POSITIONS

#: caption templates ({} the class noun; a second {} a background colour or a position)
TEMPLATES = ("a photo of a {}", "a {} on a {} background", "a photo of a {} in the {}", "a small {}",
             "a large {} in the center", "{} background", "a grayscale photo of a {}", "an outline of a {}")


def regularisation_captions(classes: list[str]) -> list[str]:
    """Every template for the concepts' classes and then the world's 7 (each noun once): 8 captions per noun."""
    nouns = list(dict.fromkeys(list(classes) + list(CLASSES)))
    bgs = list(BACKGROUNDS)
    caps = []
    for i, noun in enumerate(nouns):
        for j, t in enumerate(TEMPLATES):
            if t.count("{}") == 1:
                caps.append(t.format(noun))
            else:
                other = bgs[(i + j) % len(bgs)] if "background" in t else POSITIONS[(i + j) % len(POSITIONS)]
                caps.append(t.format(noun, other))
    return caps
