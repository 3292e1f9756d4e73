"""boothkit against faithful peer loops of diffusers' training examples: step time, time to artifact, peak memory.

    python benchmarks/vs_peer.py [--quick] [--models world,sd15,sdxl] [--methods lora,dreambooth,ti,custom,e4t,instantbooth]
                                 [--steps 60] [--sdxl-steps 8] [--repeats 3] [--set key=value ...] [--src DIR]
                                 [--out FILE]

Prints one JSON object (also written to --out). For each model and method, boothkit's `tune` (its public API,
`boothkit.methods.tune`, in a fresh subprocess, as a user's command runs it: imports, model load, training,
saving) and a peer loop (also a fresh subprocess) run on the same model, photos, steps, batch, resolution,
learning rate, seed and 1 torch thread, interleaved (boothkit first in even repeats, the peer first in odd ones),
after one untimed warm-up run that fills the file cache, boothkit's hash cache and the class images (which the
peer then reads from its class-image folder, as the scripts do when the folder already holds enough images).
Both sides stamp the wall clock at the end of each optimizer step (boothkit through `tune(on_step=...)`, the peer
after its progress bar and log call, where the scripts end an iteration): step time = the median of the
differences (the first step, with its one-time costs, is left out), time to artifact = from the spawn of the
process to the artifact on disk, peak RSS = the child's high-water mark from the kernel (wait4's ru_maxrss; the
child is forked, not vforked, so the parent's own high-water mark does not leak into it).
Ratios are per pair (peer / boothkit for times: > 1 means boothkit is faster; boothkit / peer for memory) and
summarised by their median, min and max. The machine's load average, its CPU use while each child ran and each
child's CPU share (its CPU seconds / wall seconds; < 1 when it waited for a core) are recorded: the numbers are
only as quiet as the machine was.

The peer loops were written for this benchmark from a reading of diffusers' examples at tag v0.40.0 (the newest
release in the stored diffusers repository; the installed library is 0.42.1); none of their code is copied. Each
reproduces what its script does per step, with the settings of boothkit's recipe for that method:

- lora, `examples/dreambooth/train_dreambooth_lora.py`: tokenizer, CLIPTextModel, AutoencoderKL, UNet loaded one
  by one (DDPMScheduler from the scheduler folder), all frozen; peft LoRA (r = alpha = rank, gaussian init) on
  to_q/to_k/to_v/to_out.0 (+ add_k_proj/add_v_proj, absent in SD UNets); torch AdamW (betas 0.9/0.999, eps 1e-8);
  accelerate prepares unet, optimizer, data loader and a constant lr scheduler. The data set opens each photo from
  disk at every draw (PIL, EXIF transpose, RGB, resize of the short side (Lanczos), random crop, to tensor,
  normalise to [-1, 1]) and tokenises the prompt per example; DataLoader, shuffle, no workers, no flip. Per step:
  VAE encode + posterior sample x scaling factor, randn noise, random timesteps, add_noise, text encoder on the
  token ids (no caching: `--pre_compute_text_embeddings` is off by default), UNet, MSE (instance + prior_weight x
  prior halves when prior preservation is on), backward, clip_grad_norm_, optimizer.step, lr_scheduler.step,
  zero_grad, progress bar update, loss.item() and accelerator.log. After the last step: LoRA state dict saved with
  StableDiffusionLoraLoaderMixin.save_lora_weights (the artifact), then the script reloads the pipeline and loads
  the LoRA into it (its final-inference block; no images without a validation prompt).
- dreambooth, `examples/dreambooth/train_dreambooth.py`: the same per step with the whole UNet trained (AdamW over
  unet.parameters()), prior preservation with class images (instance and class examples concatenated in one
  batch), zero_grad(set_to_none=False) (its `--set_grads_to_none` is off by default), Resize with bilinear
  interpolation. Artifact: DiffusionPipeline.from_pretrained(base, unet=trained).save_pretrained(out).
- ti, `examples/textual_inversion/textual_inversion.py`: placeholder token added and initialised from the class
  word, the text encoder frozen except its token embedding (the whole matrix is the optimised parameter), AdamW;
  data: one of its imagenet templates per example, photo from disk, bicubic resize, random flip p = 0.5. Per step:
  VAE encode (.sample()), noise, timesteps, add_noise, text encoder with gradient, UNet, MSE, backward, step, lr
  step, zero_grad, then every embedding row but the placeholder's restored from a saved copy; no gradient
  clipping. Artifact: learned_embeds.safetensors.
- custom, `examples/custom_diffusion/train_custom_diffusion.py`: modifier token (<new1>, initialised from
  boothkit's init word), CustomDiffusionAttnProcessor2_0 in every attention layer (K/V copies trained in the
  cross-attention ones), AdamW over the token embedding and the processors; `--noaug` (boothkit's default has no
  resize augmentation) and `--hflip` (boothkit flips); prior preservation with class images. Per step: VAE encode,
  noise, timesteps, add_noise, text encoder, UNet, masked instance MSE + prior MSE, backward, gradients of every
  embedding row but the modifier's zeroed, clip_grad_norm_ over the text encoder and processors, step, lr step,
  zero_grad. Artifact: unet.save_attn_procs + <new1>.safetensors; then the script's pipeline reload.

Left out of every peer, as they would cost it time: its own class-image generation (the folder is full), the
tensorboard tracker (its `--report_to` default; tensorboard is not installed here, so accelerate gets no tracker),
checkpoints and validation (their defaults, every 500 steps and only with a validation prompt, do not fire in
these runs). boothkit runs with its defaults (a validation grid of 4 images at the end, a checkpoint every 50
steps, its JSON-lines log) unless `--set` says otherwise. torchvision is not installed here: the peers' image
transforms are the same PIL operations written out.

E4T and InstantBooth have no diffusers example: boothkit's own numbers are reported (E4T: its 5 default tuning
steps; InstantBooth: `tune --method instantbooth` time to artifact, photos to the first image in one process,
the warm path of a process that already holds the pipeline, and DreamBooth's default recipe from photos to its
first image beside it).

Models: `world` (the shipped world model, 64 px) and `sd15` (the SD-1.5 UNet, VAE and text encoder shapes of
assets/reference_configs/sd15 with random weights, saved once as a pipeline folder in the work folder, trained at
a reduced resolution: 128 px, a 16 x 16 latent; full DreamBooth is left out there: weights, gradients and AdamW
state of an 860 M-parameter UNet need ~14 GB, more than this shared machine can give one process).

Model `sdxl` (make_sdxl): a StableDiffusionXLPipeline folder with random weights, SDXL base's configs
(assets/reference_configs/sdxl) reduced so that LoRA and full DreamBooth run in minutes on one CPU thread. Kept as
published: the UNet's layout (3 blocks, DownBlock2D first, 2 resnets per block, UNetMidBlock2DCrossAttn, linear
projections, 64-wide attention heads), addition_embed_type "text_time" with addition_time_embed_dim 256 and
projection_class_embeddings_input_dim 2816 (6 x 256 + 1280), cross_attention_dim 2048, both text encoders' widths
(CLIPTextModel 768, CLIPTextModelWithProjection 1280 with its 1280 projection: the pooled embedding), vocabulary and
77 positions, and the whole VAE (force_upcast). Reduced (SDXL_UNET, SDXL_TEXT_LAYERS): the UNet's widths halved,
block_out_channels 320/640/1280 -> 160/320/640 (heads 5/10/20 -> 5/5/10), transformer layers per block 1/2/10 ->
1/1/2; text encoder depth 12 -> 2 and 32 -> 2 layers. Parameter counts (the run records them in params.json and its
report): UNet 232 M (SDXL base: 2.57 G), text encoders 52 M + 104 M (123 M + 695 M), VAE 84 M (the same). Trained
at 128 px (a 16 x 16 latent); the micro-conditioning is computed as for any size (original size, crop top-left,
target size). Steps default to 8 and repeats to 2 (SDXL); every variant of a method runs once per repeat, the
order reversed in odd repeats.
- boothkit: `lora` and `dreambooth` (full UNet, prior preservation with 4 class images it makes in the warm-up) each
  "plain" (cache=false, gradient_checkpointing=false), "default" (cache=true: VAE latents and the frozen text
  conditioning cached) and "memory" (cache=true, gradient_checkpointing=true). Its third memory option, 8-bit
  AdamW, needs bitsandbytes on CUDA (not on CPU, not installed): the loop falls back to torch AdamW, recorded as
  options.adam8bit_used = false.
- peer, `examples/dreambooth/train_dreambooth_lora_sdxl.py` (run_peer_sdxl), with its defaults and, as a second
  variant, its `--gradient_checkpointing`: both tokenizers (slow) and text encoders (CLIPTextModel,
  CLIPTextModelWithProjection), AutoencoderKL, UNet loaded, all frozen; DDPMScheduler from the scheduler folder (the
  scheduler is not EDM); VAE in fp32, the rest in the weight dtype (fp32: mixed precision "no"); peft LoRA
  (r = alpha = rank, dropout 0, gaussian init) on to_k/to_q/to_v/to_out.0; torch AdamW (0.9/0.999, 1e-8, boothkit's
  lr and weight decay); accelerate prepares unet, optimizer, data loader and a constant lr scheduler. Its data set
  opens and preprocesses each photo ONCE when built (EXIF transpose, RGB, original size kept, short side resized
  (Lanczos), `--random_flip` (boothkit flips) before a random crop whose top-left is kept, normalised); the text
  encoders are frozen and the prompt fixed, so the prompt's embeddings (both encoders' penultimate hidden states
  concatenated, [1, 77, 2048]) and text_encoder_2's pooled embedding [1, 1280] are computed once before training.
  Per step: VAE encode + posterior sample x scaling factor (this script has no --cache_latents option at v0.40.0;
  the VAE runs every step), randn noise, random timesteps, add_noise, add_time_ids = (original h, w, crop top, left,
  128, 128) per example, the embeddings repeated to the batch, UNet with added_cond_kwargs {time_ids, text_embeds},
  MSE on epsilon, backward, clip_grad_norm_ over the LoRA parameters, optimizer.step, lr_scheduler.step,
  zero_grad, progress bar, loss.item() and accelerator.log. After the last step: the LoRA state dict (fp32, peft ->
  diffusers names) saved with StableDiffusionXLPipeline.save_lora_weights (the artifact), then the script's
  final-inference block reloads the VAE and the pipeline and loads the LoRA (no images without a validation prompt).
  Ratios: boothkit plain vs the peer's defaults, boothkit default vs the peer's defaults, boothkit memory vs the
  peer with --gradient_checkpointing (the script has no latent cache to match boothkit's).
- DreamBooth: diffusers has no full-UNet DreamBooth script for SDXL at v0.40.0 (train_dreambooth.py passes no
  added_cond_kwargs, so it cannot drive an SDXL UNet; text_to_image/train_text_to_image_sdxl.py fine-tunes the whole
  UNet on a captioned data set, without instance/class prompts or prior preservation): boothkit's numbers alone,
  no ratio. (`--cache_latents` exists only in advanced_diffusion_training/train_dreambooth_lora_sdxl_advanced.py,
  off by default there too; not measured.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
FINE_TUNING = ("lora", "dreambooth", "ti", "custom")
ENCODERS = ("e4t", "instantbooth")
#: subject photos: 4, so that every batch of 2 or 4 is full in the peers' data loaders (no drop_last in the scripts)
PHOTOS = 4
#: the SD-1.5-shaped model: resolution, steps, repeats, and what its class images cost to make
SD15 = {"resolution": 128, "steps": 8, "quick_steps": 6, "class_images": 4, "class_sample_steps": 2}
#: the reduced SDXL-shaped model (make_sdxl): resolution, steps, repeats, class images (DreamBooth's prior)
SDXL = {"resolution": 128, "steps": 8, "quick_steps": 6, "repeats": 2, "class_images": 4, "class_sample_steps": 2}
#: what make_sdxl changes in SDXL base's configs (assets/reference_configs/sdxl): widths halved, fewer transformer
#: layers in the deep blocks, text encoders 2 layers deep; everything else (3 blocks, 2 resnets per block, 64-wide
#: attention heads, text_time conditioning, cross-attention 2048, pooled 1280, VAE) as published
SDXL_UNET = {"block_out_channels": [160, 320, 640], "transformer_layers_per_block": [1, 1, 2],
             "attention_head_dim": [5, 5, 10]}
SDXL_TEXT_LAYERS = {"text_encoder": 2, "text_encoder_2": 2}
#: boothkit's variants on the SDXL-shaped model: "plain" (nothing cached, no checkpointing), its default (VAE latents
#: and frozen text cached), "memory" (cache + gradient checkpointing; its third memory option, bitsandbytes' 8-bit
#: AdamW, has no CPU kernels: the loop falls back to torch AdamW and the run records it)
SDXL_VARIANTS = {"plain": {"cache": False, "gradient_checkpointing": False},
                 "default": {"cache": True, "gradient_checkpointing": False},
                 "memory": {"cache": True, "gradient_checkpointing": True}}
#: the peer's variants: the script's defaults, and with its --gradient_checkpointing
SDXL_PEER_VARIANTS = {"defaults": {"gradient_checkpointing": False}, "gradient_checkpointing": {"gradient_checkpointing": True}}
#: the ratios reported: (boothkit variant, peer variant), like for like where the peer has the option
SDXL_PAIRS = (("plain", "defaults"), ("default", "defaults"), ("memory", "gradient_checkpointing"))


# ==================================================================================================================
# children: one training run each, in a fresh process
# ==================================================================================================================

def child_main(side: str, spec: dict) -> None:
    import time as _t

    t_main = _t.time()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    out = {"t_main": t_main}
    if side == "boothkit":
        out.update(run_boothkit(spec))
    elif spec.get("family") == "sdxl":
        out.update(run_peer_sdxl(spec))
    else:
        out.update(run_peer(spec))
    Path(spec["result"]).write_text(json.dumps(out))


def run_boothkit(spec: dict) -> dict:
    """boothkit's public API, as `boothkit tune` calls it; optionally the first image after it."""
    import time as _t

    stamps: list[float] = []
    from boothkit.methods import tune

    t_imported = _t.time()
    path = tune(spec["method"], spec["photos"], spec["class_noun"], spec["out"], model=spec["model"],
                steps=spec.get("steps"), config=spec.get("config") or None,
                on_step=lambda step, loss: stamps.append(_t.time()))
    res = {"t_imported": t_imported, "step_stamps": stamps, "t_saved": _t.time()}
    cfg = json.loads((Path(path) / "concept.json").read_text()).get("config", {})
    res["options"] = {**speed_flags(), **{k: cfg[k] for k in ("cache", "fused_adamw", "mixed_precision",
                                                               "gradient_checkpointing", "use_8bit_adam")
                                          if k in cfg}}
    if "use_8bit_adam" in cfg:  # asked for by default; training/loop.py uses it only with bitsandbytes on CUDA
        import importlib.util

        import torch

        res["options"]["adam8bit_used"] = bool(cfg["use_8bit_adam"] and torch.cuda.is_available()
                                               and importlib.util.find_spec("bitsandbytes"))
    if spec.get("first_image"):
        res.update(first_image(spec, path))
    return res


