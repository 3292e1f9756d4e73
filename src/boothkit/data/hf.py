"""Hugging Face `datasets` as pretraining data: a `save_to_disk` folder or a `load_dataset`-able name.

Columns (configurable, with defaults that match the common layouts): the image (`image`: an Image feature, a path
or bytes), the caption (`text`, else `caption`), an optional mask (`mask`: an Image feature or a path, white =
subject), an optional bbox (`bbox`: [x0, y0, x1, y1] pixels) and an optional key column (else the row number).
Images are read undecoded (`Image(decode=False)`) and go through boothkit's one decoder like every other photo.
The scan reads the caption column only (and the bbox column when there is one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import InputError
from ..training.config import DictConfig
from .base import MapSource, assemble
from .captions import clean, rewrite_caption
from .masks import parse_bbox
from .record import Record, ScanReport, Unusable


@dataclass
class Columns(DictConfig):
    """Which columns of a dataset (or fields of a metadata row) hold what; empty = the default names."""

    image: str = "image"  #: the photo: an Image feature, a file path or bytes
    caption: str = ""  #: the caption; "" = `text`, else `caption`
    mask: str = "mask"  #: optional subject mask (Image feature or path; white = subject); missing column = none
    bbox: str = "bbox"  #: optional [x0, y0, x1, y1] subject box in pixels; missing column = none
    key: str = "key"  #: optional record name (warnings, held-out choice); missing column = the row number
    split: str = "train"  #: the split of a DatasetDict (a folder with several splits, or a hub dataset)


def _load(spec: str, split: str, local: bool):
    """-> a datasets.Dataset, or InputError with one clear sentence."""
    import datasets

    try:
        if local:
            ds = datasets.load_from_disk(spec)
        else:
            ds = datasets.load_dataset(spec, split=split)
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ConnectionError, DatasetNotFoundError)
        why = f"{type(e).__name__}: {str(e)[:200]}"
        if local:
            raise InputError(f"--data {spec}: datasets.load_from_disk could not open it ({why})") from e
        raise InputError(f"--data {spec}: no such file or folder, and datasets.load_dataset could not load it as a "
                         f"dataset name ({why})") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            if len(ds) != 1:
                raise InputError(f"--data {spec}: no split {split!r} (splits: {', '.join(ds)})")
            split = next(iter(ds))
        ds = ds[split]
    return ds


class HFSource(MapSource):
    """Rows of a `datasets.Dataset` (map-style; memory-mapped Arrow, so workers share it)."""

    kind = "hf"

    def __init__(self, spec: str, *, class_noun: str, identifier: str, columns: Columns | None = None,
                 local: bool = True):
        from datasets import Image as ImageFeature

        self.spec, self.class_noun, self.identifier = spec, class_noun, identifier
        cols = columns or Columns()
        ds = _load(spec, cols.split, local)
        names = set(ds.column_names)
        if cols.image not in names:
            raise InputError(f"--data {spec}: no image column {cols.image!r} (columns: {', '.join(sorted(names))})")
        caption = cols.caption or next((c for c in ("text", "caption") if c in names), "text")
        if caption not in names:
            raise InputError(f"--data {spec}: no captions: no column {caption!r} (columns: "
                             f"{', '.join(sorted(names))}); name the caption column")
        self.image_col, self.caption_col = cols.image, caption
        self.mask_col = cols.mask if cols.mask in names else None
        self.bbox_col = cols.bbox if cols.bbox in names else None
        self.key_col = cols.key if cols.key in names else None
        for c in (self.image_col, self.mask_col):  # undecoded: bytes go through boothkit.images.decode
            if c and isinstance(ds.features[c], ImageFeature):
                ds = ds.cast_column(c, ImageFeature(decode=False))
        keep = [c for c in (self.image_col, self.caption_col, self.mask_col, self.bbox_col, self.key_col) if c]
        self.ds = ds.select_columns(list(dict.fromkeys(keep)))
        self.base = Path(spec) if local else None  # relative paths in a local dataset are relative to it
        self._scan()

    def _scan(self) -> None:
        rep = self.report = ScanReport(self.spec, self.kind)
        if len(self.ds) == 0:
            raise InputError(f"--data {self.spec}: the dataset has no rows")
        table = self.ds.with_format("arrow")  # columns as Arrow arrays, through any indices mapping (select/shuffle)
        texts = table[self.caption_col].to_pylist()
        boxes = table[self.bbox_col].to_pylist() if self.bbox_col else [None] * len(texts)
        keys = table[self.key_col].to_pylist() if self.key_col else None
        # which rows have a mask: Arrow's validity bitmap, no image bytes read
        masked = table[self.mask_col].is_valid().to_pylist() if self.mask_col else [False] * len(texts)
        self.rows: list[int] = []  # dataset row of each usable record
        self.captions: list[str] = []
        self.boxes: list[tuple | None] = []
        self._keys = keys
        for i, (text, box) in enumerate(zip(texts, boxes)):
            rep.read += 1
            where = f"row {i}" + (f" ({keys[i]})" if keys else "")
            if not clean(text if isinstance(text, str) else None):
                rep.skip("no_caption", where)
                continue
            cap = rewrite_caption(text, self.class_noun, self.identifier)
            if cap is None:
                rep.skip("no_class_noun", f"{where}: {clean(text)[:60]!r}")
                continue
            try:
                box = parse_bbox(box)
            except (ValueError, TypeError) as e:
                rep.skip("bad_bbox", f"{where}: {e}")
                continue
            self.rows.append(i)
            self.captions.append(cap)
            self.boxes.append(box)
            rep.usable += 1
            rep.without_mask += box is None and not masked[i]

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, i: int) -> str:
        row = self.rows[i]
        return str(self._keys[row]) if self._keys else str(row)

    def _data(self, value, what: str, name: str):
        """An Image feature's dict, a path or bytes -> a path or bytes for the decoder."""
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value:
            p = Path(value)
            if not p.is_absolute() and self.base is not None and not p.exists():
                p = self.base / p
            return p
        raise Unusable(f"{name}: no {what} in column {self.image_col if what == 'image' else self.mask_col!r}",
                       "unreadable" if what == "image" else "bad_mask")

    def load(self, i: int, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Record:
        row = self.ds[self.rows[i]]
        name = f"{self.spec} row {self.rows[i]}"
        data = self._data(row[self.image_col], "image", name)
        mask = row.get(self.mask_col) if self.mask_col else None
        mask = self._data(mask, "mask", name) if mask is not None else None
        return assemble(self.key(i), data, self.captions[i], name=name, mask=mask, bbox=self.boxes[i],
                        min_side=min_side, max_pixels=max_pixels, meta={"source": self.kind, "class": self.class_noun})
