"""The denoising objective every personalisation method trains with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_scheduler(pipe_or_config):
    """A DDPMScheduler with the base model's noise schedule (what the forward process q(x_t | x_0) needs).

    The pipeline's own sampler (DPM-Solver for the world model) is for inference; training only needs the betas
    and the prediction type, which every diffusers scheduler config carries.
    """
    from diffusers import DDPMScheduler

    config = getattr(pipe_or_config, "scheduler", pipe_or_config).config
    return DDPMScheduler.from_config(config)


def denoising_loss(unet, scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example simplified diffusion loss, Ho et al. 2020 (arXiv 2006.11239) Algorithm 1 / eq. 14.

    This is the L_simple objective that DreamBooth (Ruiz et al. 2022, eq. 1), Textual Inversion (Gal et al. 2022,
    eq. 2) and Custom Diffusion (Kumari et al. 2023, eq. 1) all minimise; they differ only in what trains and in
    the batch. For `v_prediction` models the target is v = alpha_t * eps - sigma_t * x0 (Salimans & Ho 2022, §4).

    latents: [B, C, h, w] clean latents x0 (already scaled by the VAE's scaling factor)
    encoder_hidden_states: [B, L, D] text conditioning
    generator: CPU generator that decides noise and timesteps (so a run is a pure function of its seeds)
    mask: optional [B, 1, h, w] of weights >= 0: a {0, 1} mask counts only those latent pixels (Custom Diffusion's
          masked loss); soft weights give a weighted mean (InstantBooth's object-weighted pretraining loss)
    -> [B] loss per example (mean over the counted elements, weighted by the mask)
    """
    b = latents.shape[0]
    # 1. noise eps ~ N(0, I) and a timestep t ~ U{0, T-1} per example
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    # 2. forward process: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    noisy = scheduler.add_noise(latents, noise, t)
    # 3. the network's prediction
    pred = unet(noisy, t, encoder_hidden_states).sample  # [B, C, h, w]
    # 4. the target, by what the network predicts
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    # 5. squared error, averaged per example (over the mask when there is one)
    err = F.mse_loss(pred.float(), target.float(), reduction="none")  # [B, C, h, w]
    if mask is None:
        return err.mean(dim=(1, 2, 3))
    mask = mask.to(err.dtype).expand_as(err)
    return (err * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1.0)
