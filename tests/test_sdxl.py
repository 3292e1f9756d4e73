"""SDXL as a base-model family: loading, conditioning as diffusers computes it, the shared training core, and the
LoRA and full DreamBooth methods on a tiny random SDXL pipeline (tests/conftest.py: build_tiny_sdxl_pipeline)."""

from __future__ import annotations

import json

import pytest
import torch

from boothkit.families import family_of
from boothkit.inputs import InputError
from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST, max_pixel_diff, plain_sdxl, sample, validation_image


def test_family_is_read_from_model_index_and_conditioning_matches_the_pipeline(tiny_sdxl, tiny_model):
    from boothkit.pipeline import model_family

    assert model_family(tiny_sdxl).name == "sdxl" and model_family(tiny_model).name == "sd"
    pipe = load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False)
    fam = family_of(pipe)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and fam.name == "sdxl"
    assert fam.default_resolution(pipe) == 64 and fam.context_dim(pipe) == 64 and fam.text_width(pipe) == 64
    assert fam.vae_fp32(pipe)  # SDXL's VAE overflows in fp16
    with torch.no_grad():
        ours = fam.encode_prompts(pipe, ["a photo of sks dog", "a cat"])
        pe, _, pooled, _ = pipe.encode_prompt("a cat", do_classifier_free_guidance=False)
    assert ours.hidden.shape == (2, 77, 64) and ours.pooled.shape == (2, 32)
    assert torch.allclose(ours.hidden[1:], pe, atol=1e-6) and torch.allclose(ours.pooled[1:], pooled, atol=1e-6)
    kwargs = fam.unet_kwargs(ours, torch.tensor([[96.0, 128, 0, 16, 64, 64]] * 2))
    assert kwargs["added_cond_kwargs"]["time_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="micro-conditioning"):
        fam.unet_kwargs(ours, None)


def test_an_unsupported_pipeline_class_is_refused_before_loading(tmp_path):
    from boothkit.pipeline import ModelNotFoundError

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelNotFoundError, match="FluxPipeline; boothkit works with StableDiffusionPipeline"):
        load_pipeline(str(tmp_path))


def test_micro_conditioning_follows_each_photo_and_its_crop():
    """SDXL's time ids per drawn image: the photo's original size, the crop's top-left in the photo resized to the
    short side (centre crop; a random window; mirrored by a flip), the target size."""
    from PIL import Image

    from boothkit.training.data import ImageSet

    wide, tall = Image.new("RGB", (200, 100), "red"), Image.new("RGB", (64, 128), "blue")
    s = ImageSet.from_images([wide, tall], 64, "p")
    g = torch.Generator().manual_seed(0)
    d = s.draw(8, g, flip=False)
    for i, m in zip(d.index, d.micro.tolist()):
        assert m == ([100, 200, 0, 32, 64, 64] if i == 0 else [128, 64, 32, 0, 64, 64])  # 128 wide: (128-64)/2
    r = ImageSet.from_images([wide], 64, "p", crop="random")
    for seed in range(4):
        d = r.draw(1, torch.Generator().manual_seed(seed), flip=True)
        top, left = d.micro[0, 2:4].tolist()
        assert top == 0 and 0 <= left <= 128 and not d.cacheable
        unflipped = r.draw(1, torch.Generator().manual_seed(seed), flip=False)
        assert torch.equal(unflipped.pixels, d.pixels.flip(-1) if d.flipped[0] else d.pixels)


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory, tiny_sdxl, subject_photos):
    out = tmp_path_factory.mktemp("sdxl-lora") / "rat"
    return tune("lora", subject_photos, "animal", out, model=tiny_sdxl, steps=3,
                config={**FAST, "rank": 4, "train_text_encoder": True})


def test_lora_on_sdxl_loads_with_the_stock_loader_and_draws_the_trained_model(sdxl_lora, tiny_sdxl):
    from safetensors.torch import load_file

    meta = json.loads((sdxl_lora / "concept.json").read_text())
    assert meta["family"] == "sdxl" and meta["resolution"] == 64
    keys = load_file(str(sdxl_lora / "pytorch_lora_weights.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    pipe = plain_sdxl(tiny_sdxl)
    pipe.load_lora_weights(str(sdxl_lora), weight_name="pytorch_lora_weights.safetensors")
    stock = sample(pipe, "a photo of sks animal")
    assert max_pixel_diff(stock, validation_image(sdxl_lora)) <= 1
    ours = apply_concepts(load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False), [sdxl_lora])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, "a photo of sks animal"), stock) == 0
    assert max_pixel_diff(sample(plain_sdxl(tiny_sdxl), "a photo of sks animal"), stock) > 0


def test_full_dreambooth_on_sdxl_with_prior_preservation(tmp_path, tiny_sdxl, subject_photos):
    from diffusers import StableDiffusionXLPipeline

    out = tune("dreambooth", subject_photos, "animal", tmp_path / "db", model=tiny_sdxl, steps=2,
               config={**FAST, "num_class_images": 2, "class_sample_steps": 2, "train_text_encoder": True})
    meta = json.loads((out / "concept.json").read_text())
    assert meta["trained_modules"] == ["unet", "text_encoder", "text_encoder_2"]
    stock = StableDiffusionXLPipeline.from_pretrained(str(out))  # the concept is a pipeline folder
    stock.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(stock, "a photo of sks animal"), validation_image(out)) <= 1
    ours = apply_concepts(load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False), [out])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, "a photo of sks animal"), validation_image(out)) <= 1


