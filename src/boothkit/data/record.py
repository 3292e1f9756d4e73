"""The one record every data source yields, and what a source's scan found before any pixel was read."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from PIL import Image

from ..inputs import InputError


@dataclass
class Record:
    """One training example, the same whichever source it came from (world, caption folder, datasets, shards)."""

    image: Image.Image  #: the photo, RGB (transparency composited on white by boothkit.images.decode)
    caption: str  #: rewritten: the identifier stands in front of the class noun ("a sks woman on a beach")
    key: str  #: stable name of the record in its source (relative path, row, shard#key): warnings, held-out sets
    mask: Image.Image | None = None  #: subject mask "L", the image's size, 255 = subject; None = not known
    condition: Image.Image | None = None  #: another photo of the same subject (RGB), when the source has one
    condition_mask: Image.Image | None = None  #: the condition's subject mask ("L", the condition's size)
    meta: dict = field(default_factory=dict)  #: facts for logs: mask_from (alpha/file/bbox), class, concept, ...


class Unusable(InputError):
    """A record that cannot train (unreadable, blank, bad mask): skipped and counted, never fatal.

    `reason` is the counter it goes to (the `skipped` counts of a batch)."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


#: how many example lines a scan keeps per skip reason (the rest are counted only)
EXAMPLES = 3


@dataclass
class ScanReport:
    """What a source's scan read (captions and file existence, no pixels) and what it left out, by reason."""

    spec: str  #: the --data value as given
    kind: str  #: world, folder (kohya .txt), imagefolder (metadata.jsonl/csv), hf, wds
    read: int = 0  #: records found (with or without a usable caption)
    usable: int = 0  #: records that will train (caption names the class noun, files exist)
    skipped: dict[str, int] = field(default_factory=dict)  #: reason -> count (no_caption, no_class_noun, ...)
    examples: dict[str, list[str]] = field(default_factory=dict)  #: reason -> a few "file: why" lines
    #: usable records with no mask file/column and no bbox: an alpha channel (found at decoding) or a segmenter
    #: gives them a mask, else the whole image is the subject
    without_mask: int = 0
    partial: bool = False  #: only part of the data was read (WebDataset: the first shard's first samples)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        lines = self.examples.setdefault(reason, [])
        if len(lines) < EXAMPLES:
            lines.append(example)

    def reasons(self) -> str:
        """'1 no caption (e.g. a.jpg), 2 no class noun (e.g. b.txt: 'a cat'; ...)'."""
        return ", ".join(f"{n} {reason.replace('_', ' ')} (e.g. {'; '.join(self.examples.get(reason, []))})"
                         for reason, n in sorted(self.skipped.items()))

    def summary(self) -> str:
        """One line: how many records were read, kept and skipped (by reason, with examples)."""
        scope = " (first samples of the first shard)" if self.partial else ""
        skipped = f"; skipped {sum(self.skipped.values())}: {self.reasons()}" if self.skipped else ""
        return f"--data {self.spec}: {self.usable} of {self.read} records usable{scope}{skipped}"

    def warn(self) -> None:
        """One warning when records were skipped (nothing when all are usable)."""
        if self.skipped:
            warnings.warn(self.summary(), stacklevel=3)
