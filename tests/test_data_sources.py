"""Every `--data` layout yields the same records for the same content; scans count what they skip and refuse bad
data with one clear sentence, before anything heavy is imported."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from boothkit.data import Columns, open_source
from boothkit.data.record import Unusable
from boothkit.data.wds import WdsSource
from boothkit.inputs import InputError
from test_data_support import (AT_LOAD, AT_SCAN, BBOX, CLASS, DISC, GOOD, MASK_BOX, ROOT, items, layouts,  # noqa: F401
                               name_of, write_kohya)


def _open(spec: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_source(spec, class_noun=CLASS, identifier="sks")


def _records(src) -> dict:
    """name -> Record or Unusable, for every usable record of the scan (shards: one unshuffled pass)."""
    out = {}
    if isinstance(src, WdsSource):
        stream = src.stream(rank=0, world_size=1, index=0, streams=1, seed=0, buffer=0, exclude=set(), counts={})
        raws = [next(stream) for _ in range(len(GOOD) + len(AT_LOAD))]
        pairs = [(r.key, lambda r=r: src.load(r)) for r in raws]
    else:
        pairs = [(src.key(i), lambda i=i: src.load(i)) for i in range(len(src))]
    for key, load in pairs:
        try:
            out[name_of(key)] = load()
        except Unusable as e:
            out[name_of(key)] = e
    return out


@pytest.mark.parametrize("kind", ["folder", "imagefolder", "hf", "wds"])
def test_every_layout_scans_the_same(layouts, kind):
    src = _open(layouts[kind])
    assert src.kind == kind
    rep = src.report
    # shards: the scan reads the first shard only (items 0, 4, 8, 12 of the 4 shards dealt round-robin)
    scanned = [it.name for it in items()][0::4] if kind == "wds" else [it.name for it in items()]
    assert rep.partial == (kind == "wds") and rep.read == len(scanned)
    assert rep.usable == len([n for n in scanned if n not in AT_SCAN])
    assert rep.skipped == {AT_SCAN[n]: 1 for n in scanned if n in AT_SCAN}
    assert "nonoun" in rep.examples["no_class_noun"][0] and "a photo of a backpack" in rep.examples["no_class_noun"][0]
    # what has no mask file/column and no bbox (kohya's layout has neither; dog_01 and dog_02 are not in shard 0)
    assert rep.without_mask == rep.usable - (2 if kind in ("imagefolder", "hf") else 0)


def test_the_same_records_from_every_layout(layouts):
    recs = {kind: _records(_open(spec)) for kind, spec in layouts.items()}
    ref = recs["folder"]
    assert set(ref) == set(GOOD) | set(AT_LOAD)
    for kind, got in recs.items():
        assert set(got) == set(ref), kind
        for name in GOOD:
            a, b = ref[name], got[name]
            assert b.caption == a.caption and b.image.mode == "RGB", (kind, name)
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image)), (kind, name)
        for name, reason in AT_LOAD.items():
            assert isinstance(got[name], Unusable) and got[name].reason == reason, (kind, name, got[name])
    assert ref["dog_00"].caption == "a photo of a sks Pet dog on the floor"
    # masks: the alpha channel everywhere; the mask file and the bbox where the layout has a place for them
    for kind, got in recs.items():
        cut = np.asarray(got["cutout"].mask)
        assert got["cutout"].meta["mask_from"] == "alpha"
        x0, y0, x1, y1 = DISC
        assert cut[(y0 + y1) // 2, (x0 + x1) // 2] == 255 and cut[2, 2] == 0
        assert np.asarray(got["cutout"].image)[2, 2].tolist() == [255, 255, 255]  # composited on white
        if kind == "folder":
            assert got["dog_01"].mask is None and got["dog_02"].mask is None
            continue
        m = np.asarray(got["dog_01"].mask)
        x0, y0, x1, y1 = MASK_BOX
        assert got["dog_01"].meta["mask_from"] == "file" and m.shape == (96, 96)
        assert (m[y0:y1, x0:x1] == 255).all() and m.sum() == 255 * (x1 - x0) * (y1 - y0)
        b = np.asarray(got["dog_02"].mask)
        x0, y0, x1, y1 = (int(v) for v in BBOX)
        assert got["dog_02"].meta["mask_from"] == "bbox" and b.shape == (96, 128)
        assert (b[y0:y1, x0:x1] == 255).all() and b.sum() == 255 * (x1 - x0) * (y1 - y0)


def test_kinds_are_recognised_by_what_is_there(tmp_path, layouts):
    from pathlib import Path

    from boothkit.data.sources import kind_of

    shards = Path(layouts["wds"]).parent
    assert kind_of(str(shards)) == "wds" and kind_of(str(shards / "shard-000.tar")) == "wds"
    assert kind_of(layouts["folder"]) == "folder" and kind_of(layouts["hf"]) == "hf"
    assert kind_of(layouts["imagefolder"]) == "imagefolder" and kind_of("world") == "world"
    assert kind_of("someone/some-dataset") == "hub"
    mixed = write_kohya(tmp_path / "mixed")
    (mixed / "old.tar").write_bytes(b"")
    assert kind_of(str(mixed)) == "folder", "a photo folder with a stray .tar is still a photo folder"


def test_hf_columns_are_configurable(tmp_path):
    from datasets import Dataset, Features, Image as ImageFeature, Value

    its = [it for it in items() if it.name in GOOD[:3]]
    ds = Dataset.from_dict({"picture": [{"bytes": it.data, "path": None} for it in its],
                            "caption": [it.caption for it in its]},
                           features=Features({"picture": ImageFeature(), "caption": Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(InputError, match="no image column 'image'"):
        open_source(str(tmp_path / "ds"), class_noun=CLASS)
    src = open_source(str(tmp_path / "ds"), class_noun=CLASS, columns=Columns(image="picture"))
    assert src.caption_col == "caption" and len(src) == 3 and src.key(1) == "1"
    assert src.load(0).caption == "a photo of a sks Pet dog on the floor"
    from datasets import DatasetDict

    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    cols = Columns(image="picture")
    assert len(open_source(str(tmp_path / "dd"), class_noun=CLASS, columns=cols)) == 3  # the train split
    cols.split = "test"
    assert len(open_source(str(tmp_path / "dd"), class_noun=CLASS, columns=cols)) == 1
    cols.split = "validation"
    with pytest.raises(InputError, match="no split 'validation' \\(splits: train, test\\)"):
        open_source(str(tmp_path / "dd"), class_noun=CLASS, columns=cols)


def test_scan_errors_are_one_clear_sentence(tmp_path, layouts):
    cases = []
    cases.append((str(tmp_path / "nope"), "no such file or folder"))
    (tmp_path / "empty").mkdir()
    cases.append((str(tmp_path / "empty"), "the folder is empty"))
    (tmp_path / "text.json").write_text("{}")
    cases.append((str(tmp_path / "text.json"), "not a .tar shard"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for it in items()[:3]:
        (bare / f"{it.name}.jpg").write_bytes(it.data)
    cases.append((str(bare), "3 records but no captions"))
    other = write_kohya(tmp_path / "other")
    cases.append((str(tmp_path / "missing-{000..003}.tar"), "4 of 4 shards do not exist"))
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "a pet"}\n{"file_name": "b.jpg"}\n')
    cases.append((str(gone), r"none of the 2 records in the data can train: 2 missing file "
                             r"\(e.g. metadata.jsonl line 1: a.jpg does not exist"))
    for spec, words in cases:
        with pytest.raises(InputError, match=words):
            open_source(spec, class_noun=CLASS)
    with pytest.raises(InputError) as e:
        open_source(str(other), class_noun="giraffe")
    msg = str(e.value)
    assert "'giraffe' is in none of the 13 captions read (e.g. " in msg and "\n" not in msg
    with pytest.raises(InputError, match="is in none of the"):
        open_source(layouts["wds"], class_noun="giraffe")
    with pytest.raises(InputError, match="--class all is for the world only"):
        open_source(layouts["folder"], class_noun="all")


def test_bad_metadata_rows_are_counted(tmp_path):
    root = tmp_path / "if"
    root.mkdir()
    it = items()[0]
    (root / "a.jpg").write_bytes(it.data)
    rows = [json.dumps({"file_name": "a.jpg", "text": "a pet"}), "not json",
            json.dumps({"file_name": "gone.jpg", "text": "a pet"}),
            json.dumps({"file_name": "a.jpg", "text": "a pet", "bbox": [5, 5, 1, 1]}),
            json.dumps({"file_name": "a.jpg", "text": "a pet", "mask": "nomask.png"})]
    (root / "metadata.jsonl").write_text("\n".join(rows))
    with pytest.warns(UserWarning, match=r"1 of 5 records usable; skipped 4: 1 bad bbox .*1 bad metadata"):
        src = open_source(str(root), class_noun=CLASS)
    assert src.report.skipped == {"bad_metadata": 1, "missing_file": 2, "bad_bbox": 1}


def test_scan_error_comes_before_anything_heavy(tmp_path):
    """A wrong --data fails in the scan, with no model library imported (so before any model loads)."""
    code = ("import sys\nfrom boothkit.data import open_source\nfrom boothkit.inputs import InputError\n"
            f"try:\n    open_source({str(tmp_path / 'nope')!r}, class_noun='dog')\n"
            "except InputError as e:\n    print('ERR', e)\n"
            "print('heavy', [m for m in ('diffusers', 'transformers', 'datasets', 'webdataset') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert "ERR --data" in out.stdout and "no such file or folder" in out.stdout, out.stderr
    assert "heavy []" in out.stdout


def test_a_dataset_name_that_cannot_load_is_an_input_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="no such file or folder, and datasets.load_dataset could not load it"):
        open_source("nobody/no-such-dataset-here", class_noun=CLASS)
