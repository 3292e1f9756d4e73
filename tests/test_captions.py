"""Per-photo captions (kohya's `photo.txt` beside `photo.png`): loading, sampling, and training with them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from boothkit.inputs import InputError, load_captioned_images, load_subject_images
from boothkit.methods import tune
from boothkit.training.data import ImageSet, step_generator
from boothkit.training.recipe import Recipe

from conftest import FAST


def _photos(folder, captions: dict[str, str | None]):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (stem, text) in enumerate(captions.items()):
        im = Image.new("RGB", (72, 72), (40 * i, 90, 200))
        im.paste((250, 250, 250), (20, 20, 50, 50))  # something in the picture (a one-colour photo is blank)
        im.save(folder / f"{stem}.png")
        if text is not None:
            (folder / f"{stem}.txt").write_text(text)
    return folder


def test_captions_are_read_beside_each_photo_in_file_name_order(tmp_path):
    d = _photos(tmp_path / "p", {"b": "sks dog,\n on a beach", "a": "a photo of sks dog in snow"})
    images, caps = load_captioned_images(d, "sks")
    assert len(images) == 2 and caps == ["a photo of sks dog in snow", "sks dog, on a beach"]
    assert load_captioned_images(_photos(tmp_path / "q", {"a": "a <sks> dog"}), "<sks>")[1] == ["a <sks> dog"]


def test_missing_or_unnamed_captions_are_listed(tmp_path):
    d = _photos(tmp_path / "p", {"a": "a photo of a dog", "b": None, "c": "sksy dog", "d": "sks dog"})
    with pytest.raises(InputError) as e:
        load_captioned_images(d, "sks")
    msg = str(e.value)
    assert "a.txt" in msg and "no caption file b.txt" in msg and "c.txt" in msg and "d.txt" not in msg


def test_without_captions_the_txt_files_are_left_out_with_a_hint(tmp_path):
    d = _photos(tmp_path / "p", {"a": "sks dog", "b": "sks dog"})
    with pytest.warns(UserWarning, match="2 caption file.*--captions"):
        assert len(load_subject_images(d)) == 2


def test_sampling_with_captions_draws_exactly_as_without():
    pixels = torch.randn(4, 3, 8, 8)
    plain = ImageSet(pixels, "a photo of sks dog")
    captioned = ImageSet(pixels, "a photo of sks dog", [f"caption {i}" for i in range(4)])
    x0 = plain.sample(6, step_generator(0, 3))
    x1, prompts = captioned.sample_with_prompts(6, step_generator(0, 3))
    assert torch.equal(x0, x1)
    idx = torch.randint(0, 4, (6,), generator=step_generator(0, 3)).tolist()  # the draw sample() makes first
    assert prompts == [f"caption {i}" for i in idx]
    assert plain.sample_with_prompts(2, step_generator(0, 3))[1] == ["a photo of sks dog"] * 2


@pytest.mark.parametrize("method,token,config", [("lora", "sks", {}), ("ti", "<sks>", {"num_vectors": 2})])
def test_training_uses_each_photos_caption(tmp_path, tiny_model, subject_photos, monkeypatch, method, token, config):
    photos = tmp_path / "photos"
    shutil.copytree(subject_photos, photos)
    backgrounds = ["red", "blue", "green", "yellow", "white"]
    files = sorted(photos.glob("*.png"))
    for f, bg in zip(files, backgrounds):
        f.with_suffix(".txt").write_text(f"a photo of {token} animal on a {bg} background")
    seen = []
    original = Recipe.encode_prompts

    def spy(self, prompts):
        seen.extend(prompts)
        return original(self, prompts)

    monkeypatch.setattr(Recipe, "encode_prompts", spy)
    out = tune(method, photos, "animal", tmp_path / "c", model=tiny_model, steps=4, captions=True,
               config={**FAST, "validation_images": 0, **config})
    meta = json.loads((out / "concept.json").read_text())
    assert meta["captions"] == [[f"a photo of {token} animal on a {bg} background" for bg in backgrounds]]
    train_prompts = [p for p in seen if "background" in p]
    assert len(train_prompts) == 4 * FAST["batch_size"] and len(set(train_prompts)) > 1
    written = token if method == "lora" else "<sks> <sks>_1"  # TI's two vectors, expanded as in its prompt
    assert all(p.startswith(f"a photo of {written} animal on a ") for p in train_prompts)


def test_captions_are_refused_for_an_encoder_method_and_checked_before_writing(tmp_path, subject_photos):
    with pytest.raises(InputError, match="trains nothing"):
        tune("instantbooth", subject_photos, "animal", tmp_path / "c", captions=True)
    with pytest.raises(InputError, match="no caption file"):
        tune("lora", subject_photos, "animal", tmp_path / "d", captions=True)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
