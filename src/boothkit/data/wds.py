"""WebDataset `.tar` shards: data that does not fit on one disk, streamed.

`--data` is one shard, a folder of shards, or a brace pattern (`shards-{000..009}.tar`; also `::`-joined lists and
URLs that `webdataset.gopen` opens). A sample is the files of one key: the photo (`jpg`, `jpeg`, `png` or `webp`),
its caption (`txt`, or `caption`/`text` in `json`), optionally a mask image (`mask.png`, ...; white = subject) and a
bbox (`json`: {"bbox": [x0, y0, x1, y1]} in pixels).

Splitting, so that no two processes and no two loader workers read the same sample: the shards are dealt to the
processes (shard j to rank j mod world_size), and each rank's shards to a fixed number of streams (`streams`, at
least one per loader worker). Each stream reads its shards in an order reshuffled every pass (seeded by seed, rank,
stream and pass), drops samples without a caption that names the class noun (counted), and shuffles through a
seeded buffer. So the stream is a pure function of (seed, rank, world size, streams, buffer size), whatever the
number of workers, and a resumed run gets its place back by replaying the streams up to the samples already
consumed (reading tar bytes and captions, no pixel decoding).

The scan reads the first `scan_samples` samples of the first shard only: the first shard's captions stand for the
rest, which cannot be read up front.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Iterator

import numpy as np

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import InputError
from .base import assemble
from .captions import clean, rewrite_caption
from .masks import parse_bbox
from .record import Record, ScanReport

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")  #: a sample's photo, first found wins
MASK_KEYS = ("mask.png", "mask.jpg", "mask.jpeg", "mask.webp")  #: a sample's optional mask image
SCAN_SAMPLES = 256  #: samples of the first shard the scan reads


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def looks_like_shards(spec: str) -> bool:
    """A .tar file, a pattern of them, or a folder holding .tar files (and no photos)."""
    from ..inputs import EXTENSIONS

    p = Path(spec)
    if p.is_dir():
        return any(p.glob("*.tar")) and not any(f.suffix.lower() in EXTENSIONS for f in p.iterdir())
    return spec.endswith(".tar") or ("{" in spec and ".tar" in spec) or "::" in spec


def expand_shards(spec: str) -> list[str]:
    """--data -> shard URLs (local paths checked to exist); InputError when none or some are missing."""
    from webdataset.shardlists import expand_urls

    p = Path(spec)
    if p.is_dir():
        shards = sorted(str(f) for f in p.glob("*.tar"))
    else:
        shards = expand_urls(spec)
    if not shards:
        raise InputError(f"--data {spec}: no .tar shards there")
    missing = [s for s in shards if not is_remote(s) and not Path(s).is_file()]
    if missing:
        raise InputError(f"--data {spec}: {len(missing)} of {len(shards)} shards do not exist (first: {missing[0]})")
    return shards


@dataclass
class Raw:
    """A sample before decoding: what the shuffle buffer holds (bytes, no pixels)."""

    key: str  #: shard#key: tar keys repeat across shards
    image: bytes
    name: str  #: how warnings name it: shard#key.ext
    caption: str  #: rewritten
    mask: bytes | None = None
    bbox: tuple | None = None


def parse(sample: dict, class_noun: str, identifier: str) -> Raw | tuple[str, str]:
    """A webdataset sample dict -> Raw, or (skip reason, example) when it cannot train."""
    url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
    where = f"{Path(url).name}#{key}"
    ext = next((e for e in IMAGE_KEYS if e in sample), None)
    if ext is None:
        return "no_image", f"{where} (no {'/'.join(IMAGE_KEYS)} file)"
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            return "bad_metadata", f"{where}.json is not JSON"
        if not isinstance(meta, dict):
            return "bad_metadata", f"{where}.json is not a JSON object"
    text = None
    if "txt" in sample:
        try:
            text = sample["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return "no_caption", f"{where}.txt is not UTF-8 text"
    text = text if text is not None else meta.get("caption", meta.get("text"))
    if not clean(text if isinstance(text, str) else None):
        return "no_caption", where
    caption = rewrite_caption(text, class_noun, identifier)
    if caption is None:
        return "no_class_noun", f"{where}: {clean(text)[:60]!r}"
    try:
        bbox = parse_bbox(meta.get("bbox"))
    except (ValueError, TypeError) as e:
        return "bad_bbox", f"{where}: {e}"
    mask = next((sample[m] for m in MASK_KEYS if m in sample), None)
    return Raw(f"{url}#{key}", sample[ext], f"{url}#{key}.{ext}", caption, mask, bbox)


class _Counter:
    """A webdataset exception handler that counts unreadable shards/members, warns once each, and continues."""

    def __init__(self, counts: dict):
        self.counts = counts

    def __call__(self, exn: Exception) -> bool:
        self.counts["unreadable_shard"] = self.counts.get("unreadable_shard", 0) + 1
        warnings.warn(f"WebDataset shard skipped from here: {str(exn)[:200]}", stacklevel=2)
        return True


def _samples(urls: list[str], counts: dict) -> Iterator[dict]:
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples(({"url": u} for u in urls), handler=_Counter(counts))


def _rng(*words: int) -> random.Random:
    return random.Random(int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0]))


_SHARD_ORDER, _BUFFER = 0x5A4D, 0x5B0F  #: salts of the shard-order and shuffle-buffer generators


class WdsSource:
    """WebDataset shards (a stream: the loader reads it through `stream`, never by index)."""

    kind = "wds"
    has_condition = False

    def __init__(self, spec: str, *, class_noun: str, identifier: str, scan_samples: int = SCAN_SAMPLES):
        self.spec, self.class_noun, self.identifier = spec, class_noun, identifier
        self.shards = expand_shards(spec)
        self.scan_samples = scan_samples
        self._scan()

    def _scan(self) -> None:
        rep = self.report = ScanReport(self.spec, self.kind, partial=True)
        counts: dict = {}
        self._first: list[Raw] = []  # usable samples of the scan, in shard order: the held-out candidates
        for n, sample in enumerate(_samples(self.shards[:1], counts)):
            if n >= self.scan_samples:
                break
            rep.read += 1
            r = parse(sample, self.class_noun, self.identifier)
            if isinstance(r, tuple):
                rep.skip(*r)
                continue
            rep.usable += 1
            rep.without_mask += r.mask is None and r.bbox is None
            self._first.append(r)
        if counts and not rep.read:
            raise InputError(f"--data {self.spec}: the first shard {self.shards[0]} cannot be read as a tar file")
        if not rep.read:
            raise InputError(f"--data {self.spec}: the first shard {self.shards[0]} holds no samples")

    def heldout(self, n: int) -> list[Raw]:
        """The first n usable samples of the first shard: kept out of training for validation grids."""
        return self._first[:max(0, n)]

    def load(self, raw: Raw, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Record:
        """A streamed sample with its pixels; raises Unusable."""
        return assemble(raw.key, raw.image, raw.caption, name=raw.name, mask=raw.mask, bbox=raw.bbox,
                        min_side=min_side, max_pixels=max_pixels, meta={"source": self.kind, "class": self.class_noun})

    def validation(self, n: int, **kw) -> list[Record]:
        out = []
        for r in self.heldout(n):
            try:
                out.append(self.load(r, **kw))
            except InputError as e:
                warnings.warn(f"validation record skipped: {e}", stacklevel=2)
        return out

    def stream_shards(self, rank: int, world_size: int, index: int, streams: int) -> list[str]:
        """The shards of stream `index` of process `rank`: shard j goes to rank j mod world_size, and a rank's k-th
        shard to stream k mod streams."""
        return self.shards[rank::world_size][index::streams]

    def stream(self, *, rank: int, world_size: int, index: int, streams: int, seed: int, buffer: int,
               exclude: set[str], counts: dict) -> Iterator[Raw]:
        """Endless usable samples of one stream, shuffled (see the module docstring); skips go to `counts`."""
        from webdataset.filters import shuffle

        shards = self.stream_shards(rank, world_size, index, streams)

        def passes() -> Iterator[Raw]:
            for p in count():
                order = list(shards)
                _rng(_SHARD_ORDER, seed, rank, index, p).shuffle(order)
                got = 0
                for sample in _samples(order, counts):
                    r = parse(sample, self.class_noun, self.identifier)
                    if isinstance(r, tuple):
                        counts[r[0]] = counts.get(r[0], 0) + 1
                        continue
                    if r.key in exclude:
                        continue
                    got += 1
                    yield r
                if not got:
                    raise InputError(f"--data {self.spec}: the {len(shards)} shard(s) of process {rank}, stream "
                                     f"{index} (first: {shards[0]}) hold no usable sample")

        if buffer <= 1:
            return passes()
        return shuffle(buffer, buffer, rng=_rng(_BUFFER, seed, rank, index))(passes())
