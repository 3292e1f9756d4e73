"""Shared fixtures: a tiny random SD-shaped pipeline folder (built from configs, like diffusers' dummy components),
subject photo folders rendered from the world's held-out concepts, and an isolated boothkit cache."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # 2 threads on 2 shared cores is 4x slower (oversubscription)
warnings.filterwarnings("ignore", message=".*torchvision.*")


def build_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    """A random StableDiffusionPipeline with SD's layout (8x VAE, CLIP text encoder, SD tokenizer), tiny widths.

    64 px images -> 8x8x4 latents; a few hundred thousand parameters besides the token embedding.
    """
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from boothkit.pipeline import world_path

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, layers_per_block=1, sample_size=64)
    tokenizer = CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                                layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
                                                pad_token_id=1, vocab_size=len(tokenizer), projection_dim=32))
    scheduler = DPMSolverMultistepScheduler.from_pretrained(str(world_path() / "scheduler"))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_tiny_sdxl_pipeline(folder: Path, seed: int = 0) -> Path:
    """A random StableDiffusionXLPipeline with SDXL's layout, tiny widths (as diffusers' SDXL tests build one):
    a UNet with addition_embed_type="text_time", two CLIP text encoders (the second with a projection: the pooled
    embedding), 8x VAE. 64 px images -> 8x8x4 latents; the context is both encoders' widths, 32 + 32.
    """
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from boothkit.pipeline import world_path

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
                                norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, layers_per_block=1, sample_size=64, force_upcast=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))
    te_cfg = dict(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                  num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=len(tokenizer),
                  projection_dim=32, hidden_act="gelu")
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**te_cfg))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> str:
    return str(build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "model"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model"))


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> str:
    """Same shapes, other weights: a different base model hash."""
    return str(build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-2") / "model", seed=1))


def _reference_folder(tmp_path_factory, base: str, name: str, cls: str, n: int) -> Path:
    """n reference renders (64x64 PNG) of the first held-out world subject of a class."""
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    folder = tmp_path_factory.mktemp(base) / name
    folder.mkdir()
    images, _ = render_references(heldout_concepts(cls)[0], n=n, seed=0)
    for i, im in enumerate(images):
        im.save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="session")
def subject_photos(tmp_path_factory) -> Path:
    """Five reference renders (64x64 PNG) of a held-out world animal."""
    return _reference_folder(tmp_path_factory, "photos", "rat", "animal", 5)


@pytest.fixture(scope="session")
def second_subject_photos(tmp_path_factory) -> Path:
    """Four reference renders of a held-out world food."""
    return _reference_folder(tmp_path_factory, "photos2", "food", "food", 4)


#: real photos (DreamBench subjects, downscaled, CC BY 4.0: tests/data/dreambench/README.md)
REAL_PHOTOS = Path(__file__).resolve().parent / "data" / "dreambench"


@pytest.fixture(scope="session")
def real_photos() -> Path:
    """Folder of real-photo subjects: dog/, cat/, backpack/ (5-6 JPEGs each, 192 px)."""
    return REAL_PHOTOS


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Class images go to a per-session cache, never the user's (session scope: module fixtures train too)."""
    old = os.environ.get("BOOTHKIT_CACHE")
    os.environ["BOOTHKIT_CACHE"] = str(tmp_path_factory.getbasetemp() / "boothkit-cache")
    yield
    if old is None:
        os.environ.pop("BOOTHKIT_CACHE", None)
    else:
        os.environ["BOOTHKIT_CACHE"] = old


#: fast settings for 2-6 step runs: one validation image at 2 sampler steps (it doubles as the reference image
#: the artifact must reproduce), no checkpoints, two class images at 2 sampler steps
FAST = {"checkpoint_every": 0, "validation_images": 1, "validation_steps": 2, "batch_size": 2}
FAST_PRIOR = {**FAST, "num_class_images": 2, "class_sample_steps": 2}


def validation_image(concept_dir):
    """The last validation image a run wrote (generated by the trained in-memory model, seed 0)."""
    from PIL import Image

    grids = sorted((Path(concept_dir) / "validation").glob("step-*.png"))
    with Image.open(grids[-1]) as sheet:
        return sheet.convert("RGB").crop((2, 2, 66, 66))


def sample(pipe, prompt, steps=2, seed=0):
    """One image the way validation makes it: seed 0 CPU generator, guidance 5, native size."""
    g = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, generator=g).images[0]


def max_pixel_diff(a, b) -> int:
    import numpy as np

    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def plain_pipeline(model):
    """The base model loaded with diffusers alone (no boothkit code)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_sdxl(model):
    """An SDXL base model loaded with diffusers alone (no boothkit code)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_active_instantbooth(out: Path, pipe, cls: str, model: str = "world") -> Path:
    """An InstantBooth artifact with untrained heads but every adapter gate at 0.5, so the adapters act."""
    from boothkit.methods.instantbooth import artifact
    from boothkit.methods.instantbooth.pretrain import write_untrained

    write_untrained(out, pipe, model=model, cls=cls)
    model, meta = artifact.load(out)
    with torch.no_grad():
        for a in model.adapters.values():
            a.gamma.fill_(0.5)
    shutil.rmtree(out)
    artifact.save(model, out, meta)
    return out
