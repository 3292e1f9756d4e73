"""Captions: the identifier goes in front of the class noun; a caption without it is skipped (None)."""

from __future__ import annotations

import pytest

from boothkit.data import rewrite_caption


@pytest.mark.parametrize("caption, noun, expected", [
    ("a woman on a beach", "woman", "a sks woman on a beach"),
    ("A Woman on a beach", "woman", "A sks Woman on a beach"),  # case-insensitive, the caption's case kept
    ("a woman and a woman", "woman", "a sks woman and a woman"),  # first occurrence only
    ("a sks woman on a beach", "woman", "a sks woman on a beach"),  # already there: unchanged
    ("a stuffed   animal\non a bed", "stuffed animal", "a sks stuffed animal on a bed"),  # multi-word, spaces
    ("woman, 1girl, solo", "woman", "sks woman, 1girl, solo"),  # kohya tag lists; at the start
    ("the dog's ball", "dog", "the sks dog's ball"),
    ("a snowman on a hill", "man", None),  # not inside another word
    ("a dog-shaped cake", "dog", None),  # nor a hyphenated compound
    ("two dogs on a beach", "dog", None),  # plurals name several subjects: skipped on purpose
    ("", "dog", None),
    (None, "dog", None),
])
def test_rewrite(caption, noun, expected):
    assert rewrite_caption(caption, noun, "sks") == expected


def test_identifier_with_symbols_is_literal():
    assert rewrite_caption("a person smiling", "person", "<e4t>") == "a <e4t> person smiling"
    assert rewrite_caption("a <e4t> person smiling", "person", "<e4t>") == "a <e4t> person smiling"