def speed_flags() -> dict:
    """The process's settings that only a GPU can show the effect of (recorded on both sides)."""
    import torch

    return {"device": "cuda" if torch.cuda.is_available() else "cpu",
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "sdpa": hasattr(torch.nn.functional, "scaled_dot_product_attention")}


def first_image(spec: dict, concept: str) -> dict:
    """One image of the concept in this process (what `generate --concept` does after loading)."""
    import time as _t

    import torch

    from boothkit.generate import GenerateConfig, generate_images
    from boothkit.methods import apply_concepts
    from boothkit.pipeline import load_pipeline

    pipe = apply_concepts(load_pipeline(spec["model"], device="cpu", progress=False), [concept])
    meta = json.loads((Path(concept) / "concept.json").read_text())
    with torch.no_grad():
        generate_images(pipe, meta["prompt"], GenerateConfig(n=1, seed=0))
    return {"t_first_image": _t.time()}


def run_instant(spec: dict) -> dict:
    """InstantBooth from photos to the first image in one process (`generate --instant`), then the warm path: the
    same again in the process that already holds the pipeline (as the app's server does)."""
    import time as _t

    import torch

    from boothkit.generate import GenerateConfig
    from boothkit.methods.instantbooth import generate_instant
    from boothkit.encoders import shipped_instantbooth
    from boothkit.pipeline import load_pipeline

    t_imported = _t.time()
    pipe = load_pipeline(spec["model"], device="cpu", progress=False)
    t_loaded = _t.time()
    prompt = f"a photo of sks {spec['class_noun']}"
    with torch.no_grad():
        encoder = shipped_instantbooth(spec["model"]).path  # what a bare `generate --instant` looks up
        generate_instant(pipe, encoder, spec["photos"], prompt, GenerateConfig(n=1, seed=0))
        t_first = _t.time()
        warm = []
        for _ in range(3):
            t = _t.time()
            generate_instant(pipe, encoder, spec["photos"], prompt, GenerateConfig(n=1, seed=0))
            warm.append(_t.time() - t)
    return {"t_imported": t_imported, "t_loaded": t_loaded, "t_first_image": t_first, "warm_seconds": warm}


