"""`boothkit world export-dataset`: world scenes written as a real dataset, for `--data FOLDER`.

Record i of the export is record i of `--data world` with the same seed (boothkit.data.world.WorldSource: a
single-object scene of a TRAIN concept, never a held-out one), written in a layout boothkit.data.folder reads:
- imagefolder (default): `images/NNNNN.png`, `masks/NNNNN.png` (the renderer's alpha, white = subject) and
  `metadata.jsonl` with `file_name`, `text`, `mask` (plus `concept`, `style`: facts for people, not read by training).
- kohya: `NNNNN.png` + `NNNNN.txt`. kohya folders have no mask files, and an alpha channel would replace the
  scene's background with white, so this layout has no masks (a segmenter or the whole image stands in).
`text` is the scene's caption naming the object by its class noun, without an identifier: the data layer puts one
in front of the class noun when it reads the folder. `export.json` records what was exported.
The folder is built under a temporary name beside --out and renamed into place: nothing is left on an error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..inputs import InputError, check_creatable

LAYOUTS = ("imagefolder", "kohya")
_BATCH = 256  #: scenes per renderer call


def export_dataset(out: str | Path, *, n: int = 3000, class_noun: str = "all", seed: int = 0,
                   layout: str = "imagefolder", p_styled: float = 0.4,
                   progress=None) -> dict:
    """Write world records 0..n-1 (WorldSource with `seed`, `p_styled`) of `class_noun` ("all": every class) to the
    new folder `out`; -> what export.json holds. InputError (nothing written) on a bad argument or an existing,
    non-empty `out`. progress(done, n): called after each batch."""
    from ..data.world import WorldOptions, WorldSource

    out = Path(out)
    if layout not in LAYOUTS:
        raise InputError(f"--layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    if n < 1:
        raise InputError(f"-n must be at least 1 (got {n})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; pick a new folder")
    check_creatable(out)
    # condition "none": the target alone (record i's target is the same whichever condition the world draws)
    source = WorldSource(class_noun=class_noun, identifier="sks",
                         options=WorldOptions(condition="none", seed=seed, p_styled=p_styled))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the dataset is not
    try:
        manifest = _write(source, tmp, n, layout, progress)
        manifest.update({"class": class_noun, "seed": seed, "p_styled": p_styled, "layout": layout,
                         "records": n, "source": "boothkit world export-dataset (boothkit.data.world.WorldSource)"})
        (tmp / "export.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write(source, root: Path, n: int, layout: str, progress) -> dict:
    width = max(5, len(str(n - 1)))
    if layout == "imagefolder":
        (root / "images").mkdir()
        (root / "masks").mkdir()
        meta = open(root / "metadata.jsonl", "w", encoding="utf-8")
    classes: dict[str, int] = {}
    try:
        for start in range(0, n, _BATCH):
            for i, rec in zip(range(start, min(n, start + _BATCH)),
                              source.load_many(list(range(start, min(n, start + _BATCH))))):
                name = f"{i:0{width}d}"
                text = rec.meta["scene_caption"]
                classes[rec.meta["class"]] = classes.get(rec.meta["class"], 0) + 1
                if layout == "imagefolder":
                    rec.image.save(root / "images" / f"{name}.png", format="PNG")
                    rec.mask.save(root / "masks" / f"{name}.png", format="PNG")
                    meta.write(json.dumps({"file_name": f"images/{name}.png", "text": text,
                                           "mask": f"masks/{name}.png", "concept": rec.meta["concept"],
                                           "style": rec.meta["style"]}) + "\n")
                else:
                    rec.image.save(root / f"{name}.png", format="PNG")
                    (root / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
            if progress:
                progress(min(n, start + _BATCH), n)
    finally:
        if layout == "imagefolder":
            meta.close()
    return {"per_class": dict(sorted(classes.items()))}
