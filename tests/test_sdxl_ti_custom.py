"""Textual Inversion and Custom Diffusion (joint training and the closed-form merge) on a tiny random SDXL pipeline
(tests/conftest.py: build_tiny_sdxl_pipeline): a token in both text encoders, files diffusers' SDXL loaders read,
the same pixels through diffusers alone as through boothkit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from boothkit.inputs import InputError
from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST, FAST_PRIOR, max_pixel_diff, plain_sdxl, sample, validation_image

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


# --- Custom Diffusion -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rat_xl(tmp_path_factory, tiny_sdxl, subject_photos):
    return tune("custom", subject_photos, "animal", tmp_path_factory.mktemp("sdxl-cd") / "rat", model=tiny_sdxl,
                steps=3, config={**FAST_PRIOR, "random_resize": True, "lr": 1e-2})


@pytest.fixture(scope="module")
def food_xl(tmp_path_factory, tiny_sdxl, second_subject_photos):
    return tune("custom", second_subject_photos, "food", tmp_path_factory.mktemp("sdxl-cd") / "food",
                model=tiny_sdxl, steps=3, config={**FAST, "seed": 1, "lr": 1e-2, "prior_preservation": False})


def _stock_custom(model, folder, tokens):
    """Diffusers alone: its own Custom Diffusion parser for the weights, load_textual_inversion for each token in each
    text encoder."""
    pipe = plain_sdxl(model)
    procs = dict(pipe.unet.attn_processors)
    procs.update(pipe.unet._process_custom_diffusion(load_file(str(folder /
                                                                    "pytorch_custom_diffusion_weights.safetensors"))))
    pipe.unet.set_attn_processor(procs)
    for t in tokens:
        for (enc, tok), suffix in zip(ENCODERS, ("", "_2")):
            pipe.load_textual_inversion(str(folder), weight_name=f"{t}{suffix}.safetensors", token=t,
                                        text_encoder=getattr(pipe, enc), tokenizer=getattr(pipe, tok))
    return pipe


def test_custom_trains_kv_at_the_context_width_and_a_token_in_both_encoders(rat_xl, tiny_sdxl):
    names = sorted(p.name for p in rat_xl.iterdir())
    assert names == ["<new1>.safetensors", "<new1>_2.safetensors", "concept.json",
                     "pytorch_custom_diffusion_weights.safetensors", "train_log.jsonl", "validation"]
    from boothkit.methods.custom.model import cross_attention_layers

    w = load_file(str(rat_xl / "pytorch_custom_diffusion_weights.safetensors"))
    layers = cross_attention_layers(plain_sdxl(tiny_sdxl).unet)  # '...attn2.processor' -> its Attention
    assert sorted(w) == sorted(f"{n}.{p}_custom_diffusion.weight" for n in layers for p in ("to_k", "to_v"))
    assert {v.shape[1] for v in w.values()} == {64}  # SDXL's context: both encoders' widths, 32 + 32
    for name, attn in layers.items():  # every K/V projection trained away from the base
        assert not torch.equal(w[f"{name}.to_k_custom_diffusion.weight"], attn.to_k.weight), name
    one, two = load_file(str(rat_xl / "<new1>.safetensors")), load_file(str(rat_xl / "<new1>_2.safetensors"))
    assert one["<new1>"].shape == two["<new1>"].shape == (1, 32)


def test_custom_loads_with_diffusers_alone_and_draws_the_trained_model(rat_xl, tiny_sdxl):
    stock = sample(_stock_custom(tiny_sdxl, rat_xl, ["<new1>"]), "a photo of <new1> animal")
    assert max_pixel_diff(stock, validation_image(rat_xl)) <= 1
    assert max_pixel_diff(sample(_ours(tiny_sdxl, [rat_xl]), "a photo of <new1> animal"), stock) <= 1


def test_custom_joint_training_of_two_concepts_on_sdxl(tmp_path, tiny_sdxl, subject_photos, second_subject_photos):
    out = tune("custom", subject_photos, "animal", tmp_path / "both", model=tiny_sdxl, steps=2,
               config={**FAST, "lr": 1e-2, "prior_preservation": False}, subjects=[(second_subject_photos, "food")])
    meta = json.loads((out / "concept.json").read_text())
    assert meta["tokens"] == ["<new1>", "<new2>"] and meta["family"] == "sdxl"
    assert meta["files"] == ["pytorch_custom_diffusion_weights.safetensors", "<new1>.safetensors",
                             "<new1>_2.safetensors", "<new2>.safetensors", "<new2>_2.safetensors"]
    prompt = "a photo of <new1> animal and <new2> food"
    stock = sample(_stock_custom(tiny_sdxl, out, ["<new1>", "<new2>"]), prompt)
    assert max_pixel_diff(sample(_ours(tiny_sdxl, [out]), prompt), stock) <= 1


def test_merge_on_sdxl_reproduces_each_concept_on_its_own_context_rows(rat_xl, food_xl, tiny_sdxl, tmp_path):
    from boothkit.families import family_of
    from boothkit.methods.custom.merge import _features, merge_concepts
    from boothkit.methods.custom.model import cross_attention_layers

    captions = ["a photo of a dog on the grass", "a cat on a sofa", "a red car in the street", "a bowl of soup"]
    out, meta = merge_concepts([rat_xl, food_xl], tmp_path / "merged", model=tiny_sdxl, reg_captions=captions,
                               reg_source="test")
    assert meta["family"] == "sdxl" and meta["tokens"] == ["<new1>", "<new2>"]
    assert meta["config"]["regularisation_captions"]["count"] == 4
    assert meta["config"]["regularisation_captions"]["source"] == "test"
    assert sorted(p.name for p in out.iterdir()) == ["<new1>.safetensors", "<new1>_2.safetensors",
                                                      "<new2>.safetensors", "<new2>_2.safetensors", "concept.json",
                                                      "pytorch_custom_diffusion_weights.safetensors"]
    # each token keeps its trained embedding in both encoders
    assert torch.equal(load_file(str(out / "<new2>_2.safetensors"))["<new2>"],
                       load_file(str(food_xl / "<new1>_2.safetensors"))["<new1>"])
    pipe = _ours(tiny_sdxl, [out])
    fam = family_of(pipe)
    toks, encs = fam.tokenizers(pipe), fam.text_encoders(pipe)
    # the feature rows are the context the K/V projections read: the pipeline's own prompt_embeds
    prompt = "a photo of <new1> animal"
    rows = _features(toks, encs, [prompt], family=fam)  # [L - 1, 64]
    with torch.no_grad():
        embeds = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)[0][0]  # [77, 64]
    assert rows.shape[1] == 64 and torch.allclose(rows.float(), embeds[1:1 + rows.shape[0]], atol=1e-5)
    merged = load_file(str(out / "pytorch_custom_diffusion_weights.safetensors"))
    for name in cross_attention_layers(pipe.unet):
        for proj in ("to_k", "to_v"):
            key = f"{name}.{proj}_custom_diffusion.weight"
            for folder, token, cls in ((rat_xl, "<new1>", "animal"), (food_xl, "<new2>", "food")):
                c = _features(toks, encs, [f"a photo of {token} {cls}"], from_token=token, family=fam).float()
                own = load_file(str(folder / "pytorch_custom_diffusion_weights.safetensors"))[key]
                assert torch.allclose(c @ merged[key].T, c @ own.T, atol=1e-3, rtol=1e-3), key
    prompt = "a photo of <new1> animal and <new2> food"
    assert max_pixel_diff(sample(_stock_custom(tiny_sdxl, out, ["<new1>", "<new2>"]), prompt),
                          sample(pipe, prompt)) <= 1


def test_merge_refuses_concepts_of_another_family(rat_xl, tmp_path, tiny_model, subject_photos):
    sd = tune("custom", subject_photos, "animal", tmp_path / "sd", model=tiny_model, steps=1,
              config={**FAST, "validation_images": 0, "prior_preservation": False})
    with pytest.raises(InputError, match="made for a Stable Diffusion XL base model.*Stable Diffusion 1.x/2.x"):
        from boothkit.methods.custom.merge import merge_concepts

        merge_concepts([rat_xl, sd], tmp_path / "m", model=tiny_model, reg_captions=["a dog"])
    assert not (tmp_path / "m").exists()
