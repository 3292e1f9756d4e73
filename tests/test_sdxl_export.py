"""`boothkit export` on SDXL: kohya's SDXL LoRA layout (lora_unet_ in Stability's block names, lora_te1_, lora_te2_)
and the A1111 SDXL embedding ({"clip_l", "clip_g"}), read back by diffusers' own kohya / A1111 readers on a tiny
random StableDiffusionXLPipeline, drawing what `generate --concept` draws."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from boothkit.inputs import InputError
from boothkit.methods import apply_concepts, tune
from boothkit.methods.webui import export_concept
from boothkit.pipeline import load_pipeline

from conftest import FAST, max_pixel_diff, plain_sdxl, sample

#: a kohya SDXL LoRA key: UNet modules in Stability's (sgm) block names, or a text encoder's module
KOHYA_SDXL = re.compile(r"^(lora_unet_(input_blocks_\d+_1|middle_block_1|output_blocks_\d+_1)_"
                        r"(transformer_blocks_\d+_|proj_)|lora_te[12]_text_model_encoder_layers_\d+_)[a-z0-9_]+"
                        r"\.(lora_down\.weight|lora_up\.weight|alpha)$")


@pytest.fixture(scope="module")
def deep_sdxl(tmp_path_factory, tiny_sdxl):
    """tiny_sdxl with a UNet laid out like SDXL base's where the kohya names depend on it: two layers per block
    (layers_per_block 2) and attention in every down and up block, so each of the block-index formulas is used with
    block > 0 and layer > 0."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
                                cross_attention_dim=64, norm_num_groups=8)
    pipe.register_modules(unet=unet)
    out = tmp_path_factory.mktemp("deep-sdxl") / "model"
    pipe.save_pretrained(str(out), safe_serialization=True)
    return str(out)


def _ours(model, concept, prompt):
    pipe = apply_concepts(load_pipeline(model, device="cpu", dtype="fp32", progress=False), [concept])
    pipe.set_progress_bar_config(disable=True)
    return sample(pipe, prompt)


def test_kohya_sdxl_names_are_stabilitys_block_names():
    """diffusers' module paths -> kohya's SDXL names on SDXL base's own layout (layers_per_block 2), checked against
    names kohya's SDXL LoRAs carry: down_blocks.1.attentions.0 is input_blocks.4.1, up_blocks.1.attentions.2 is
    output_blocks.5.1."""
    from types import SimpleNamespace

    from boothkit.families import family_named

    fam, cfg = family_named("sdxl"), SimpleNamespace(layers_per_block=2)
    rest = "transformer_blocks.0.attn2.to_k"
    assert fam.kohya_unet_path(cfg, f"down_blocks.1.attentions.0.{rest}") == f"input_blocks.4.1.{rest}"
    assert fam.kohya_unet_path(cfg, f"down_blocks.2.attentions.1.{rest}") == f"input_blocks.8.1.{rest}"
    assert fam.kohya_unet_path(cfg, "mid_block.attentions.0.proj_in") == "middle_block.1.proj_in"
    assert fam.kohya_unet_path(cfg, f"up_blocks.0.attentions.0.{rest}") == f"output_blocks.0.1.{rest}"
    assert fam.kohya_unet_path(cfg, f"up_blocks.1.attentions.2.{rest}") == f"output_blocks.5.1.{rest}"
    with pytest.raises(ValueError, match="transformer blocks only"):
        fam.kohya_unet_path(cfg, "down_blocks.1.resnets.0.conv1")
    assert family_named("sd").kohya_unet_path(cfg, f"down_blocks.1.attentions.0.{rest}") == \
        f"down_blocks.1.attentions.0.{rest}"  # SD LoRAs keep diffusers' names


