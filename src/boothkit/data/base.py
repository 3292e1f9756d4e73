"""What every map-style source shares: record assembly (decode -> blank check -> mask) and the held-out split.

A map-style source (caption folder, imagefolder, datasets, the world) knows its records by index after its scan;
`load(i)` reads one record's pixels. Sources hold no open files or models, so DataLoader workers can receive them
by fork or by pickling (spawn).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import InputError
from .masks import subject_mask
from .record import Record, ScanReport, Unusable


def heldout_rank(key: str) -> str:
    """The order in which records are held out for validation: a hash of the key, so the choice does not depend on
    the order of the files, the seed or the number of processes."""
    return hashlib.sha1(f"boothkit-heldout:{key}".encode()).hexdigest()


def assemble(key: str, data: str | Path | bytes, caption: str, *, name: str, mask=None, bbox=None,
             min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS, meta: dict | None = None) -> Record:
    """One record from an image (a path or its bytes) and its annotations; raises Unusable saying why not.

    mask: a mask file (path or bytes) or None; bbox: [x0, y0, x1, y1] pixels or None.
    """
    from ..images import blank_reason, decode

    try:
        rgb, alpha = decode(data, name=name, min_side=min_side, max_pixels=max_pixels, with_alpha=True)
    except Unusable:
        raise
    except InputError as e:
        raise Unusable(str(e), "unreadable") from e
    why = blank_reason(rgb, alpha)  # the subject-photo rule (boothkit.images): one colour, or transparent
    if why:
        raise Unusable(f"{name}: {why}", "blank")
    m, source = subject_mask(rgb, alpha, mask=mask, bbox=bbox, name=name)
    return Record(rgb, caption, key, m, meta={**(meta or {}), "mask_from": source})


class TrainIndex:
    """Source indices 0..n-1 without the held-out ones: position p -> source index (cheap to send to workers)."""

    def __init__(self, n: int, excluded: list[int]):
        self.n, self.excluded = n, sorted(set(excluded))

    def __len__(self) -> int:
        return self.n - len(self.excluded)

    def __getitem__(self, p: int) -> int:
        if not 0 <= p < len(self):
            raise IndexError(p)
        i = p
        for e in self.excluded:  # a handful: the validation records
            if e <= i:
                i += 1
            else:
                break
        return i


class MapSource:
    """Base of the map-style sources. Subclasses set `kind`, `spec`, `class_noun`, `identifier`, `report` in their
    scan and implement `__len__`, `key` and `load` (records name their class noun in meta["class"])."""

    kind = "map"
    has_condition = False  #: records carry a `condition` photo of the same subject (the world's second render)
    spec: str
    class_noun: str
    identifier: str
    report: ScanReport

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, i: int) -> str:
        raise NotImplementedError

    def load(self, i: int, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Record:
        """Record i with its pixels; raises Unusable (counted and replaced by the loader)."""
        raise NotImplementedError

    def load_many(self, indices: list[int], **kw) -> list[Record | Unusable]:
        """Several records (a source that renders in batches overrides this); failures are returned, not raised."""
        out = []
        for i in indices:
            try:
                out.append(self.load(i, **kw))
            except Unusable as e:
                out.append(e)
        return out

    def heldout_indices(self, n: int) -> list[int]:
        """The n records kept out of training for validation grids (smallest key hashes)."""
        if n <= 0:
            return []
        cache = self.__dict__.setdefault("_heldout", {})  # hashing every key is the cost: once per n
        if n not in cache:
            cache[n] = sorted(sorted(range(len(self)), key=lambda i: heldout_rank(self.key(i)))[:n])
        return cache[n]

    def train_index(self, n_heldout: int) -> TrainIndex:
        return TrainIndex(len(self), self.heldout_indices(n_heldout))

    def validation(self, n: int, **kw) -> list[Record]:
        """The held-out records with their pixels (unusable ones left out, with their count in the report)."""
        out = []
        for r in self.load_many(self.heldout_indices(n), **kw):
            if isinstance(r, Unusable):
                warnings.warn(f"validation record skipped: {r}", stacklevel=2)
            else:
                out.append(r)
        return out
