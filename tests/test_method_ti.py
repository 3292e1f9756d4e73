"""Textual Inversion: only the new rows change, stock loader reproduces the trained model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST, max_pixel_diff, plain_pipeline, sample, validation_image


@pytest.fixture(scope="module")
def ti_concept(tmp_path_factory, tiny_model, subject_photos):
    out = tmp_path_factory.mktemp("ti") / "rat"
    return tune("ti", subject_photos, "animal", out, model=tiny_model, steps=3, config={**FAST, "num_vectors": 2})


def test_files_and_artifact(ti_concept):
    assert sorted(p.name for p in ti_concept.iterdir()) == ["concept.json", "learned_embeds.safetensors",
                                                            "train_log.jsonl", "validation"]
    emb = load_file(str(ti_concept / "learned_embeds.safetensors"))
    assert list(emb) == ["<sks>"] and emb["<sks>"].shape == (2, 32)
    assert json.loads((ti_concept / "concept.json").read_text())["tokens"] == ["<sks>"]


def test_diffusers_alone_reproduces_the_trained_model(ti_concept, tiny_model):
    pipe = plain_pipeline(tiny_model)
    pipe.load_textual_inversion(str(ti_concept), weight_name="learned_embeds.safetensors")
    stock = sample(pipe, "a photo of <sks> animal")
    assert max_pixel_diff(stock, validation_image(ti_concept)) <= 1
    ours = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [ti_concept])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, "a photo of <sks> animal"), stock) == 0


def test_only_the_placeholder_rows_change(tmp_path, tiny_model, subject_photos):
    from boothkit.methods.ti.config import TIConfig
    from boothkit.methods.ti.model import TIRecipe
    from boothkit.training.data import ImageSet
    from boothkit.training.loop import train
    from boothkit.training.recipe import Subject
    from boothkit.inputs import load_subject_images

    pipe = load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    cfg = TIConfig(steps=3, validation_images=0, checkpoint_every=0, num_vectors=2, lr=0.05, weight_decay=0.01)
    subj = Subject(ImageSet.from_images(load_subject_images(subject_photos), 64, "a photo of <t> animal"),
                   "animal", "<t>")
    recipe = TIRecipe(pipe, cfg, [subj])
    other_params = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()
                    if "token_embedding" not in n}
    train(recipe, cfg, tmp_path)
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    new = recipe.vectors["<t>"]
    assert after.shape[0] == before.shape[0] + 2 and new == [before.shape[0], before.shape[0] + 1]
    assert torch.equal(after[: before.shape[0]], before)  # every old row bit-identical
    assert not torch.equal(after[new[0]], after[new[0]] * 0 + before[recipe.tokenizer.encode("animal",
                                                           add_special_tokens=False)[0]])  # the new rows moved
    for n, p in pipe.text_encoder.named_parameters():
        if n in other_params:
            assert torch.equal(p, other_params[n]), n
    # the optimizer holds the two new rows only, not the matrix (gradient and AdamW moments the rows' size), and
    # the matrix holds what the rows were trained to (what the artifact writers read)
    assert [tuple(p.shape) for p in recipe.trainable_parameters()] == [(2, before.shape[1])]
    assert torch.equal(after[new], recipe.slot_rows[0].rows())
