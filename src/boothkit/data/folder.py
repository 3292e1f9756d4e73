"""Folders of captioned photos, in the two layouts users already have.

- kohya: `photo.jpg` + `photo.txt` (or `photo.caption`) beside it, in the folder or any subfolder (kohya's
  `10_name/` repeat folders are just subfolders here); caption lines are joined with spaces.
- Hugging Face imagefolder: `metadata.jsonl` (or `metadata.csv`) at the top with `file_name` (relative to it) and
  `text` (or `caption`), optionally `mask` (a mask image's path, white = subject) and `bbox` ([x0, y0, x1, y1]
  pixels).

The scan reads captions and checks that files exist; pixels are read by the loader's workers.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import EXTENSIONS, InputError
from .base import MapSource, assemble
from .captions import clean, rewrite_caption
from .masks import parse_bbox
from .record import Record, ScanReport

CAPTION_EXTENSIONS = (".txt", ".caption")  #: kohya's caption files, first found wins
METADATA = ("metadata.jsonl", "metadata.csv")  #: Hugging Face imagefolder's metadata files
CAPTION_COLUMNS = ("text", "caption")  #: the caption column when none is named


@dataclass
class _Row:
    key: str  #: path relative to the folder, without its suffix
    image: Path
    caption: str  #: rewritten
    mask: Path | None = None
    bbox: tuple | None = None


def is_imagefolder(root: Path) -> bool:
    return any((root / m).is_file() for m in METADATA)


class FolderSource(MapSource):
    """A caption folder (kohya) or an imagefolder (metadata.jsonl/csv)."""

    def __init__(self, root: str | Path, *, class_noun: str, identifier: str, spec: str | None = None,
                 caption_column: str = ""):
        self.root = Path(root)
        self.spec = spec or str(root)
        self.class_noun, self.identifier = class_noun, identifier
        self.kind = "imagefolder" if is_imagefolder(self.root) else "folder"
        self.report = ScanReport(self.spec, self.kind)
        self.rows: list[_Row] = []
        if self.kind == "imagefolder":
            self._scan_metadata(caption_column)
        else:
            self._scan_kohya()

    # --- scans ---------------------------------------------------------------------------------------------------

    def _accept(self, key: str, image: Path, text: str | None, where: str, **extra) -> None:
        rep = self.report
        rep.read += 1
        if not clean(text):
            rep.skip("no_caption", where)
            return
        caption = rewrite_caption(text, self.class_noun, self.identifier)
        if caption is None:
            rep.skip("no_class_noun", f"{where}: {clean(text)[:60]!r}")
            return
        self.rows.append(_Row(key, image, caption, **extra))
        rep.usable += 1
        rep.without_mask += extra.get("mask") is None and extra.get("bbox") is None

    def _scan_kohya(self) -> None:
        files = sorted(p for p in self.root.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        images = [f for f in files if f.suffix.lower() in EXTENSIONS]
        if not images:
            what = f"{len(files)} files but no photos ({', '.join(EXTENSIONS)})" if files else "the folder is empty"
            raise InputError(f"--data {self.spec}: {what}")
        for f in images:
            rel = f.relative_to(self.root)
            text, where = None, str(rel)
            for ext in CAPTION_EXTENSIONS:
                cap = f.with_suffix(ext)
                if cap.is_file():
                    where = str(cap.relative_to(self.root))
                    try:
                        text = cap.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as e:
                        where = f"{where} (not readable as UTF-8 text: {e})"
                    break
            else:
                where = f"{rel} (no {' or '.join(CAPTION_EXTENSIONS)} beside it)"
            self._accept(str(rel.with_suffix("")), f, text, where)

    def _metadata_rows(self):
        """-> (line label, dict) per metadata row; a line that is not a JSON object is reported and skipped."""
        jsonl = self.root / METADATA[0]
        if jsonl.is_file():
            for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row = e
                if not isinstance(row, dict):
                    self.report.read += 1
                    self.report.skip("bad_metadata", f"{jsonl.name} line {n}: not a JSON object")
                    continue
                yield f"{jsonl.name} line {n}", row
            return
        with open(self.root / METADATA[1], newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield f"{METADATA[1]} line {n}", row

    def _scan_metadata(self, caption_column: str) -> None:
        rows = list(self._metadata_rows())
        if not rows and not self.report.read:
            raise InputError(f"--data {self.spec}: {METADATA[0]} has no rows")
        columns = set().union(*(r.keys() for _, r in rows)) if rows else set()
        col = caption_column or next((c for c in CAPTION_COLUMNS if c in columns), CAPTION_COLUMNS[0])
        for where, row in rows:
            name = row.get("file_name")
            if not name:
                self.report.read += 1
                self.report.skip("bad_metadata", f"{where}: no file_name")
                continue
            image = self.root / name
            if not image.is_file():
                self.report.read += 1
                self.report.skip("missing_file", f"{where}: {name} does not exist")
                continue
            mask = self.root / row["mask"] if row.get("mask") else None
            if mask is not None and not mask.is_file():
                self.report.read += 1
                self.report.skip("missing_file", f"{where}: mask {row['mask']} does not exist")
                continue
            try:
                bbox = parse_bbox(row.get("bbox"))
            except (ValueError, TypeError) as e:
                self.report.read += 1
                self.report.skip("bad_bbox", f"{where}: {e}")
                continue
            self._accept(str(Path(name).with_suffix("")), image, row.get(col), f"{name} ({where})", mask=mask,
                         bbox=bbox)

    # --- records -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, i: int) -> str:
        return self.rows[i].key

    def load(self, i: int, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Record:
        r = self.rows[i]
        return assemble(r.key, r.image, r.caption, name=str(r.image), mask=r.mask, bbox=r.bbox, min_side=min_side,
                        max_pixels=max_pixels, meta={"source": self.kind, "class": self.class_noun})