def test_lora_with_both_text_encoders_exports_kohyas_sdxl_layout(tmp_path, deep_sdxl, subject_photos):
    tiny_sdxl = deep_sdxl
    concept = tune("lora", subject_photos, "animal", tmp_path / "rat", model=tiny_sdxl, steps=2,
                   config={**FAST, "validation_images": 0, "rank": 4, "alpha": 2.0, "train_text_encoder": True,
                           "lr": 1e-2})
    record = export_concept(concept, tmp_path / "w", name="ratxl")
    assert record["files"] == ["lora/ratxl.safetensors"] and record["prompt"] == "a photo of sks animal <lora:ratxl:1>"
    tensors = load_file(str(tmp_path / "w/lora/ratxl.safetensors"))
    assert all(KOHYA_SDXL.match(k) for k in tensors), [k for k in tensors if not KOHYA_SDXL.match(k)][:3]
    blocks = {re.match(r"lora_unet_(input_blocks_\d+|middle_block|output_blocks_\d+)_1_", k)[1] for k in tensors if k.startswith("lora_unet_")}
    assert blocks == {"input_blocks_1", "input_blocks_2", "input_blocks_4", "input_blocks_5", "middle_block",
                      *(f"output_blocks_{i}" for i in range(6))}  # 2 layers per down block, 3 per up block
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in tensors)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_1_self_attn_out_proj") for k in tensors)
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {2.0}
    with safe_open(str(tmp_path / "w/lora/ratxl.safetensors"), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4" and f.metadata()["ss_network_alpha"] == "2.0"

    prompt = "a photo of sks animal"
    pipe = plain_sdxl(tiny_sdxl)  # diffusers alone, reading the kohya file (its own sgm-name mapping)
    pipe.load_lora_weights(str(tmp_path / "w/lora"), weight_name="ratxl.safetensors")
    theirs = sample(pipe, prompt)
    assert max_pixel_diff(theirs, _ours(tiny_sdxl, concept, prompt)) <= 1
    assert max_pixel_diff(theirs, sample(plain_sdxl(tiny_sdxl), prompt)) > 0


def test_ti_exports_the_a1111_sdxl_embedding(tmp_path, tiny_sdxl, tiny_model, subject_photos):
    concept = tune("ti", subject_photos, "animal", tmp_path / "rat", model=tiny_sdxl, steps=2,
                   config={**FAST, "validation_images": 0, "num_vectors": 2, "lr": 0.05})
    record = export_concept(concept, tmp_path / "w", name="ratemb")
    assert record["files"] == ["embeddings/ratemb.safetensors"] and record["prompt"] == "a photo of ratemb animal"
    emb = load_file(str(tmp_path / "w/embeddings/ratemb.safetensors"))
    assert sorted(emb) == ["clip_g", "clip_l"] and emb["clip_l"].shape == emb["clip_g"].shape == (2, 32)
    assert torch.equal(emb["clip_l"], load_file(str(concept / "learned_embeds.safetensors"))["<sks>"])
    assert torch.equal(emb["clip_g"], load_file(str(concept / "learned_embeds_2.safetensors"))["<sks>"])

    pipe = plain_sdxl(tiny_sdxl)  # the way diffusers' documentation loads an A1111 SDXL embedding
    pipe.load_textual_inversion(emb["clip_g"], token="ratemb", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(emb["clip_l"], token="ratemb", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    theirs = sample(pipe, record["prompt"])
    assert max_pixel_diff(theirs, _ours(tiny_sdxl, concept, "a photo of <sks> animal")) <= 1
    assert max_pixel_diff(theirs, sample(plain_sdxl(tiny_sdxl), "a photo of <sks> animal")) > 0
    # an embedding export loads no pipeline, but --model of another family is still refused
    with pytest.raises(InputError, match="made for a Stable Diffusion XL base model.*is Stable Diffusion 1.x/2.x"):
        export_concept(concept, tmp_path / "w2", model=tiny_model)
    assert not (tmp_path / "w2").exists()


def test_custom_diffusion_exports_an_sdxl_lora_and_sdxl_embeddings(tmp_path, tiny_sdxl, subject_photos,
                                                                   second_subject_photos):
    concept = tune("custom", subject_photos, "animal", tmp_path / "pair", model=tiny_sdxl, steps=2,
                   subjects=[(second_subject_photos, "food")],
                   config={**FAST, "validation_images": 0, "lr": 1e-2, "prior_preservation": False})
    record = export_concept(concept, tmp_path / "w", name="pqz")
    assert record["files"] == ["embeddings/pqz-2.safetensors", "embeddings/pqz.safetensors", "lora/pqz.safetensors"]
    assert record["prompt"] == "a photo of pqz animal and pqz-2 food <lora:pqz:1>"
    assert record["lora_relative_error"] < 1e-5
    tensors = load_file(str(tmp_path / "w/lora/pqz.safetensors"))
    assert tensors and all(KOHYA_SDXL.match(k) and ("_attn2_to_k." in k or "_attn2_to_v." in k) for k in tensors)
    assert all(k.split(".")[0].endswith(("to_k", "to_v")) for k in tensors)

    pipe = plain_sdxl(tiny_sdxl)
    pipe.load_lora_weights(str(tmp_path / "w/lora"), weight_name="pqz.safetensors")
    for name in ("pqz", "pqz-2"):
        emb = load_file(str(tmp_path / f"w/embeddings/{name}.safetensors"))
        assert sorted(emb) == ["clip_g", "clip_l"] and emb["clip_g"].shape == (1, 32)
        pipe.load_textual_inversion(emb["clip_g"], token=name, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
        pipe.load_textual_inversion(emb["clip_l"], token=name, text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)
    theirs = sample(pipe, "a photo of pqz animal and pqz-2 food")
    prompt = "a photo of <new1> animal and <new2> food"
    assert max_pixel_diff(theirs, _ours(tiny_sdxl, concept, prompt)) <= 1
    assert max_pixel_diff(theirs, sample(plain_sdxl(tiny_sdxl), prompt)) > 0


def test_full_dreambooth_on_sdxl_exports_an_extracted_lora_with_both_text_encoders(tmp_path, tiny_sdxl,
                                                                                   subject_photos):
    concept = tune("dreambooth", subject_photos, "animal", tmp_path / "db", model=tiny_sdxl, steps=2,
                   config={**FAST, "validation_images": 0, "lr": 1e-3, "prior_preservation": False,
                           "train_text_encoder": True})
    record = export_concept(concept, tmp_path / "w", name="dbx", rank=0)
    assert record["files"] == ["lora/dbx.safetensors"] and record["lora_relative_error"] < 1e-5
    assert 0 < record["change_outside_the_lora"] < 1
    keys = load_file(str(tmp_path / "w/lora/dbx.safetensors"))
    assert all(KOHYA_SDXL.match(k) for k in keys), [k for k in keys if not KOHYA_SDXL.match(k)][:3]
    assert {k[:9] for k in keys if k.startswith("lora_te")} == {"lora_te1_", "lora_te2_"}
    assert any("_ff_net_" in k for k in keys) and not any("text_projection" in k for k in keys)

    prompt = "a photo of sks animal"
    pipe = plain_sdxl(tiny_sdxl)
    pipe.load_lora_weights(str(tmp_path / "w/lora"), weight_name="dbx.safetensors")
    extracted = np.asarray(sample(pipe, prompt), dtype=np.float64)
    tuned = np.asarray(_ours(tiny_sdxl, concept, prompt), dtype=np.float64)
    base = np.asarray(sample(plain_sdxl(tiny_sdxl), prompt), dtype=np.float64)
    assert np.abs(extracted - tuned).mean() < np.abs(base - tuned).mean()  # the LoRA carries most of the change


def test_an_sd_concept_is_not_exported_onto_an_sdxl_base(tmp_path, tiny_sdxl, tiny_model, subject_photos):
    concept = tune("lora", subject_photos, "animal", tmp_path / "rat", model=tiny_model, steps=1,
                   config={**FAST, "validation_images": 0})
    with pytest.raises(InputError, match="made for a Stable Diffusion 1.x/2.x base model.*is Stable Diffusion XL"):
        export_concept(concept, tmp_path / "w", model=tiny_sdxl)
    assert not (tmp_path / "w").exists()
    assert export_concept(concept, tmp_path / "w", model=tiny_model)["files"] == ["lora/rat.safetensors"]