# --- the peer loops ------------------------------------------------------------------------------------------------

def run_peer(spec: dict) -> dict:
    import time as _t

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, CLIPTextModel

    t_imported = _t.time()
    method, base, out = spec["method"], spec["model_dir"], Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no",
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    set_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(base, subfolder="tokenizer", use_fast=False)
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    dev = accelerator.device
    token_ids: list[int] = []
    if method in ("ti", "custom"):  # a new token, initialised from a word; only the embedding trains
        token = spec["token"]
        tokenizer.add_tokens([token])
        token_ids = tokenizer.convert_tokens_to_ids([token])
        init = tokenizer.encode(spec["init_word"], add_special_tokens=False)[0]
        text_encoder.resize_token_embeddings(len(tokenizer))
        with torch.no_grad():
            emb = text_encoder.get_input_embeddings().weight
            for i in token_ids:
                emb[i] = emb[init].clone()
        tm = getattr(text_encoder, "text_model", text_encoder)  # transformers 5 has no .text_model level
        for p in [*tm.encoder.parameters(), *tm.final_layer_norm.parameters(),
                  *tm.embeddings.position_embedding.parameters()]:
            p.requires_grad_(False)
    else:
        text_encoder.requires_grad_(False)
    unet.to(dev)
    vae.to(dev)
    text_encoder.to(dev)

    if method == "lora":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=spec["rank"], lora_alpha=spec["rank"], init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]))
        params = [p for p in unet.parameters() if p.requires_grad]
    elif method == "dreambooth":
        unet.requires_grad_(True)
        params = list(unet.parameters())
    elif method == "ti":
        params = list(text_encoder.get_input_embeddings().parameters())
    else:  # custom
        from diffusers.loaders import AttnProcsLayers
        from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

        state = unet.state_dict()
        procs = {}
        for name in unet.attn_processors:
            layer = name[: -len(".processor")]
            cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
            hidden = state[layer + ".to_k.weight"].shape[0]
            if cross is None:
                procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False, hidden_size=hidden)
            else:
                procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False, hidden_size=hidden,
                                                              cross_attention_dim=cross).to(dev)
                procs[name].load_state_dict({"to_k_custom_diffusion.weight": state[layer + ".to_k.weight"],
                                             "to_v_custom_diffusion.weight": state[layer + ".to_v.weight"]})
        del state
        unet.set_attn_processor(procs)
        custom_layers = AttnProcsLayers(unet.attn_processors)
        params = [*text_encoder.get_input_embeddings().parameters(), *custom_layers.parameters()]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], betas=(0.9, 0.999), weight_decay=spec["weight_decay"],
                                  eps=1e-8)

    if method == "custom":  # the mask's size, found as its script finds it: by encoding a random image
        with torch.no_grad():
            spec["latent_side"] = vae.encode(torch.randn(1, 3, spec["resolution"], spec["resolution"])
                                             ).latent_dist.sample().shape[-1]
    data = PeerData(spec, tokenizer)
    loader = torch.utils.data.DataLoader(data, batch_size=spec["batch"], shuffle=True, collate_fn=data.collate,
                                         num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=spec["steps"])
    if method == "custom":
        text_encoder, custom_layers, optimizer, loader, lr_scheduler = accelerator.prepare(
            text_encoder, custom_layers, optimizer, loader, lr_scheduler)
    elif method == "ti":
        text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(text_encoder, optimizer, loader,
                                                                            lr_scheduler)
    else:
        unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    trained = {"lora": unet, "dreambooth": unet, "ti": text_encoder, "custom": text_encoder}[method]
    if method == "ti":
        original = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight.data.clone()
    bar = tqdm(range(spec["steps"]), desc="Steps", disable=not accelerator.is_local_main_process)
    prior = spec["prior"]
    stamps, step = [], 0
    t_loaded = _t.time()
    while step < spec["steps"]:
        if method != "ti":  # textual_inversion.py leaves the UNet in eval mode (no dropout in SD UNets either way)
            unet.train()
        if method in ("ti", "custom"):
            text_encoder.train()
        for batch in loader:
            with accelerator.accumulate(trained):
                latents = vae.encode(batch["pixel_values"]).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=latents.device).long()
                noisy = noise_scheduler.add_noise(latents, noise, t)
                hidden = text_encoder(batch["input_ids"].to(dev))[0]
                pred = unet(noisy, t, hidden).sample
                target = noise  # epsilon prediction (the models measured here)
                if method == "custom":
                    mask = batch["mask"]
                    if prior:
                        pred, pred_prior = torch.chunk(pred, 2, dim=0)
                        target, target_prior = torch.chunk(target, 2, dim=0)
                        mask = torch.chunk(mask, 2, dim=0)[0]
                    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
                    loss = ((loss * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
                    if prior:
                        loss = loss + spec["prior_weight"] * F.mse_loss(pred_prior.float(), target_prior.float())
                elif prior:
                    pred, pred_prior = torch.chunk(pred, 2, dim=0)
                    target, target_prior = torch.chunk(target, 2, dim=0)
                    loss = F.mse_loss(pred.float(), target.float()) \
                        + spec["prior_weight"] * F.mse_loss(pred_prior.float(), target_prior.float())
                else:
                    loss = F.mse_loss(pred.float(), target.float())
                accelerator.backward(loss)
                if method == "custom":  # only the modifier token's embedding row may change
                    grads = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight.grad
                    keep = torch.arange(len(tokenizer)) != token_ids[0]
                    grads.data[keep, :] = grads.data[keep, :].fill_(0)
                if accelerator.sync_gradients and method != "ti":
                    clip = [*text_encoder.parameters(), *custom_layers.parameters()] if method == "custom" \
                        else params
                    accelerator.clip_grad_norm_(clip, spec["max_grad_norm"])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=method != "dreambooth")
                if method == "ti":  # every row but the placeholder's back to the original
                    keep = torch.ones((len(tokenizer),), dtype=torch.bool)
                    keep[min(token_ids): max(token_ids) + 1] = False
                    with torch.no_grad():
                        accelerator.unwrap_model(text_encoder).get_input_embeddings().weight[keep] = original[keep]
            if accelerator.sync_gradients:
                bar.update(1)
                step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            bar.set_postfix(**logs)
            accelerator.log(logs, step=step)
            stamps.append(_t.time())
            if step >= spec["steps"]:
                break
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(unet if method in ("lora", "dreambooth") else text_encoder)
    if method == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrapped.to(torch.float32)))
        StableDiffusionPipeline.save_lora_weights(save_directory=str(out), unet_lora_layers=layers,
                                                  text_encoder_lora_layers=None)
        t_saved = _t.time()
        pipe = DiffusionPipeline.from_pretrained(base)  # the script's final-inference block
        pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    elif method == "dreambooth":
        pipe = DiffusionPipeline.from_pretrained(base, unet=unwrapped)
        pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config)
        pipe.save_pretrained(str(out))
        t_saved = _t.time()
    elif method == "ti":
        import safetensors.torch

        rows = unwrapped.get_input_embeddings().weight[min(token_ids): max(token_ids) + 1]
        safetensors.torch.save_file({spec["token"]: rows.detach().cpu()}, str(out / "learned_embeds.safetensors"),
                                    metadata={"format": "pt"})
        t_saved = _t.time()
    else:
        import safetensors.torch

        unet.to(torch.float32).save_attn_procs(str(out), safe_serialization=True)
        weight = unwrapped.get_input_embeddings().weight
        safetensors.torch.save_file({spec["token"]: weight[token_ids[0]].detach().cpu()},
                                    str(out / f"{spec['token']}.safetensors"), metadata={"format": "pt"})
        t_saved = _t.time()
        pipe = DiffusionPipeline.from_pretrained(base)  # the script's final-inference block
        pipe.unet.load_attn_procs(str(out), weight_name="pytorch_custom_diffusion_weights.safetensors")
        pipe.load_textual_inversion(str(out), weight_name=f"{spec['token']}.safetensors")
    accelerator.end_training()
    options = {**speed_flags(), "adamw": "torch default (per-tensor loop on CPU, foreach on CUDA)",
               "cache_latents": False, "pre_compute_text_embeddings": False, "mixed_precision": "no"}
    return {"t_imported": t_imported, "t_loaded": t_loaded, "step_stamps": stamps, "t_saved": t_saved,
            "options": options}


