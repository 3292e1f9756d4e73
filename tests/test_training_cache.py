"""cfg.cache: each photo's VAE posterior (per flip) and each frozen prompt's conditioning computed once; the same
draws, so the same weights up to float rounding (bounded here), and far fewer VAE / text-encoder calls."""

from __future__ import annotations

import pytest
import torch

from boothkit.methods import tune

from conftest import FAST


def _calls(module):
    n = []
    handle = module.register_forward_pre_hook(lambda *a: n.append(1))
    return n, handle


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_sdxl"])
def test_cache_changes_no_weight_beyond_rounding_and_skips_the_encoders(tmp_path, subject_photos, model_fixture,
                                                                      request):
    from safetensors.torch import load_file

    from boothkit.methods.lora.config import LoraConfig
    from boothkit.methods.lora.model import LoraRecipe
    from boothkit.pipeline import load_pipeline
    from boothkit.training.data import ImageSet
    from boothkit.training.data import step_generator
    from boothkit.training.recipe import Subject
    from boothkit.inputs import load_subject_images

    model = request.getfixturevalue(model_fixture)
    weights = {}
    for cache in (True, False):
        out = tune("lora", subject_photos, "animal", tmp_path / f"c{cache}", model=model, steps=6,
                   config={**FAST, "validation_images": 0, "cache": cache})
        weights[cache] = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert weights[True].keys() == weights[False].keys()
    # Adam normalises each gradient, so rounding in a near-zero gradient can move single elements by ~lr (1e-3
    # here); the weights as a whole stay together: the relative difference of all trained tensors is tiny
    diff = sum(float((weights[True][k] - weights[False][k]).pow(2).sum()) for k in weights[True]) ** 0.5
    norm = sum(float(weights[False][k].pow(2).sum()) for k in weights[False]) ** 0.5
    assert 0 <= diff / norm < 1e-3, diff / norm
    assert max(float((weights[True][k] - weights[False][k]).abs().max()) for k in weights[True]) <= 6 * 1e-3
    # how often the VAE and the text encoder run in 6 micro-batches of 2 photos
    for cache, want_vae in ((True, "at most 5 photos x 2 flips"), (False, "every step")):
        pipe = load_pipeline(model, device="cpu", dtype="fp32", progress=False)
        photos = load_subject_images(subject_photos)
        subj = Subject(ImageSet.from_images(photos, 64, "a photo of sks animal"), "animal", "sks")
        recipe = LoraRecipe(pipe, LoraConfig(batch_size=2, cache=cache), [subj])
        vae, h1 = _calls(pipe.vae.encoder)
        text, h2 = _calls(pipe.text_encoder)
        for step in range(6):
            recipe.loss(step_generator(0, step)).backward()
        h1.remove(), h2.remove()
        if cache:
            # one prompt; each new (photo, flip) pair once (of 5 x 2), never a pair seen before
            assert len(text) == 1 and len(vae) == len(recipe._latent_cache) <= 10
        else:
            assert len(text) == 6 and len(vae) == 6, want_vae


@pytest.mark.parametrize("model_fixture", ["world", "tiny_sdxl"])
def test_a_fresh_recipe_draws_the_same_latents_bit_for_bit(subject_photos, model_fixture, request):
    """Resume is exact with the cache: a recipe built afresh at step 4 (a resumed process, empty cache) draws the
    same latents and text conditioning, bit for bit, as the recipe that ran from step 0. Each cache entry is computed
    alone: the world VAE's result for a photo differs in the last bits between batch 1 and batch 2, so filling the
    cache with the batch of a step's missing keys made resumed runs drift."""
    from boothkit.inputs import load_subject_images
    from boothkit.methods.lora.config import LoraConfig
    from boothkit.methods.lora.model import LoraRecipe
    from boothkit.pipeline import load_pipeline
    from boothkit.training.data import ImageSet, step_generator
    from boothkit.training.recipe import Subject

    model = "world" if model_fixture == "world" else request.getfixturevalue(model_fixture)
    photos = load_subject_images(subject_photos)

    def run(first: int, last: int) -> list:  # a fresh process: the pipeline loaded again, the cache empty
        pipe = load_pipeline(model, device="cpu", dtype="fp32", progress=False)
        subj = Subject(ImageSet.from_images(photos, 64, "a photo of sks animal"), "animal", "sks")
        recipe = LoraRecipe(pipe, LoraConfig(batch_size=3, cache=True), [subj])
        seen = []
        draw, enc = recipe.draw_latents, recipe.encode_prompts
        recipe.draw_latents = lambda *a: seen.append(draw(*a)) or seen[-1]
        recipe.encode_prompts = lambda p: seen.append(enc(p).hidden) or enc(p)
        with torch.no_grad():
            for step in range(first, last):
                recipe.loss(step_generator(0, step))
        return seen

    whole, resumed = run(0, 8), run(4, 8)
    tail = whole[len(whole) - len(resumed):]
    assert len(resumed) == 8 and all(torch.equal(a, b) for a, b in zip(tail, resumed))
