"""Subject photos in, concept folders out: loading, validating and converting user input.

Every problem with a user's photos is either a clear `InputError` naming the file and what is wrong, or (when
enough good photos remain) a warning that lists each skipped file. Nothing is fixed silently.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
from .images import MAX_PIXELS, MIN_SIDE  # noqa: E402,F401  (re-exported: callers read them here)
MAX_IMAGES = 20
CONCEPT_FILE = "concept.json"


class InputError(ValueError):
    """Bad subject photos or arguments: reported to the user; nothing is written to --out."""


@dataclass
class Skipped:
    path: Path
    reason: str


def load_image(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """One photo -> RGB PIL image with EXIF orientation applied (boothkit.images.decode, the one decoder).
    Raises InputError saying what is wrong. A blank photo is returned as it is: the subject-photo loaders below
    decide what a blank photo in a set means (images.blank_reason)."""
    return _read(path, min_side, max_pixels)[0]


def _read(path, min_side: int, max_pixels: int):
    """-> (RGB image, alpha mask or None) of one photo file. What the file holds decides, not its name: a PNG
    named .jpg is read, a GIF named .png is refused as a GIF (boothkit.images.decode)."""
    from .images import decode

    return decode(Path(path), min_side=min_side, max_pixels=max_pixels, with_alpha=True)


def load_subject_images(images: str | Path | list, min_images: int = 1, max_images: int = MAX_IMAGES,
                        min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """Subject photos -> RGB images: `images` is a folder of photos, one photo file, or a list of folders and
    photo files (a folder's photos sorted by file name, in the list's order).

    Bad files (not an image, corrupt, too small or too large) and blank photos (fully transparent, or a single
    colour: images.blank_reason) are skipped with one warning each, naming the file and the reason, as long as at
    least `min_images` good ones remain; otherwise an InputError lists every problem, so a set of only blank
    photos is refused. A photo with transparency is composited on white and keeps its alpha channel as
    ``image.info["alpha"]`` ("L"): the encoder methods' subject mask (boothkit.data.masks.reference_masks). Caption files (`.txt`, see `load_captioned_images`) are not photos: in a folder they are
    left out, with a warning that says how to train with them; named on their own they are an error.
    """
    return [im for _, im in _subject_files(images, min_images, max_images, min_side, max_pixels, captions=False)]


CAPTION_EXT = ".txt"


def load_captioned_images(images: str | Path | list, token: str, min_images: int = 1, max_images: int = MAX_IMAGES,
                          min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
                          ) -> tuple[list[Image.Image], list[str]]:
    """Photos with their captions, kohya's way: `photo.png` is trained with the text of `photo.txt` beside it.

    Every photo needs a caption, and every caption must name the subject by its identifier (`token`, e.g. "sks",
    as a word of its own: "sks dog, on a beach" or "a photo of sks dog on a beach"); otherwise an InputError lists
    each photo that lacks one. Lines are joined with spaces. -> (images, captions), in file-name order.
    """
    import re

    pairs = _subject_files(images, min_images, max_images, min_side, max_pixels, captions=True)
    word = re.compile(rf"(?<![\w<>]){re.escape(token)}(?![\w<>])")
    captions, problems = [], []
    for f, _ in pairs:
        txt = f.with_suffix(CAPTION_EXT)
        if not txt.is_file():
            problems.append(f"{f}: no caption file {txt.name}")
            continue
        try:
            text = " ".join(txt.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{txt}: not readable as UTF-8 text ({e})")
            continue
        if not word.search(text):
            problems.append(f"{txt}: {text[:60]!r} does not name the subject by its identifier {token!r}")
        captions.append(text)
    if problems:
        raise InputError("--captions: every photo needs a caption file that names the subject by its identifier "
                         f"({token!r}):\n  " + "\n  ".join(problems))
    return [im for _, im in pairs], captions


def _photo_files(images) -> tuple[list[Path], list[Path], str, bool]:
    """--images (a folder, a file, or a list of them) -> (photo files, caption files found in folders, how
    messages name the input, whether it is one folder)."""
    items = [Path(p) for p in images] if isinstance(images, (list, tuple)) else [Path(images)]
    if not items:
        raise InputError("--images: no folder or photo given")
    where = str(items[0]) if len(items) == 1 else ", ".join(map(str, items[:3])) + (" ..." if len(items) > 3 else "")
    files, texts = [], []
    for item in items:
        if not item.exists():
            raise InputError(f"--images {item}: no such file or folder")
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
            texts += [f for f in found if f.suffix.lower() == CAPTION_EXT]
            files += [f for f in found if f.suffix.lower() != CAPTION_EXT]
        elif item.suffix.lower() == CAPTION_EXT:
            raise InputError(f"--images {item}: a caption file ({CAPTION_EXT}), not a photo: give photos "
                             f"({', '.join(EXTENSIONS)}) or a folder of them")
        else:
            files.append(item)
    return files, texts, where, len(items) == 1 and items[0].is_dir()


def _subject_files(images, min_images, max_images, min_side, max_pixels, captions: bool) -> list[tuple]:
    """-> [(file, RGB image)] of the usable photos (see load_subject_images)."""
    from .images import blank_reason

    files, texts, where, one_folder = _photo_files(images)
    if texts and not captions:
        warnings.warn(f"--images {where}: {len(texts)} caption file(s) ({CAPTION_EXT}) left out; pass --captions to "
                      "train with them", stacklevel=3)
    if not files:
        what = f"holds only {len(texts)} caption file(s) ({CAPTION_EXT}), no photo" if texts else "the folder is empty"
        raise InputError(f"--images {where}: {what} (put 1-{max_images} photos of the subject in it)")
    good, skipped = [], []
    for f in files:
        try:
            rgb, alpha = _read(f, min_side, max_pixels)
        except InputError as e:
            skipped.append(Skipped(f, str(e)))
            continue
        blank = blank_reason(rgb, alpha)
        if blank:
            skipped.append(Skipped(f, f"{f}: {blank} (nothing to learn from)"))
        else:
            if alpha is not None and alpha.getextrema()[0] < 255:  # a cut-out: the encoder methods' subject mask
                rgb.info["alpha"] = alpha
            good.append((f, rgb))
    if len(good) < min_images:
        if len(files) == 1 and not one_folder:  # the one photo named on its own
            raise InputError(f"--images {skipped[0].reason}")
        if len(skipped) == 1 and not good:
            raise InputError(f"--images {where}: no usable photo: {skipped[0].reason}")
        detail = "\n  ".join(s.reason for s in skipped)
        if not good and all(": blank: " in s.reason for s in skipped):
            raise InputError(f"--images {where}: every photo is blank (nothing to learn from):\n  {detail}")
        raise InputError(f"--images {where}: {len(good)} usable photo(s), need at least {min_images}:\n  {detail}")
    if len(good) > max_images:
        raise InputError(f"--images {where}: {len(good)} photos; use at most {max_images}")
    for s in skipped:  # one line each: the file and the reason
        warnings.warn(f"skipped {s.reason}", stacklevel=3)
    return good


def center_square(im: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then resize to size x size (bicubic)."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)


# --- the output folder -------------------------------------------------------------------------------------------

def is_concept(path: str | Path) -> bool:
    return (Path(path) / CONCEPT_FILE).is_file()


def check_out(out: str | Path, overwrite_concept: bool = True) -> Path:
    """--out must not exist, be an empty folder, or be a concept folder (which a new run replaces). Nothing is
    created here: the folder (and its parents) appear only when the finished result is moved into place."""
    out = Path(out)
    if out.exists():
        if out.is_file():
            raise InputError(f"--out {out}: is a file, not a folder")
        if any(out.iterdir()) and not is_concept(out):
            raise InputError(f"--out {out}: exists and is not a boothkit concept folder (no {CONCEPT_FILE}); "
                             "pick a new folder")
        if is_concept(out) and not overwrite_concept:
            raise InputError(f"--out {out}: a concept already exists there")
    check_creatable(out)
    return out


def check_creatable(out: str | Path, flag: str = "--out") -> Path:
    """`out` is a folder, or can be made one: the nearest folder above it that exists is writable (nothing is
    created; commands create their output only once their inputs are known good). InputError saying why not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out} is not writable: it is a file, not a folder")
    here = out.resolve() if out.exists() else out.resolve().parent
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise InputError(f"{flag} {out} is not writable: {here} is a file, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out} is not writable: {here} is not writable")
    return out


