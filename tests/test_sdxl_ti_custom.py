"""Textual Inversion and Custom Diffusion (joint training and the closed-form merge) on a tiny random SDXL pipeline
(tests/conftest.py: build_tiny_sdxl_pipeline): a token in both text encoders, files diffusers' SDXL loaders read,
the same pixels through diffusers alone as through boothkit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST, max_pixel_diff, plain_sdxl, sample, validation_image

ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))


def _ours(model, concepts):
    pipe = apply_concepts(load_pipeline(model, device="cpu", dtype="fp32", progress=False), concepts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ti_xl(tmp_path_factory, tiny_sdxl, subject_photos):
    out = tmp_path_factory.mktemp("sdxl-ti") / "rat"
    return tune("ti", subject_photos, "animal", out, model=tiny_sdxl, steps=3,
                config={**FAST, "num_vectors": 2, "lr": 0.05})


def test_ti_writes_one_embedding_per_text_encoder_as_diffusers_sdxl_script(ti_xl):
    assert sorted(p.name for p in ti_xl.iterdir()) == ["concept.json", "learned_embeds.safetensors",
                                                       "learned_embeds_2.safetensors", "train_log.jsonl",
                                                       "validation"]
    meta = json.loads((ti_xl / "concept.json").read_text())
    assert meta["family"] == "sdxl" and meta["files"] == ["learned_embeds.safetensors",
                                                          "learned_embeds_2.safetensors"]
    one, two = (load_file(str(ti_xl / f)) for f in meta["files"])
    assert list(one) == list(two) == ["<sks>"] and one["<sks>"].shape == two["<sks>"].shape == (2, 32)
    assert not torch.equal(one["<sks>"], two["<sks>"])  # each encoder its own vectors


def test_ti_loads_with_the_stock_sdxl_loader_and_draws_the_trained_model(ti_xl, tiny_sdxl):
    pipe = plain_sdxl(tiny_sdxl)
    for (enc, tok), weights in zip(ENCODERS, ("learned_embeds.safetensors", "learned_embeds_2.safetensors")):
        pipe.load_textual_inversion(str(ti_xl), weight_name=weights, token="<sks>", text_encoder=getattr(pipe, enc),
                                    tokenizer=getattr(pipe, tok))
    stock = sample(pipe, "a photo of <sks> animal")
    assert max_pixel_diff(stock, validation_image(ti_xl)) <= 1
    assert max_pixel_diff(sample(_ours(tiny_sdxl, [ti_xl]), "a photo of <sks> animal"), stock) == 0
    assert max_pixel_diff(sample(plain_sdxl(tiny_sdxl), "a photo of <sks> animal"), stock) > 0


def test_ti_trains_only_the_new_rows_of_both_encoders(tmp_path, tiny_sdxl, subject_photos):
    from boothkit.inputs import load_subject_images
    from boothkit.methods.ti.config import TIConfig
    from boothkit.methods.ti.model import TIRecipe
    from boothkit.training.data import ImageSet
    from boothkit.training.loop import train
    from boothkit.training.recipe import Subject

    pipe = load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False)
    before = [getattr(pipe, e).get_input_embeddings().weight.detach().clone() for e, _ in ENCODERS]
    others = {(e, n): p.detach().clone() for e, _ in ENCODERS for n, p in getattr(pipe, e).named_parameters()
              if "token_embedding" not in n}
    cfg = TIConfig(steps=2, validation_images=0, checkpoint_every=0, num_vectors=2, lr=0.05, batch_size=2)
    subj = Subject(ImageSet.from_images(load_subject_images(subject_photos), 64, "a photo of <t> animal"),
                   "animal", "<t>")
    recipe = TIRecipe(pipe, cfg, [subj])
    assert recipe.train_modules == ("text_encoder", "text_encoder_2")
    init = [before[i][getattr(pipe, t).encode("animal", add_special_tokens=False)[0]] for i, (_, t) in
            enumerate(ENCODERS)]
    train(recipe, cfg, tmp_path)
    for i, (enc, _) in enumerate(ENCODERS):
        after = getattr(pipe, enc).get_input_embeddings().weight.detach()
        new = recipe.slot_vectors[i]["<t>"]
        assert after.shape[0] == before[i].shape[0] + 2 and len(new) == 2
        assert torch.equal(after[: before[i].shape[0]], before[i])  # every old row bit-identical
        assert not torch.equal(after[new[0]], init[i])  # the new rows moved from the class word's embedding
    for (enc, n), p in others.items():
        assert torch.equal(dict(getattr(pipe, enc).named_parameters())[n], p), (enc, n)


def test_ti_resumes_both_encoders_rows_exactly(tmp_path, tiny_sdxl, subject_photos):
    """A checkpoint holds each encoder's rows: a run resumed after step 1 ends with the uninterrupted run's files."""
    cfg = {**FAST, "validation_images": 0, "checkpoint_every": 1, "lr": 0.05}
    full = tune("ti", subject_photos, "animal", tmp_path / "full", model=tiny_sdxl, steps=2, config=cfg)

    class Stop(Exception):
        pass

    def stop(step, loss):
        if step == 1:
            raise Stop

    with pytest.raises(Stop):
        tune("ti", subject_photos, "animal", tmp_path / "part", model=tiny_sdxl, steps=2, config=cfg, on_step=stop)
    part = tune("ti", subject_photos, "animal", tmp_path / "part", model=tiny_sdxl, steps=2, config=cfg, resume=True)
    assert json.loads((part / "concept.json").read_text())["training"]["first_step"] == 1
    for f in ("learned_embeds.safetensors", "learned_embeds_2.safetensors"):
        assert torch.equal(load_file(str(full / f))["<sks>"], load_file(str(part / f))["<sks>"]), f