def run_peer_sdxl(spec: dict) -> dict:
    """diffusers' examples/dreambooth/train_dreambooth_lora_sdxl.py (v0.40.0), as its defaults run it on one CPU
    process with boothkit's LoRA recipe (see the module docstring)."""
    import gc
    import time as _t

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    t_imported = _t.time()
    if spec["method"] != "lora" or spec["prior"]:
        raise ValueError("the SDXL peer is the LoRA script without prior preservation (boothkit's LoRA recipe)")
    base, out = spec["model_dir"], Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no",
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    set_seed(spec["seed"])
    tokenizers = [AutoTokenizer.from_pretrained(base, subfolder=sub, use_fast=False)
                  for sub in ("tokenizer", "tokenizer_2")]
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")  # not EDM: DDPM, as the script
    text_encoder_one = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    text_encoder_two = CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    for m in (vae, text_encoder_one, text_encoder_two, unet):
        m.requires_grad_(False)
    dev, weight_dtype = accelerator.device, torch.float32  # mixed_precision "no"
    unet.to(dev, dtype=weight_dtype)
    vae.to(dev, dtype=torch.float32)  # the script keeps the VAE in fp32 always
    text_encoder_one.to(dev, dtype=weight_dtype)
    text_encoder_two.to(dev, dtype=weight_dtype)
    if spec["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.add_adapter(LoraConfig(r=spec["rank"], lora_alpha=spec["rank"], lora_dropout=0.0,
                                init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], betas=(0.9, 0.999), weight_decay=spec["weight_decay"],
                                  eps=1e-8)
    data = PeerDataSDXL(spec)
    loader = torch.utils.data.DataLoader(data, batch_size=spec["batch"], shuffle=True, collate_fn=data.collate,
                                         num_workers=0)
    size = spec["resolution"]

    def time_ids(original_size, crop_top_left):  # [1, 6]: (orig h, w, crop top, left, target h, w)
        return torch.tensor([list(original_size + crop_top_left + (size, size))]).to(dev, dtype=weight_dtype)

    def encode_prompt(prompt: str):  # both encoders' penultimate states, concatenated; text_encoder_2's pooled
        hidden = []
        for tok, enc in zip(tokenizers, (text_encoder_one, text_encoder_two)):
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            o = enc(ids.to(enc.device), output_hidden_states=True, return_dict=False)
            pooled = o[0]
            hidden.append(o[-1][-2])  # [1, 77, D_i]
        return torch.concat(hidden, dim=-1), pooled.view(1, -1)  # [1, 77, 2048], [1, 1280]

    with torch.no_grad():  # text encoders frozen and one fixed prompt: encoded once, before training
        prompt_embeds, pooled_embeds = encode_prompt(spec["instance_prompt"])
    gc.collect()  # the script drops its encoder lists here (the encoders themselves stay referenced)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=spec["steps"])
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    bar = tqdm(range(spec["steps"]), desc="Steps", disable=not accelerator.is_local_main_process)
    stamps, step = [], 0
    t_loaded = _t.time()
    while step < spec["steps"]:
        unet.train()
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=vae.dtype)).latent_dist.sample()
                latents = (latents * vae.config.scaling_factor).to(weight_dtype)  # no latents_mean in SDXL's VAE
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
                noisy = noise_scheduler.add_noise(latents, noise, t)
                add_time_ids = torch.cat([time_ids(o, c) for o, c in zip(batch["original_sizes"],
                                                                          batch["crop_top_lefts"])])  # [B, 6]
                cond = {"time_ids": add_time_ids, "text_embeds": pooled_embeds.repeat(bsz, 1)}
                pred = unet(noisy, t, prompt_embeds.repeat(bsz, 1, 1), added_cond_kwargs=cond, return_dict=False)[0]
                loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")  # epsilon prediction
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, spec["max_grad_norm"])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                bar.update(1)
                step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            bar.set_postfix(**logs)
            accelerator.log(logs, step=step)
            stamps.append(_t.time())
            if step >= spec["steps"]:
                break
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(unet).to(torch.float32)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrapped))
    StableDiffusionXLPipeline.save_lora_weights(save_directory=str(out), unet_lora_layers=layers,
                                                text_encoder_lora_layers=None, text_encoder_2_lora_layers=None)
    t_saved = _t.time()
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=weight_dtype)  # final-inference block
    pipe = StableDiffusionXLPipeline.from_pretrained(base, vae=vae, torch_dtype=weight_dtype)
    pipe.load_lora_weights(str(out))
    accelerator.end_training()
    options = {**speed_flags(), "adamw": "torch default (per-tensor loop on CPU, foreach on CUDA)",
               "cache_latents": False, "text_embeddings_precomputed": True, "mixed_precision": "no",
               "gradient_checkpointing": spec["gradient_checkpointing"], "use_8bit_adam": False}
    return {"t_imported": t_imported, "t_loaded": t_loaded, "step_stamps": stamps, "t_saved": t_saved,
            "options": options}


