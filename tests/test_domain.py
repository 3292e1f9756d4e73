"""boothkit.domain: the warnings for what the world model cannot know (a class noun it never read, photos far
from its scenes), and that they reach the user in `tune` and the app."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from boothkit import domain

REAL = Path(__file__).parent / "data" / "dreambench"


@pytest.mark.parametrize("noun", ["animal", "dog face", "Teddy Bear", "person"])
def test_words_the_world_model_read_give_no_warning(noun):
    assert domain.class_warning(noun) is None


def test_unknown_and_held_out_class_nouns_are_named():
    rat = domain.class_warning("rat")  # a held-out emoji: no pretrained part of the model saw it
    assert rat.startswith("--class 'rat': the world model never read the word 'rat'") and "held-out" in rat
    assert "its world class, 'animal'" in rat and "\n" not in rat
    ship = domain.class_warning("golden spaceship", flag="class_noun")
    assert ship.startswith("class_noun 'golden spaceship': the world model never read the word 'golden'")


def test_other_base_models_get_no_warning(tiny_model, subject_photos):
    photos = [Image.open(p).convert("RGB") for p in sorted(REAL.glob("dog/*.jpg"))]
    assert domain.class_warning("spaceship", tiny_model) is None
    assert domain.photo_warning(photos, tiny_model) is None


def test_world_photos_pass_and_real_photos_warn(subject_photos):
    world = [Image.open(p).convert("RGB") for p in sorted(subject_photos.glob("*.png"))]
    assert max(domain.photo_distances(world)) < domain.PHOTO_THRESHOLD
    assert domain.photo_warning(world) is None
    for subject in ("dog", "cat", "backpack"):
        real = [Image.open(p).convert("RGB") for p in sorted((REAL / subject).glob("*.jpg"))]
        warning = domain.photo_warning(real)
        assert warning and warning.startswith("the photos look unlike anything the world model was trained on")
    assert domain.photo_warning(world + real[:2]) is None  # judged by the median photo


def test_tune_on_the_world_model_prints_both_warnings(tmp_path):
    from boothkit.cli.main import app

    r = CliRunner().invoke(app, ["tune", "--method", "instantbooth", "--images", str(REAL / "dog"), "--class",
                                 "golden retriever", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 3, r.stderr
    assert "--class 'golden retriever': the world model never read the word 'golden'" in warned[0]
    assert "the photos look unlike anything the world model was trained on" in warned[1]
    # and InstantBooth's own: real photos, no cut-out, no segmenter: the encoder reads them whole
    assert "5 of 5 photo(s) have no alpha channel and no flat background" in warned[2]
