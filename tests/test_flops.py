"""The FLOPs/bytes counter (boothkit.bench.flops): against hand counts, autograd's shape of a backward, and the
published parameter counts of SD-1.5 and SDXL (meta-device models: nothing is allocated)."""

import json

import pytest
import torch

from boothkit.bench import flops

#: a small SD-shaped model: two levels, one cross-attention block each way, a 2-level VAE, a 2-layer text encoder
TINY = {
    "unet": {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64], "layers_per_block": 1,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32,
             "attention_head_dim": 8, "norm_num_groups": 8, "sample_size": 8, "in_channels": 4, "out_channels": 4},
    "vae": {"_class_name": "AutoencoderKL", "block_out_channels": [16, 32], "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "norm_num_groups": 8, "latent_channels": 4, "sample_size": 16},
    "text_encoder": {"architectures": ["CLIPTextModel"], "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
                     "max_position_embeddings": 77},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-model")
    for part, cfg in TINY.items():
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(cfg))
    return str(root)


def test_attention_layer_matches_a_hand_count():
    """One cross-attention layer: q from x, k and v from the context, QK^T and AV per head, the output projection;
    2 FLOPs per multiply-add (diffusers' Attention, SDPA decomposed on the meta device)."""
    from diffusers.models.attention_processor import Attention

    b, n, m, d, c, heads, dh = 2, 10, 7, 32, 16, 2, 8
    with torch.device("meta"):
        attn = Attention(query_dim=d, cross_attention_dim=c, heads=heads, dim_head=dh)
    x, ctx = torch.empty(b, n, d, device="meta"), torch.empty(b, m, c, device="meta")
    with torch.no_grad():
        counted = flops.count_flops(lambda: attn(x, encoder_hidden_states=ctx))
    inner = heads * dh
    hand = 2 * b * (n * d * inner + 2 * m * c * inner + 2 * n * m * inner + n * inner * d)
    assert counted == hand


def test_backward_counts_only_what_autograd_computes(tiny):
    """Full fine-tuning's backward is ~2x the forward (input and weight gradients); Textual Inversion's computes no
    UNet weight gradient, so it is about half of that; LoRA and Custom Diffusion add a few weight gradients."""
    fwd, db = flops.unet_train_flops(tiny, "dreambooth", batch=2)
    ti = flops.unet_train_flops(tiny, "ti", batch=2)[1]
    lora = flops.unet_train_flops(tiny, "lora", batch=2)[1]
    custom = flops.unet_train_flops(tiny, "custom", batch=2)[1]
    assert 1.9 < db / fwd <= 2.0  # conv_in needs no input gradient: a little under 2
    assert 0.45 < ti / db < 0.6
    assert ti < custom < db and ti < lora < db
    # twice the batch, twice the work
    assert flops.unet_train_flops(tiny, "dreambooth", batch=4)[0] == 2 * fwd


def test_step_parts_and_cache(tiny):
    step = flops.train_step_flops(tiny, "lora", batch=2)
    assert step.vae_encode == flops.vae_flops(tiny, "encode", images=2) > 0
    assert step.text_forward == flops.text_encoder_flops(tiny, prompts=2) > 0 and step.text_backward == 0
    cached = flops.train_step_flops(tiny, "lora", batch=2, cached=True)
    assert cached.vae_encode == cached.text_forward == 0 and cached.total == step.unet_forward + step.unet_backward
    ti = flops.train_step_flops(tiny, "ti", batch=2, cached=True)  # a trained embedding: the text encoder runs
    assert ti.text_forward > 0 and ti.text_backward > 0


def test_sampling_step_is_the_guided_unet(tiny):
    one = flops.sampling_step_flops(tiny, guidance=False)
    assert flops.sampling_step_flops(tiny) == 2 * one
    # 4x the pixels: convolutions and projections 4x, self-attention's token pairs 16x
    small, large = flops.sampling_step_flops(tiny, resolution=32), flops.sampling_step_flops(tiny, resolution=64)
    assert 4 * small < large < 16 * small


def test_reference_architectures_have_the_published_sizes():
    sd15 = flops.parameter_counts("sd15")
    assert sd15["unet"] == 859_520_964 and sd15["vae"] == 83_653_863 and sd15["text_encoder"] == 123_060_480
    assert sd15["image_encoder"] == 303_966_208  # CLIP ViT-L/14 vision tower with its projection
    sdxl = flops.parameter_counts("sdxl")
    assert sdxl["unet"] == 2_567_463_684 and sdxl["text_encoder_2"] == 694_659_840
    assert flops.default_resolution("sd15") == 512 and flops.default_resolution("sdxl") == 1024


def test_training_bytes():
    n = 859_520_964
    db = flops.training_bytes("sd15", "dreambooth")
    assert db["trainable_parameters"] == n and db["gradient_bytes"] == 4 * n and db["optimizer_bytes"] == 8 * n
    held = sum(v for k, v in flops.parameter_counts("sd15").items() if k != "image_encoder")
    assert db["weights_bytes"] == 4 * held
    assert flops.training_bytes("sd15", "dreambooth", precision="adam8bit")["optimizer_bytes"] == 2 * n
    bf16 = flops.training_bytes("sd15", "lora", precision="bf16")
    lora = bf16["trainable_parameters"]
    assert 0 < lora < n / 100 and bf16["weights_bytes"] == 2 * held + 4 * lora
    # TI: boothkit's optimizer holds the new row only; diffusers' script the whole (49,408 + 1) x 768 matrix
    ti = flops.training_bytes("sd15", "ti")
    assert ti["trainable_parameters"] == 768 and ti["parameters"] == held + 768
    assert ti["weights_bytes"] == 4 * (held + 768) and ti["optimizer_bytes"] == 8 * 768
    whole = flops.training_bytes("sd15", "ti", whole_matrix=True)
    assert whole["trainable_parameters"] == 49_409 * 768 and whole["parameters"] == held + 768
    assert whole["weights_bytes"] == ti["weights_bytes"]


def test_pretraining_steps_count_what_each_encoder_back_propagates():
    """InstantBooth's step: no gradient through the text encoders (the concept goes into their output); E4T's: the
    word is an input embedding, so the text encoders' backward is counted. Neither computes the UNet's weight
    gradients (its backward is below a full DreamBooth step's at the same batch), and gradient checkpointing adds
    exactly one UNet forward."""
    from boothkit.bench.flops import pretrain_step_flops, unet_train_flops
    from boothkit.pipeline import world_path

    world = world_path()
    ib = pretrain_step_flops(world, "instantbooth", batch=2)
    e4t = pretrain_step_flops(world, "e4t", batch=2)
    assert ib["text_backward"] == 0 < e4t["text_backward"]
    assert ib["total"] == sum(v for k, v in ib.items() if k != "total")
    _, full_bwd = unet_train_flops(world, "dreambooth", batch=2)
    assert 0 < e4t["unet_backward"] < full_bwd and 0 < ib["unet_backward"] < full_bwd
    ckpt = pretrain_step_flops(world, "e4t", batch=2, gradient_checkpointing=True)
    assert ckpt["unet_forward"] == 2 * e4t["unet_forward"]
    with pytest.raises(ValueError, match="unknown method"):
        pretrain_step_flops(world, "lora", batch=2)