class PeerDataSDXL:
    """The SDXL LoRA script's data set: every instance photo is opened and preprocessed ONCE, when the data set is
    built (EXIF transpose, RGB, its original (h, w) kept, short side resized (Lanczos, its default), flipped with
    p = 0.5 under --random_flip, a random crop whose top-left is kept, to tensor, normalised to [-1, 1]); an example
    is that fixed tensor with its micro-conditioning, and the fixed instance prompt."""

    def __init__(self, spec: dict):
        import random

        import numpy as np
        import torch
        from PIL import Image, ImageOps

        size, rng = spec["resolution"], random.Random(spec["seed"])
        self.examples = []
        for path in sorted(p for p in Path(spec["photos"]).iterdir() if p.suffix.lower() == ".png"):
            im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
            original = (im.height, im.width)
            s = size / min(im.size)
            im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.LANCZOS)
            if spec["flip"] and rng.random() < 0.5:
                im = ImageOps.mirror(im)
            top, left = rng.randint(0, im.height - size), rng.randint(0, im.width - size)
            im = im.crop((left, top, left + size, top + size))
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
            self.examples.append({"pixels": (x - 0.5) / 0.5, "original_size": original, "crop_top_left": (top, left)})

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    @staticmethod
    def collate(examples: list[dict]) -> dict:
        import torch

        return {"pixel_values": torch.stack([e["pixels"] for e in examples]).contiguous().float(),
                "original_sizes": [e["original_size"] for e in examples],
                "crop_top_lefts": [e["crop_top_left"] for e in examples]}


class PeerData:
    """The scripts' data sets: each example opens its photo from disk, transforms it and tokenises its prompt."""

    TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
                 "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}")

    def __init__(self, spec: dict, tokenizer):
        import random

        self.spec, self.tokenizer, self.size = spec, tokenizer, spec["resolution"]
        self.photos = sorted(p for p in Path(spec["photos"]).iterdir() if p.suffix.lower() == ".png")
        self.classes = sorted(Path(spec["class_dir"]).glob("*.png")) if spec["prior"] else []
        self.rng = random.Random(spec["seed"])
        method = spec["method"]
        self.repeats = 100 if method == "ti" else 1  # textual_inversion.py repeats the photos 100 times
        self.flip = method == "ti" or (method == "custom" and spec["flip"])
        self.resample = {"lora": "LANCZOS", "dreambooth": "BILINEAR", "ti": "BICUBIC", "custom": "BILINEAR"}[method]

    def __len__(self) -> int:
        return max(len(self.photos) * self.repeats, len(self.classes))

    def _pixels(self, path: Path):
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        if self.flip and self.rng.random() < 0.5:
            im = ImageOps.mirror(im)
        w, h = im.size
        s = self.size / min(w, h)  # the short side to `size` (torchvision's Resize(size) on a PIL image)
        im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), getattr(Image, self.resample))
        left = self.rng.randint(0, im.width - self.size)  # RandomCrop(size)
        top = self.rng.randint(0, im.height - self.size)
        im = im.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - 0.5) / 0.5

    def _ids(self, prompt: str):
        return self.tokenizer(prompt, truncation=True, padding="max_length", max_length=self.tokenizer.model_max_length,
                              return_tensors="pt").input_ids

    def __getitem__(self, i: int) -> dict:
        import torch

        spec = self.spec
        prompt = spec["instance_prompt"]
        if spec["method"] == "ti":
            prompt = self.rng.choice(self.TEMPLATES).format(spec["token"])
        ex = {"pixels": self._pixels(self.photos[i % len(self.photos)]), "ids": self._ids(prompt)}
        if spec["method"] == "custom":  # --noaug: scale = size; the valid-region mask of its preprocessing
            m = spec["latent_side"]
            mask = torch.zeros(m, m)
            mask[1: m - 1, 1: m - 1] = 1.0
            ex["mask"] = mask
        if self.classes:
            ex["class_pixels"] = self._pixels(self.classes[i % len(self.classes)])
            ex["class_ids"] = self._ids(spec["class_prompt"])
        return ex

    def collate(self, examples: list[dict]) -> dict:
        import torch

        pixels = [e["pixels"] for e in examples] + [e["class_pixels"] for e in examples if "class_pixels" in e]
        ids = [e["ids"] for e in examples] + [e["class_ids"] for e in examples if "class_ids" in e]
        batch = {"pixel_values": torch.stack(pixels).contiguous().float(), "input_ids": torch.cat(ids)}
        if "mask" in examples[0]:
            masks = [e["mask"] for e in examples] + [torch.ones_like(e["mask"]) for e in examples if "class_ids" in e]
            batch["mask"] = torch.stack(masks).unsqueeze(1)
        return batch


# ==================================================================================================================
# parent: set up, run the pairs interleaved, summarise
# ==================================================================================================================

def spawn(side: str, spec: dict, env: dict, log: Path) -> dict:
    """Run one child; -> its result file's stamps, with the parent's spawn/exit times and the kernel's rusage."""
    import psutil

    Path(spec["result"]).unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    psutil.cpu_percent(interval=None)
    parent_rss = psutil.Process().memory_info().rss
    t_spawn = time.time()
    with open(log, "a") as err:
        # preexec_fn makes Popen fork instead of vfork: after vfork + exec the kernel carries the PARENT's high-water
        # mark into the child's ru_maxrss (the parent built a 2 GB model pipeline: every child read >= that); after
        # fork it carries at most the parent's current RSS, recorded as parent_rss_mb
        proc = subprocess.Popen([sys.executable, str(HERE), "--child", side, "--spec", json.dumps(spec)], env=env,
                                stdout=err, stderr=err, preexec_fn=_fork_not_vfork)
        _, status, usage = os.wait4(proc.pid, 0)
    t_exit = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} {spec['method']} failed (exit {proc.returncode}); see {log}")
    res = json.loads(Path(spec["result"]).read_text())
    res.update(t_spawn=t_spawn, t_exit=t_exit, peak_rss_mb=usage.ru_maxrss / 1024, parent_rss_mb=parent_rss / 2**20,
               cpu_seconds=usage.ru_utime + usage.ru_stime, load_before=load_before,
               machine_cpu_percent=psutil.cpu_percent(interval=None))
    return res


