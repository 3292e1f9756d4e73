"""Captions name the subject: the identifier goes in front of the class noun.

DreamBooth-style training binds the identifier to the subject through the class noun it stands before ("a sks dog"),
and the encoder methods inject the subject at the identifier's position, so every caption must name the class.
"a woman on a beach" with class "woman" trains as "a sks woman on a beach". The match is case-insensitive, on
whole words (a hyphenated compound such as "dog-shaped" is not the noun), first occurrence only. Plurals are not
matched on purpose: "two dogs" names several subjects, while the condition shows one.
"""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=64)
def class_pattern(class_noun: str, identifier: str) -> re.Pattern:
    """The class noun as a whole word (words of a multi-word noun separated by any spaces), optionally already
    preceded by the identifier."""
    words = class_noun.split()
    if not words:
        raise ValueError("the class noun is empty")
    noun = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![\w-])(?P<id>{re.escape(identifier)}\s+)?(?P<noun>{noun})(?![\w-])", re.IGNORECASE)


def clean(text: str | None) -> str:
    """Whitespace-normalised caption (lines joined with spaces, as kohya's caption files are read)."""
    return " ".join((text or "").split())


def rewrite_caption(caption: str | None, class_noun: str, identifier: str) -> str | None:
    """'a woman on a beach' -> 'a sks woman on a beach'; None when the caption does not name the class noun.

    A caption that already has the identifier in front of the noun is kept as it is.
    """
    text = clean(caption)
    m = class_pattern(class_noun, identifier).search(text)
    if m is None:
        return None
    if m.group("id"):
        return text
    return f"{text[:m.start('noun')]}{identifier} {text[m.start('noun'):]}"
