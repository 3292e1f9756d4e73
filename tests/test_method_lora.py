"""DreamBooth-LoRA: files written, stock loader reproduces the trained model, fresh adapter is a no-op."""

from __future__ import annotations

import json

import pytest
import torch

from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST, max_pixel_diff, plain_pipeline, sample, validation_image


@pytest.fixture(scope="module")
def lora_concept(tmp_path_factory, tiny_model, subject_photos):
    out = tmp_path_factory.mktemp("lora") / "rat"
    return tune("lora", subject_photos, "animal", out, model=tiny_model, steps=3, config={**FAST, "rank": 4})


def test_files_and_concept_json(lora_concept, tiny_model):
    from boothkit import __version__
    from boothkit.pipeline import model_hash

    names = sorted(p.name for p in lora_concept.iterdir())
    assert names == ["concept.json", "pytorch_lora_weights.safetensors", "train_log.jsonl", "validation"]
    meta = json.loads((lora_concept / "concept.json").read_text())
    assert meta["method"] == "lora" and meta["tokens"] == ["sks"] and meta["class"] == "animal"
    assert meta["model_hash"] == model_hash(tiny_model) and meta["base_model"] == tiny_model
    assert meta["config"]["rank"] == 4 and meta["config"]["steps"] == 3
    assert meta["boothkit_version"] == __version__


def test_diffusers_alone_reproduces_the_trained_model(lora_concept, tiny_model):
    pipe = plain_pipeline(tiny_model)
    pipe.load_lora_weights(str(lora_concept), weight_name="pytorch_lora_weights.safetensors")
    stock = sample(pipe, "a photo of sks animal")
    assert max_pixel_diff(stock, validation_image(lora_concept)) <= 1
    ours = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [lora_concept])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, "a photo of sks animal"), stock) == 0
    base = sample(plain_pipeline(tiny_model), "a photo of sks animal")
    assert max_pixel_diff(base, stock) > 0  # the adapter changed something


def test_fresh_adapter_is_a_no_op(tiny_model):
    from boothkit.methods.lora.config import LoraConfig
    from boothkit.methods.lora.model import LoraRecipe

    pipe = load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = pipe.unet(x, t, c).sample
        LoraRecipe(pipe, LoraConfig(train_text_encoder=True), [])
        after = pipe.unet(x, t, c).sample
    assert torch.equal(before, after)


def test_text_encoder_lora_is_saved_and_loaded(tmp_path, tiny_model, subject_photos):
    out = tune("lora", subject_photos, "animal", tmp_path / "c", model=tiny_model, steps=2,
               config={**FAST, "train_text_encoder": True})
    from safetensors.torch import load_file

    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    pipe = plain_pipeline(tiny_model)
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    assert max_pixel_diff(sample(pipe, "a photo of sks animal"), validation_image(out)) <= 1


def test_concept_weight_scales_the_lora(lora_concept, tiny_model, subject_photos, tmp_path):
    """weight 0 draws the base model's image, 1 the concept's default, 0.5 something between; a weight for a
    method without an adapter, or a count that does not match, is refused."""
    import numpy as np

    from boothkit.inputs import InputError

    def draw(concepts, weights=None):
        pipe = load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False)
        if concepts:
            apply_concepts(pipe, concepts, weights=weights)
        pipe.set_progress_bar_config(disable=True)
        img = pipe("a photo of sks animal", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   output_type="np").images[0]
        return np.asarray(img, dtype=np.float64)

    plain, full = draw([]), draw([lora_concept])
    half, zero = draw([lora_concept], [0.5]), draw([lora_concept], [0.0])
    assert np.array_equal(draw([lora_concept], [1.0]), full)
    assert np.abs(zero - plain).max() < 1e-6 and np.abs(full - plain).max() > 1e-3  # 0 switches it off
    assert 0 < np.abs(half - plain).max() < np.abs(full - plain).max()
    with pytest.raises(InputError, match="2 weights for 1 concepts"):
        draw([lora_concept], [1.0, 1.0])
    ti = tune("ti", subject_photos, "animal", tmp_path / "ti", model=tiny_model, steps=1, config=FAST)
    with pytest.raises(InputError, match="ti concept has no adapter to weight"):
        draw([lora_concept, ti], [1.0, 0.5])


def test_app_prompt_weights(lora_concept, tiny_model, tmp_path):
    """`<name:W>` in an app prompt applies the concept at weight W: 0 draws what the base model draws for the
    trigger phrase, 0.5 something else; the weight is recorded with the image; bad weights are 400s."""
    import io

    import numpy as np
    from PIL import Image

    from test_app_support import ServerThread, http, lora_library

    with ServerThread(lora_library(tmp_path / "data", lora_concept, tiny_model)) as s:
        def draw(prompt):
            r = http("POST", s.url + "/api/generate", json_body={"prompt": prompt, "steps": 2, "seed": 1})
            assert r.status == 200, r
            im = r.json()["images"][0]
            pixels = np.asarray(Image.open(io.BytesIO(http("GET", s.url + im["url"]).body)), dtype=int)
            return im, pixels

        plain = draw("a photo of sks animal")[1]
        zero_meta, zero = draw("a photo of <ratlora:0>")
        half_meta, half = draw("a photo of <ratlora:0.5>")
        full_meta, full = draw("a photo of <ratlora>")
        assert zero_meta["model_prompt"] == "a photo of sks animal" and zero_meta["concept_weights"] == [0.0]
        assert half_meta["concept_weights"] == [0.5] and full_meta.get("concept_weights") is None
        assert np.abs(zero - plain).max() <= 1 and np.abs(full - plain).max() > 1  # the concept changes pixels
        assert np.abs(half - full).max() > 0 and np.abs(half - plain).max() > 0
        for prompt, message in (("<ratlora:3>", "between 0 and 2"), ("<ratlora:0.5> <ratlora>", "different weights")):
            r = http("POST", s.url + "/api/generate", json_body={"prompt": prompt, "steps": 2})
            assert r.status == 400 and message in r.json()["detail"], r