def _fork_not_vfork() -> None:
    """A no-op in the child; its presence stops subprocess from using vfork (see spawn)."""


def summarise_run(res: dict) -> dict:
    """Step times and phases of one child run (seconds)."""
    stamps, t0 = res.get("step_stamps") or [], res["t_spawn"]
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    wall = res["t_exit"] - t0
    out = {"time_to_artifact": round(res["t_saved"] - t0, 3) if "t_saved" in res else None,
           "process_wall": round(wall, 3), "interpreter_start": round(res["t_main"] - t0, 3),
           "imports": round(res["t_imported"] - res["t_main"], 3), "peak_rss_mb": round(res["peak_rss_mb"], 1),
           "parent_rss_mb": round(res["parent_rss_mb"], 1),
           "cpu_share": round(res["cpu_seconds"] / wall, 3), "machine_cpu_percent": res["machine_cpu_percent"],
           "load_before": round(res["load_before"], 2)}
    if stamps:
        out.update(steps=len(stamps), step_median=round(statistics.median(diffs), 4) if diffs else None,
                   step_min=round(min(diffs), 4) if diffs else None, step_max=round(max(diffs), 4) if diffs else None,
                   start_to_first_step=round(stamps[0] - t0, 3), last_step_to_artifact=round(res["t_saved"] - stamps[-1], 3),
                   steps_seconds=round(stamps[-1] - stamps[0], 3))
    for k in ("t_first_image",):
        if k in res:
            out["time_to_first_image"] = round(res[k] - t0, 3)
    if "warm_seconds" in res:
        out["warm_first_image_seconds"] = [round(x, 3) for x in res["warm_seconds"]]
    if "options" in res:
        out["options"] = res["options"]
    return out


def spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {}
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def make_photos(folder: Path) -> str:
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    concept = heldout_concepts("animal")[0]
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(render_references(concept, n=PHOTOS, seed=0)[0]):
        im.save(folder / f"{i}.png")
    return concept.name


def make_sd15(folder: Path, resolution: int) -> Path:
    """A pipeline folder with SD-1.5's UNet, VAE and text encoder shapes and random weights (seed 0), at a native
    size of `resolution`; tokenizer and scheduler config from the world model (SD's BPE ids, SD's betas)."""
    if (folder / "DONE").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from boothkit.bench.flops import _model_keys, config
    from boothkit.pipeline import world_path

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    unet_cfg = config("sd15", "unet")
    unet_cfg["sample_size"] = resolution // 8
    UNet2DConditionModel.from_config(unet_cfg).save_pretrained(folder / "unet")
    AutoencoderKL.from_config(config("sd15", "vae")).save_pretrained(folder / "vae")
    text_cfg = {**_model_keys(config("sd15", "text_encoder")), "bos_token_id": 49406, "eos_token_id": 49407,
                "pad_token_id": 49407}  # the world tokenizer's ids
    CLIPTextModel(CLIPTextConfig(**text_cfg)).save_pretrained(folder / "text_encoder")
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(world_path() / sub, folder / sub)
    index = json.loads((world_path() / "model_index.json").read_text())
    for k in ("image_encoder", "feature_extractor"):
        index[k] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    (folder / "DONE").write_text("ok\n")
    return folder


def make_sdxl(folder: Path, resolution: int) -> Path:
    """A StableDiffusionXLPipeline folder with random weights (seed 0): SDXL base's configs
    (assets/reference_configs/sdxl) with the UNet and text encoders reduced as SDXL_UNET and SDXL_TEXT_LAYERS say, at
    a native size of `resolution`; both tokenizers are the world model's (SD's BPE ids), the scheduler SDXL's
    (EulerDiscrete, scaled-linear betas 0.00085-0.012, leading spacing, offset 1). params.json: parameter counts."""
    if (folder / "DONE").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from boothkit.bench.flops import _model_keys, config
    from boothkit.pipeline import world_path

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**config("sdxl", "unet"), **SDXL_UNET, "sample_size": resolution // 8})
    vae = AutoencoderKL.from_config({**config("sdxl", "vae"), "sample_size": resolution})
    ids = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}  # the world tokenizer's ids
    encoders = {}
    for part, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        cfg = {**_model_keys(config("sdxl", part)), **ids, "num_hidden_layers": SDXL_TEXT_LAYERS[part]}
        encoders[part] = cls(CLIPTextConfig(**cfg))
    tokenizer = CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, tokenizer=tokenizer, tokenizer_2=tokenizer,
                                     scheduler=scheduler, **encoders)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    count = {name: sum(p.numel() for p in m.parameters())
             for name, m in (("unet", unet), ("vae", vae), *encoders.items())}
    from boothkit.bench.flops import meta_text_encoder, meta_unet, meta_vae

    published = {"unet": meta_unet("sdxl"), "vae": meta_vae("sdxl"), "text_encoder": meta_text_encoder("sdxl"),
                 "text_encoder_2": meta_text_encoder("sdxl", "text_encoder_2")}  # on the meta device: no memory
    published = {k: sum(p.numel() for p in m.parameters()) for k, m in published.items()}
    (folder / "params.json").write_text(json.dumps({"reduced": count, "sdxl_base": published}, indent=1))
    (folder / "DONE").write_text("ok\n")
    return folder


def machine(threads: int) -> dict:
    import diffusers
    import psutil
    import torch
    import transformers

    vm = psutil.virtual_memory()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "memory_gb": round(vm.total / 2**30, 1), "available_gb": round(vm.available / 2**30, 1)}


