"""`boothkit world export-dataset`: world scenes written as a folder that `--data FOLDER` reads back as the world
path's own targets (captions naming the class, the renderer's alpha as masks), built atomically. The synthetic atlas
(BOOTHKIT_ATLAS) keeps it fast."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from boothkit.cli.main import app
from boothkit.data import WorldOptions, open_source
from boothkit.inputs import InputError
from boothkit.world.dataset import export_dataset
from test_data_support import synthetic_atlas

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def atlas(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BOOTHKIT_ATLAS", str(synthetic_atlas(tmp_path_factory.mktemp("atlas") / "atlas.safetensors")))
        yield


def _world(n: int, seed: int = 0):
    src = open_source("world", class_noun="animal", identifier="sks", world=WorldOptions(condition="plain", seed=seed))
    return src.load_many(list(range(n)))


def test_imagefolder_is_the_world_paths_targets(tmp_path):
    from boothkit.world.concepts import all_concepts, concept_index

    out = tmp_path / "animal"
    manifest = export_dataset(out, n=12, class_noun="animal", seed=3)
    assert manifest["per_class"] == {"animal": 12} and json.loads((out / "export.json").read_text())["records"] == 12
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"images/{i:05d}.png" for i in range(12)]
    # the class noun, no identifier (the reader adds it)
    assert all(re.search(r"\banimal\b", r["text"]) and "sks" not in r["text"] for r in rows)
    src = open_source(str(out), class_noun="animal", identifier="sks")
    assert src.kind == "imagefolder" and len(src) == 12 and src.report.usable == 12 and not src.report.skipped
    heldout_rows = {concept_index()[c.id] for c in all_concepts() if c.heldout}
    for i, (w, row) in enumerate(zip(_world(12, seed=3), rows)):
        f = src.load(i)
        assert f.caption == w.caption and "sks animal" in f.caption  # the identifier in front of the class noun
        assert np.array_equal(np.asarray(f.image), np.asarray(w.image))
        assert f.meta["mask_from"] == "file" and np.array_equal(np.asarray(f.mask), np.asarray(w.mask))  # the alpha
        assert row["concept"] == w.meta["concept"] and row["concept"] not in heldout_rows  # train concepts only


def test_kohya_layout(tmp_path):
    export_dataset(tmp_path / "k", n=4, class_noun="animal", layout="kohya")
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["00000.png", "00000.txt", "00001.png", "00001.txt", "00002.png", "00002.txt", "00003.png",
                     "00003.txt", "export.json"]
    src = open_source(str(tmp_path / "k"), class_noun="animal")
    assert src.kind == "folder" and len(src) == 4 and [src.load(i).caption for i in range(4)] == [
        r.caption for r in _world(4)]


def test_bad_out_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["world", "export-dataset", "--out", str(full), "-n", "3", "--class", "animal"])
    assert r.exit_code == 2 and "exists and is not an empty folder" in r.output and len(r.output.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"] and [p.name for p in full.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args, match in (([str(a_file)], "not an empty folder"), ([str(tmp_path / "n"), "--layout", "csv"], "--layout"),
                        ([str(tmp_path / "n"), "-n", "0"], "-n must be"),
                        ([str(tmp_path / "n"), "--class", "giraffe"], "no class 'giraffe'")):
        r = runner.invoke(app, ["world", "export-dataset", "--out", *args])
        assert r.exit_code == 2 and match in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    # an error half-way: the temporary folder goes, --out never appears
    import boothkit.world.dataset as ds

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ds, "_write", boom)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(tmp_path / "n", n=3, class_noun="animal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.undo()
    export_dataset(empty, n=2, class_noun="animal")  # an existing empty folder is fine
    assert (empty / "metadata.jsonl").is_file()
    with pytest.raises(InputError, match="--class all is for the world only"):
        open_source(str(empty), class_noun="all")
