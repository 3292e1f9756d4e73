"""The world model's architectures: Stable-Diffusion-shaped, small enough to train in minutes and ship.

Every part is a stock diffusers / transformers class built from a config, so `StableDiffusionPipeline` loads the
folder without boothkit, and every personalisation method sees exactly the component names it sees on SD.
Sizes are chosen for 64x64 scenes (16x16x4 latents) and a ~80 MB budget for all committed weights.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

VOCAB = 49408  # SD's CLIP vocabulary, see tokenizer.py
TEXT_DIM = 128  # text hidden size = UNet cross-attention dim
EMBED_DIM = 128  # shared CLIP embedding space (text projection, visual projection)


def text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=EMBED_DIM, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))


def image_encoder() -> CLIPVisionModelWithProjection:
    # 64x64 scenes in 8x8 patches: 64 patch tokens + CLS, which InstantBooth's patch encoder reads.
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, image_size=64,
        patch_size=8, projection_dim=EMBED_DIM, hidden_act="quick_gelu",
    ))


def vae() -> AutoencoderKL:
    # three blocks: two downsamplings, 64x64x3 -> 16x16x4
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=16,
    )


def unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(64, 128, 192),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=32,
    )


def noise_scheduler() -> DDPMScheduler:
    """Training schedule: Stable Diffusion's (scaled-linear betas, 1000 steps, epsilon prediction)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


def sampling_scheduler() -> DPMSolverMultistepScheduler:
    """The pipeline's default sampler (same betas): good images in ~20 steps."""
    return DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="epsilon")
