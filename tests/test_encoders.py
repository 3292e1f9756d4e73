"""`boothkit encoders` and the shipped-encoder lookup behind a bare `generate --instant`."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from boothkit import encoders
from boothkit.cli.main import app


def test_the_file_names_agree_with_the_methods():
    from boothkit.methods.e4t import artifact as e4t
    from boothkit.methods.instantbooth import artifact as ib

    assert encoders.KINDS == {"instantbooth": (ib.META, ib.WEIGHTS), "e4t": (e4t.ENCODER_META, e4t.ENCODER_WEIGHTS)}


def test_shipped_encoders_are_listed_with_their_base_model():
    from boothkit.inputs import InputError
    from boothkit.pipeline import model_hash

    found = encoders.shipped()
    assert [e.classes for e in found if e.kind == "e4t"] == ["animal", "face", "food", "object", "person"]
    (ib,) = [e for e in found if e.kind == "instantbooth"]
    assert ib.path == str(encoders.assets_root() / "instantbooth" / "all") and ib.classes == "all" and ib.steps == 5000
    assert all(e.shipped and e.base_model == "world" and e.model_hash == model_hash("world") for e in found)
    assert encoders.shipped_instantbooth("world") == ib
    # E4T: the noun's own encoder, else its world class's ("rat" -> animal, "man" -> person)
    assert [encoders.shipped_e4t(n).classes for n in ("face", "rat", "man")] == ["face", "animal", "person"]
    with pytest.raises(InputError, match="boothkit pretrain e4t --class plant"):
        encoders.shipped_e4t("plant")
    assert encoders.e4t_class_conflict("person", "rat") and encoders.e4t_class_conflict("animal", "rat") is None
    assert encoders.e4t_class_conflict("person", "golden retriever") is None  # a noun the world does not know


def test_trained_encoders_are_found_in_the_folders_named(tmp_path):
    shutil.copytree(encoders.assets_root() / "e4t" / "food", tmp_path / "runs" / "my-e4t")
    concept = tmp_path / "runs" / "concepts" / "rat-ib"  # an InstantBooth concept keeps a copy of its encoder
    shutil.copytree(encoders.assets_root() / "instantbooth" / "all", concept / "encoder")
    (concept / "concept.json").write_text("{}")
    (found,) = encoders.find([tmp_path])
    assert found.path == str(tmp_path / "runs" / "my-e4t") and found.kind == "e4t" and not found.shipped
    r = CliRunner().invoke(app, ["encoders", str(tmp_path), "--json"])
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and rows[-1]["path"] == found.path and sum(not x["shipped"] for x in rows) == 1
    r = CliRunner().invoke(app, ["encoders", str(tmp_path)])
    assert r.exit_code == 0 and "instantbooth  all" in r.stdout and f"{found.path}\n" in r.stdout
    assert "(shipped)" in r.stdout and "generate --instant [DIR]" in r.stdout


def test_no_shipped_instantbooth_for_another_base_model(tiny_model):
    from boothkit.inputs import InputError

    with pytest.raises(InputError, match=r"no InstantBooth encoder ships for base model .*shipped: all \(for 'world'\)"):
        encoders.shipped_instantbooth(tiny_model)


def test_bare_instant_uses_the_shipped_encoder(tmp_path, subject_photos):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["generate", "a photo of sks animal", "--instant", "--images", str(subject_photos),
                                 "-n", "1", "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "image-000.png"]
    r2 = CliRunner().invoke(app, ["generate", "x", "--images", str(subject_photos), "--instant", "--model",
                                  str(tmp_path / "nomodel"), "--out", str(tmp_path / "o3")])
    assert r2.exit_code == 2 and "nomodel" in r2.stderr and not (tmp_path / "o3").exists()
    r3 = CliRunner().invoke(app, ["generate", "x", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o4"),
                                  "--instant"])  # bare as the last word too
    assert r3.exit_code == 2 and "none: no such file or folder" in r3.stderr, r3.output