def test_a_concept_does_not_carry_over_between_families(sdxl_lora, tiny_sdxl, tiny_model, tmp_path,
                                                        subject_photos):
    sd_concept = tune("lora", subject_photos, "animal", tmp_path / "sd", model=tiny_model, steps=1,
                      config={**FAST, "validation_images": 0})
    with pytest.raises(InputError, match="made for a Stable Diffusion 1.x/2.x base model.*this pipeline is "
                                         "Stable Diffusion XL"):
        apply_concepts(load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False), [sd_concept])
    with pytest.raises(InputError, match="made for a Stable Diffusion XL base model"):
        apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [sdxl_lora])


def test_real_photos_train_on_sdxl_with_random_crops(tmp_path, tiny_sdxl, real_photos):
    """Real, non-square photos (DreamBench's dog, cut to 3:2 and 2:3): random square windows and their
    micro-conditioning reach the UNet."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, f in enumerate(sorted((real_photos / "dog").glob("*.jpg"))):
        with Image.open(f) as im:
            box = (0, 32, 192, 160) if i % 2 else (32, 0, 160, 192)
            im.crop(box).save(photos / f.name)
    out = tune("lora", photos, "dog", tmp_path / "dog", model=tiny_sdxl, steps=2,
               config={**FAST, "crop": "random", "validation_images": 0})
    assert json.loads((out / "concept.json").read_text())["training"]["steps"] == 2


def test_generate_cli_on_sdxl_with_a_concept(sdxl_lora, tiny_sdxl, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from boothkit.cli.main import app

    r = CliRunner().invoke(app, ["generate", "a photo of sks animal", "-n", "2", "--steps", "2", "--model", tiny_sdxl,
                                 "--concept", str(sdxl_lora), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out" / "image-000.png") as im:
        assert im.size == (64, 64)
    assert max_pixel_diff(Image.open(tmp_path / "out" / "image-000.png").convert("RGB"),
                          validation_image(sdxl_lora)) <= 1  # same seed 0, same steps as validation


def test_instantbooth_adapters_and_concept_on_sdxl(tmp_path, tiny_sdxl, real_photos):
    """InstantBooth on an SDXL base with a separate vision tower (the world's CLIPVisionModelWithProjection, loaded
    through transformers' own class): the concept embedding spans both encoders' widths, the adapters sit in every
    SDXL transformer block, and generation with photos differs from the base model."""
    from boothkit.methods.instantbooth import generate_instant
    from boothkit.methods.instantbooth.modules import model_dims, transformer_blocks
    from boothkit.generate import GenerateConfig
    from boothkit.pipeline import world_path

    from conftest import write_active_instantbooth

    pipe = load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False,
                         image_encoder=str(world_path() / "image_encoder"))
    pipe.set_progress_bar_config(disable=True)
    dims = model_dims(pipe)
    assert dims["text_dim"] == 64 and len(dims["blocks"]) == len(transformer_blocks(pipe.unet)) == 8  # 2 + 2 (mid) + 4
    enc = write_active_instantbooth(tmp_path / "ib", pipe, "dog", model=tiny_sdxl)
    cfg = GenerateConfig(n=1, steps=2)
    photos = real_photos / "dog"
    with_photos = generate_instant(pipe, enc, photos, "a photo of sks dog", cfg)[0]
    plain = sample(plain_sdxl(tiny_sdxl), "a photo of sks dog")
    assert max_pixel_diff(with_photos, plain) > 0
    assert not any(type(p).__name__ == "InstantBoothAttnProcessor" for p in pipe.unet.attn_processors.values())


def test_memory_options_on_sdxl_keep_the_weights(tmp_path, tiny_sdxl, subject_photos):
    """Gradient checkpointing (UNet and both text encoders) recomputes activations in the backward pass: the same
    weights as without it, up to float rounding; attention runs on PyTorch's SDPA (no xformers)."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    from safetensors.torch import load_file

    pipe = load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    weights = {}
    for gc in (False, True):
        out = tune("lora", subject_photos, "animal", tmp_path / f"gc{gc}", model=tiny_sdxl, steps=2,
                   config={**FAST, "validation_images": 0, "train_text_encoder": True, "gradient_checkpointing": gc})
        weights[gc] = load_file(str(out / "pytorch_lora_weights.safetensors"))
    for k in weights[False]:
        assert torch.allclose(weights[True][k], weights[False][k], atol=1e-5), k


def test_the_app_on_an_sdxl_base(tmp_path, tiny_sdxl):
    """The app names the base model's family, trains a LoRA concept as a job on the SDXL base and draws with it."""
    from boothkit.app.registry import registered_methods
    from boothkit.app.server import AppConfig

    from test_app_support import ServerThread, http, upload, wait_job, world_photos

    methods = {"lora": registered_methods()["lora"]}
    with ServerThread(AppConfig(data=tmp_path / "data", model=tiny_sdxl, methods=methods)) as s:
        health = http("GET", s.url + "/api/health").json()
        assert health["family"] == "Stable Diffusion XL" and health["model"] == tiny_sdxl
        r = upload(s.url, {"name": "rat", "class_noun": "rat", "steps": "2", "method": "lora",
                           "config": json.dumps({"validation_images": 0})}, world_photos(3))
        assert r.status == 202, r
        job = wait_job(s.url, r.json()["job"]["id"], timeout=300)
        assert job["status"] == "done", job
        g = http("POST", s.url + "/api/generate", json_body={"prompt": "a photo of <rat>", "steps": 2, "seed": 0})
        assert g.status == 200, g
        im = g.json()["images"][0]
        assert im["width"] == im["height"] == 64 and im["concepts"] == ["rat"]