def staging_dir(out: str | Path) -> Path:
    """A fresh temporary folder next to `out` (same file system, so the final rename is atomic)."""
    out = Path(out)
    tmp = out.resolve().parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


@contextmanager
def staged_folder(out: str | Path):
    """`with staged_folder(out) as tmp:` write everything into tmp; when the block succeeds, tmp replaces `out`
    atomically (publish); when anything fails, tmp is removed and `out` is left as it was."""
    tmp = staging_dir(out)
    try:
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_weights_folder(folder: str | Path, tensors: dict, meta: dict | None, config: dict, dims: dict, *,
                        weights: str, meta_file: str, fmt: str, kind: str, is_ours) -> Path:
    """Write a pretrained-weights folder (an InstantBooth or E4T encoder): `weights` (safetensors, fp32 on the CPU,
    metadata format=fmt) and `meta_file` (json: meta, then format, format_version, config, dims, boothkit_version),
    staged and renamed into place. An existing folder is replaced only when `is_ours(folder)`; else refused."""
    import torch
    from safetensors.torch import save_file

    from . import __version__

    folder = Path(folder)
    if folder.exists() and (folder.is_file() or any(folder.iterdir()) and not is_ours(folder)):
        raise InputError(f"--out {folder}: exists and is not {kind} folder; pick a new folder")
    folder.resolve().parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    info = {**(meta or {}), "format": fmt, "format_version": 1, "config": config, "dims": dims,
            "boothkit_version": __version__}
    with staged_folder(folder) as staged:
        save_file(tensors, str(staged / weights), metadata={"format": fmt})
        (staged / meta_file).write_text(json.dumps(info, indent=1))
    return folder


def publish(staged: Path, out: str | Path) -> Path:
    """Move a finished staging folder into place at `out` (replacing an older concept there)."""
    out = Path(out)
    old = None
    if out.exists():
        old = out.resolve().parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staged, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def read_concept(path: str | Path) -> dict:
    path = Path(path)
    if not is_concept(path):
        raise InputError(f"--concept {path}: not a concept folder (no {CONCEPT_FILE})")
    try:
        return json.loads((path / CONCEPT_FILE).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"--concept {path}: {CONCEPT_FILE} is not valid JSON ({e})") from e
