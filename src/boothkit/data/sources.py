"""`--data`: one entry that recognises a source by what is there, scans it, and refuses bad data up front.

The scan reads captions and checks files exist (no pixels: cheap, and done before any model loads). Errors, each
one sentence: a wrong path, an empty dataset, no captions at all, the class noun in no caption (with how many
captions were read and one example). Records that cannot train are skipped and counted, with one warning.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..inputs import InputError
from .base import MapSource
from .folder import FolderSource, is_imagefolder
from .hf import Columns, HFSource
from .record import ScanReport
from .wds import SCAN_SAMPLES, WdsSource, looks_like_shards
from .world import WorldOptions, WorldSource

#: what `datasets.load_dataset` may be given: "name" or "owner/name" (tried when no such file or folder exists)
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_HF_SAVED = ("dataset_info.json", "state.json", "dataset_dict.json")  #: what `save_to_disk` writes


def kind_of(spec: str) -> str:
    """world, hf, imagefolder, folder, wds or hub (a load_dataset name), by what is at `spec`; InputError when
    nothing usable is there."""
    if spec == "world":
        return "world"
    p = Path(spec).expanduser()
    if p.is_file():
        if spec.endswith(".tar"):
            return "wds"
        raise InputError(f"--data {spec}: a file that is not a .tar shard; give a folder, a dataset or shards")
    if p.is_dir():
        if any((p / f).is_file() for f in _HF_SAVED):
            return "hf"
        if is_imagefolder(p):
            return "imagefolder"
        if looks_like_shards(spec):
            return "wds"
        return "folder"
    if looks_like_shards(spec):
        return "wds"
    if _HUB_NAME.fullmatch(spec) and not spec.startswith("."):
        return "hub"
    raise InputError(f"--data {spec}: no such file or folder")


def check_scan(report: ScanReport, class_noun: str) -> None:
    """InputError when nothing can train, naming why (see the module docstring)."""
    if report.usable:
        return
    sk = report.skipped
    where = "the first shard's first samples" if report.partial else "the data"
    if not report.read:
        raise InputError(f"--data {report.spec}: {where} hold no records")
    captioned = report.read - sk.get("no_caption", 0)
    if not captioned:
        raise InputError(f"--data {report.spec}: {report.read} records but no captions in {where} (kohya: photo.txt "
                         "beside photo.jpg; imagefolder: metadata.jsonl with file_name and text; datasets: a text or "
                         "caption column; shards: a .txt per sample)")
    if sk.get("no_class_noun"):
        example = report.examples["no_class_noun"][0]
        raise InputError(f"--data {report.spec}: the class noun {class_noun!r} is in none of the "
                         f"{sk['no_class_noun']} captions read (e.g. {example}); each caption must name the subject "
                         "by its class noun, as in 'a photo of a " + class_noun + " on a beach'")
    raise InputError(f"--data {report.spec}: none of the {report.read} records in {where} can train: "
                     f"{report.reasons()}")


def open_source(spec: str = "world", *, class_noun: str, identifier: str = "sks", columns: Columns | None = None,
                world: WorldOptions | None = None, scan_samples: int = SCAN_SAMPLES) -> MapSource | WdsSource:
    """`--data` -> a scanned source, ready for `build_loader`. Raises InputError (see the module docstring).

    class_noun: what each caption must name ("all" only for the world: each scene names its own class).
    identifier: the word put in front of the class noun ("sks"). columns: column names (datasets; imagefolder's
    caption column). world: the world's options. scan_samples: how many samples of the first shard a WebDataset
    scan reads.
    """
    class_noun = " ".join((class_noun or "").split())
    if not class_noun:
        raise InputError("--class: give the class noun the captions name (e.g. person, dog)")
    if not identifier or len(identifier.split()) != 1:
        raise InputError(f"identifier must be one word (got {identifier!r})")
    kind = kind_of(spec)
    if kind != "world" and class_noun == "all":
        raise InputError(f"--data {spec}: --class all is for the world only; real captions name one class noun")
    if kind == "world":
        src = WorldSource(class_noun=class_noun, identifier=identifier, options=world)
    elif kind in ("hf", "hub"):
        src = HFSource(spec, class_noun=class_noun, identifier=identifier, columns=columns, local=kind == "hf")
    elif kind == "wds":
        src = WdsSource(spec, class_noun=class_noun, identifier=identifier, scan_samples=scan_samples)
    else:
        src = FolderSource(Path(spec).expanduser(), class_noun=class_noun, identifier=identifier, spec=spec,
                           caption_column=(columns or Columns()).caption)
    check_scan(src.report, class_noun)
    src.report.warn()
    return src