def busiest_processes(n: int = 3) -> list[dict]:
    """What else was using the CPU: the top processes by CPU over one second (names only)."""
    import psutil

    procs = list(psutil.process_iter(["name"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    rows = []
    for p in procs:
        try:
            rows.append({"name": p.info["name"], "cpu_percent": p.cpu_percent(None)})
        except psutil.Error:
            pass
    return [r for r in sorted(rows, key=lambda r: -r["cpu_percent"])[:n] if r["cpu_percent"] > 1]


def boothkit_settings(method: str, steps: int | None, overrides: dict) -> dict:
    """boothkit's recipe for the method as tune() will run it: the settings the peer copies."""
    from boothkit.methods import METHODS

    cfg = METHODS[method].config.from_dict(overrides)
    if steps is not None and hasattr(cfg, "steps"):
        cfg.steps = steps
    return cfg.to_dict()


def peer_spec(method: str, cfg: dict, base: dict, token: str, class_dir: Path) -> dict:
    prior = bool(cfg.get("prior_preservation", False))
    return {**base, "method": method, "steps": cfg["steps"], "batch": cfg["batch_size"], "lr": cfg["lr"],
            "weight_decay": cfg["weight_decay"], "max_grad_norm": cfg["max_grad_norm"], "rank": cfg.get("rank", 4),
            "prior": prior, "prior_weight": cfg.get("prior_weight", 1.0), "flip": cfg.get("flip", True),
            "token": token, "init_word": cfg.get("modifier_init") or cfg.get("init_token") or base["class_noun"],
            "instance_prompt": f"a photo of {token} {base['class_noun']}",
            "class_prompt": f"a photo of a {base['class_noun']}", "class_dir": str(class_dir)}


def run_model(model: str, args, work: Path, env: dict, photos: Path, class_noun: str, log: Path) -> dict:
    from boothkit.methods import METHODS

    if model == "world":
        from boothkit.pipeline import world_path

        model_dir, steps, overrides_model = world_path(), args.steps, {}
        methods = [m for m in args.methods if m in METHODS]
    else:
        model_dir = make_sd15(work / "sd15-random", SD15["resolution"])
        steps = args.sd15_steps
        # class images are the same data for both sides; a few, cheaply made, keep the set-up in minutes
        overrides_model = {"num_class_images": SD15["class_images"], "class_sample_steps": SD15["class_sample_steps"]}
        methods = [m for m in args.methods if m in ("lora", "ti", "custom")]
    report = {"model": model, "model_dir": str(model_dir), "steps": steps, "methods": {}}
    base = {"model": str(model_dir), "model_dir": str(model_dir), "photos": str(photos), "class_noun": class_noun,
            "threads": args.threads, "seed": 0, "resolution": SD15["resolution"] if model == "sd15" else 64}
    for method in methods:
        spec_m = METHODS[method]
        overrides = {k: v for k, v in {**overrides_model, **args.set}.items()
                     if k in spec_m.config.__dataclass_fields__}
        if method in ENCODERS:
            report["methods"][method] = run_encoder_method(method, args, work, env, base, overrides, log)
            continue
        cfg = boothkit_settings(method, steps, overrides)
        token = spec_m.default_identifier
        bk = {**base, "method": method, "steps": steps, "config": overrides, "out": str(work / "out" / "boothkit"),
              "result": str(work / "result.json")}
        # warm-up: file cache, hash cache, class images (then given to the peer)
        warm = summarise_run(spawn("boothkit", {**bk, "steps": 2, "out": str(work / "out" / "warm")}, env, log))
        shutil.rmtree(work / "out" / "warm", ignore_errors=True)
        class_dir = work / "class_images" / model / method
        if cfg.get("prior_preservation"):
            slug = f"a-photo-of-a-{class_noun}".replace(" ", "-")
            found = sorted((work / "cache" / "class_images").glob(f"*-{slug}/*/*.png"))
            class_dir.mkdir(parents=True, exist_ok=True)
            for i, p in enumerate(found[: cfg["num_class_images"]]):
                shutil.copy(p, class_dir / f"{i:04d}.png")
        peer = {**peer_spec(method, cfg, base, token, class_dir), "out": str(work / "out" / "peer"),
                "result": str(work / "result.json")}
        runs = {"boothkit": [], "peer": []}
        for r in range(args.repeats):
            for side in (("boothkit", "peer") if r % 2 == 0 else ("peer", "boothkit")):
                spec = bk if side == "boothkit" else peer
                shutil.rmtree(spec["out"], ignore_errors=True)
                row = summarise_run(spawn(side, spec, env, log))
                runs[side].append(row)
                print(f"{model} {method} repeat {r} {side}: step {row.get('step_median')} s, "
                      f"artifact {row['time_to_artifact']} s, rss {row['peak_rss_mb']} MB", file=sys.stderr,
                      flush=True)
        pairs = list(zip(runs["boothkit"], runs["peer"]))
        report["methods"][method] = {
            "boothkit_config": cfg, "peer_settings": {k: peer[k] for k in (
                "steps", "batch", "lr", "weight_decay", "max_grad_norm", "rank", "prior", "prior_weight", "flip",
                "token", "init_word", "resolution")},
            "warmup_boothkit": warm, "options": {"boothkit": runs["boothkit"][0].get("options"),
                                                 "peer": runs["peer"][0].get("options")},
            "boothkit": {k: spread([x.get(k) for x in runs["boothkit"]]) for k in SUMMARY_KEYS},
            "peer": {k: spread([x.get(k) for x in runs["peer"]]) for k in SUMMARY_KEYS},
            "ratios": {
                "throughput_boothkit_over_peer": spread([p["step_median"] / b["step_median"] for b, p in pairs]),
                "time_to_artifact_peer_over_boothkit": spread([p["time_to_artifact"] / b["time_to_artifact"]
                                                               for b, p in pairs]),
                "peak_rss_boothkit_over_peer": spread([b["peak_rss_mb"] / p["peak_rss_mb"] for b, p in pairs])},
            "runs": runs}
    return report


def run_sdxl(args, work: Path, env: dict, photos: Path, class_noun: str, log: Path, save=lambda part: None) -> dict:
    """The reduced SDXL-shaped model: boothkit's LoRA and DreamBooth in SDXL_VARIANTS, diffusers' SDXL LoRA script
    (run_peer_sdxl) in SDXL_PEER_VARIANTS; every variant of a method once per repeat, the order reversed in odd
    repeats; ratios for SDXL_PAIRS, per repeat. DreamBooth has no diffusers SDXL script: boothkit alone."""
    from boothkit.methods import METHODS

    model_dir = make_sdxl(work / "sdxl-random", SDXL["resolution"])
    steps, repeats = args.sdxl_steps, args.sdxl_repeats
    report = {"model": "sdxl", "model_dir": str(model_dir), "steps": steps, "repeats": repeats,
              "resolution": SDXL["resolution"], "latent": [4, SDXL["resolution"] // 8, SDXL["resolution"] // 8],
              "reduced": {"unet": SDXL_UNET, "text_encoder_layers": SDXL_TEXT_LAYERS},
              "parameters": json.loads((model_dir / "params.json").read_text()),
              "variants": {"boothkit": SDXL_VARIANTS, "peer": SDXL_PEER_VARIANTS}, "methods": {}}
    base = {"model": str(model_dir), "model_dir": str(model_dir), "photos": str(photos), "class_noun": class_noun,
            "threads": args.threads, "seed": 0, "resolution": SDXL["resolution"], "family": "sdxl"}
    model_overrides = {"num_class_images": SDXL["class_images"], "class_sample_steps": SDXL["class_sample_steps"]}
    for method in [m for m in args.methods if m in ("lora", "dreambooth")]:
        spec_m = METHODS[method]
        user = {k: v for k, v in {**model_overrides, **args.set}.items() if k in spec_m.config.__dataclass_fields__}
        sides = {}
        for name, opts in SDXL_VARIANTS.items():
            sides[("boothkit", name)] = {**base, "method": method, "steps": steps, "config": {**user, **opts},
                                         "out": str(work / "out" / f"boothkit-{name}"),
                                         "result": str(work / "result.json")}
        cfg = boothkit_settings(method, steps, {**user, **SDXL_VARIANTS["plain"]})
        token = spec_m.default_identifier
        if method == "lora":
            for name, opts in SDXL_PEER_VARIANTS.items():
                sides[("peer", name)] = {**peer_spec(method, cfg, base, token, work / "no-class-images"), **opts,
                                         "out": str(work / "out" / f"peer-{name}"),
                                         "result": str(work / "result.json")}
        # warm-up: file cache, hash cache, class images (DreamBooth's prior preservation)
        warm_spec = {**sides[("boothkit", "plain")], "steps": 2, "out": str(work / "out" / "warm")}
        warm = summarise_run(spawn("boothkit", warm_spec, env, log))
        shutil.rmtree(work / "out" / "warm", ignore_errors=True)
        runs = {f"{side}:{name}": [] for side, name in sides}
        order = list(sides)
        for r in range(repeats):
            for side, name in (order if r % 2 == 0 else order[::-1]):
                spec = sides[(side, name)]
                shutil.rmtree(spec["out"], ignore_errors=True)
                row = summarise_run(spawn(side, spec, env, log))
                runs[f"{side}:{name}"].append(row)
                print(f"sdxl {method} repeat {r} {side}:{name}: step {row.get('step_median')} s, "
                      f"artifact {row['time_to_artifact']} s, rss {row['peak_rss_mb']} MB", file=sys.stderr,
                      flush=True)
                shutil.rmtree(spec["out"], ignore_errors=True)
        entry = {"boothkit_config_plain": cfg, "warmup_boothkit": warm,
                 "options": {k: v[0].get("options") for k, v in runs.items()},
                 "summary": {k: {q: spread([x.get(q) for x in v]) for q in SUMMARY_KEYS} for k, v in runs.items()},
                 "runs": runs}
        if method == "lora":
            entry["peer_settings"] = {k: sides[("peer", "defaults")][k] for k in (
                "steps", "batch", "lr", "weight_decay", "max_grad_norm", "rank", "flip", "token", "resolution")}
            entry["ratios"] = {}
            for bk, peer in SDXL_PAIRS:
                pairs = list(zip(runs[f"boothkit:{bk}"], runs[f"peer:{peer}"]))
                entry["ratios"][f"boothkit:{bk} vs peer:{peer}"] = {
                    "throughput_boothkit_over_peer": spread([p["step_median"] / b["step_median"] for b, p in pairs]),
                    "time_to_artifact_peer_over_boothkit": spread([p["time_to_artifact"] / b["time_to_artifact"]
                                                                   for b, p in pairs]),
                    "peak_rss_boothkit_over_peer": spread([b["peak_rss_mb"] / p["peak_rss_mb"] for b, p in pairs])}
        else:
            entry["peer"] = "none: diffusers has no full-UNet DreamBooth script for SDXL (boothkit alone)"
        report["methods"][method] = entry
        save(report)  # a partial report on disk after each method: a killed run keeps what it measured
    return report


SUMMARY_KEYS = ("step_median", "step_min", "step_max", "time_to_artifact", "process_wall", "start_to_first_step",
                "last_step_to_artifact", "imports", "peak_rss_mb", "cpu_share", "machine_cpu_percent")


def run_encoder_method(method: str, args, work: Path, env: dict, base: dict, overrides: dict, log: Path) -> dict:
    """E4T (its default tuning steps) and InstantBooth (encoding; photos to the first image) alone: no peer."""
    spec = {**base, "method": method, "steps": None, "config": overrides, "out": str(work / "out" / "boothkit"),
            "result": str(work / "result.json")}
    shutil.rmtree(spec["out"], ignore_errors=True)
    spawn("boothkit", spec, env, log)  # warm-up
    runs = []
    for _ in range(args.repeats):
        shutil.rmtree(spec["out"], ignore_errors=True)
        runs.append(summarise_run(spawn("boothkit", spec, env, log)))
    out = {"boothkit": {k: spread([x.get(k) for x in runs]) for k in SUMMARY_KEYS}, "runs": runs}
    if method == "instantbooth":
        inst = [summarise_run(spawn("instant", {**spec, "result": str(work / "result.json")}, env, log))
                for _ in range(args.repeats)]
        out["photos_to_first_image"] = {"one_process": spread([x["time_to_first_image"] for x in inst]),
                                        "warm_process": spread([min(x["warm_first_image_seconds"]) for x in inst]),
                                        "runs": inst}
        db = {**base, "method": "dreambooth", "steps": None, "config": {}, "first_image": True,
              "out": str(work / "out" / "dreambooth-default"), "result": str(work / "result.json")}
        shutil.rmtree(db["out"], ignore_errors=True)
        row = summarise_run(spawn("boothkit", db, env, log))
        out["dreambooth_default_recipe"] = {"photos_to_first_image": row["time_to_first_image"], "run": row}
        ib = out["photos_to_first_image"]
        out["dreambooth_over_instantbooth"] = {
            "one_process": round(row["time_to_first_image"] / ib["one_process"]["median"], 1),
            "warm_process": round(row["time_to_first_image"] / ib["warm_process"]["median"], 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=("boothkit", "peer", "instant"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="world,sd15",
                    help="world, sd15 (random SD-1.5 shapes at 128 px) and/or sdxl (random reduced SDXL at 128 px)")
    ap.add_argument("--methods", default=",".join(FINE_TUNING + ENCODERS))
    ap.add_argument("--steps", type=int, default=None, help="steps per run on the world model (default 60; quick 30)")
    ap.add_argument("--sd15-steps", type=int, default=None,
                    help=f"steps per run on the SD-1.5-shaped model (default {SD15['steps']}; quick "
                         f"{SD15['quick_steps']})")
    ap.add_argument("--sdxl-steps", type=int, default=None,
                    help=f"steps per run on the reduced SDXL-shaped model (default {SDXL['steps']}; quick "
                         f"{SDXL['quick_steps']})")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"interleaved pairs per method (default 3, sdxl {SDXL['repeats']}; quick 2)")
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="boothkit config override for every method that has the key (e.g. cache=false)")
    ap.add_argument("--src", default=str(REPO / "src"), help="the boothkit source folder to measure")
    ap.add_argument("--src-label", default=None, help="what --src is (e.g. a commit), recorded in the output")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    if args.child == "instant":
        return _instant_child(json.loads(args.spec))
    if args.child:
        return child_main(args.child, json.loads(args.spec))
    args.steps = args.steps or (30 if args.quick else 60)
    args.sd15_steps = args.sd15_steps or (SD15["quick_steps"] if args.quick else SD15["steps"])
    args.sdxl_steps = args.sdxl_steps or (SDXL["quick_steps"] if args.quick else SDXL["steps"])
    args.sdxl_repeats = args.repeats or (2 if args.quick else SDXL["repeats"])
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.methods = args.methods.split(",")
    args.set = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}

    sys.path.insert(0, str(REPO / "src"))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vs-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": args.src, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "BOOTHKIT_CACHE": str(work / "cache"), "PYTHONDONTWRITEBYTECODE": "0"}
    log = work / "children.log"
    t0 = time.time()
    report = {"benchmark": "vs_peer", "command": "python benchmarks/vs_peer.py " + " ".join(sys.argv[1:]),
              "boothkit_src": args.src, "boothkit_commit": args.src_label or _commit(Path(args.src)),
              "settings": {"steps_world": args.steps, "steps_sd15": args.sd15_steps,
                           "steps_sdxl": args.sdxl_steps, "repeats": args.repeats, "repeats_sdxl": args.sdxl_repeats,
                           "threads": args.threads, "set": args.set},
              "machine": machine(args.threads), "load_average_before": os.getloadavg(),
              "busiest_processes_before": busiest_processes(), "models": {}}
    photos = work / "photos"
    class_noun = "animal"
    report["subject"] = make_photos(photos)
    for model in args.models.split(","):
        if model == "sdxl":
            def save(part: dict, model=model) -> None:
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps({**report, "models": {**report["models"], model: part},
                                                          "partial": True}, indent=1) + "\n")

            report["models"][model] = run_sdxl(args, work, env, photos, class_noun, log, save)
        else:
            report["models"][model] = run_model(model, args, work, env, photos, class_noun, log)
    import resource

    report["parent_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["load_average_after"] = os.getloadavg()
    report["busiest_processes_after"] = busiest_processes()
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def _instant_child(spec: dict) -> None:
    import time as _t

    t_main = _t.time()
    import torch

    torch.set_num_threads(int(spec["threads"]))
    Path(spec["result"]).write_text(json.dumps({"t_main": t_main, **run_instant(spec)}))


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _commit(src: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
