"""Full DreamBooth: a pipeline folder, prior images cached per (model, prompt), stock loading reproduces it."""

from __future__ import annotations

import json

import pytest

from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST_PRIOR, max_pixel_diff, plain_pipeline, sample, validation_image


@pytest.fixture(scope="module")
def db_concept(tmp_path_factory, tiny_model, subject_photos):
    out = tmp_path_factory.mktemp("db") / "rat"
    return tune("dreambooth", subject_photos, "animal", out, model=tiny_model, steps=2, config=FAST_PRIOR)


def test_files(db_concept):
    names = sorted(p.name for p in db_concept.iterdir())
    assert names == ["concept.json", "model_index.json", "scheduler", "text_encoder", "tokenizer",
                     "train_log.jsonl", "unet", "vae", "validation"]
    assert (db_concept / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(db_concept.rglob("*.bin")) and not list(db_concept.rglob("*.pt"))
    meta = json.loads((db_concept / "concept.json").read_text())
    assert meta["config"]["prior_preservation"] and meta["config"]["prior_weight"] == 1.0


def test_class_images_are_cached_per_model_and_prompt(db_concept, tiny_model):
    from boothkit.methods.class_images import class_image_dir
    from boothkit.pipeline import model_hash

    folder = class_image_dir(model_hash(tiny_model), "a photo of a animal")
    assert len(list(folder.rglob("*.png"))) == 2


def test_diffusers_alone_reproduces_the_trained_model(db_concept, tiny_model):
    pipe = plain_pipeline(str(db_concept))
    stock = sample(pipe, "a photo of sks animal")
    assert max_pixel_diff(stock, validation_image(db_concept)) <= 1
    ours = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [db_concept])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, "a photo of sks animal"), stock) == 0


def test_concept_for_another_base_model_is_refused(db_concept, other_tiny_model):
    from boothkit.inputs import InputError

    pipe = load_pipeline(other_tiny_model, device="cpu", dtype="fp32", progress=False)
    with pytest.raises(InputError, match="hash"):
        apply_concepts(pipe, [db_concept])
