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
                   generator: torch.Generator, mask: torch.Tensor | None = None, *, snr_gamma: float = 0.0,
                   noise_offset: float = 0.0, unet_kwargs: dict | None = None) -> torch.Tensor:
    """Per-example simplified diffusion loss, Ho et al. 2020 (arXiv 2006.11239) Algorithm 1 / eq. 14.

    This is the L_simple objective that DreamBooth (Ruiz et al. 2022, eq. 1), Textual Inversion (Gal et al. 2022,
    eq. 2) and Custom Diffusion (Kumari et al. 2023, eq. 1) all minimise; they differ only in what trains and in
    the batch. For `v_prediction` models the target is v = alpha_t * eps - sigma_t * x0 (Salimans & Ho 2022, §4).

    Two options of diffusers' training scripts (both off at 0, which leaves the draws and the loss as without them):
    - offset noise (Guttenberg 2023, "Diffusion with Offset Noise"): eps += noise_offset * n with n ~ N(0, 1) of
      shape [B, C, 1, 1], drawn after t, so the model also learns to move an image's mean per channel (very dark or
      bright images); the offset eps is both what is added and the epsilon target, as in diffusers' scripts.
    - Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
      arXiv 2303.09556): each example's loss times min(SNR(t), gamma) / SNR(t) for epsilon prediction,
      min(SNR(t), gamma) / (SNR(t) + 1) for v_prediction and min(SNR(t), gamma) for sample prediction, with
      SNR(t) = alpha_bar_t / (1 - alpha_bar_t): it caps the weight of the low-noise timesteps so they stop
      dominating the gradient (as diffusers' train_text_to_image.py --snr_gamma).

    latents: [B, C, h, w] clean latents x0 (already scaled by the VAE's scaling factor)
    encoder_hidden_states: [B, L, D] text conditioning
    generator: CPU generator that decides noise and timesteps (so a run is a pure function of its seeds)
    mask: optional [B, 1, h, w] of weights >= 0: a {0, 1} mask counts only those latent pixels (Custom Diffusion's
          masked loss); soft weights give a weighted mean (InstantBooth's object-weighted pretraining loss)
    snr_gamma: gamma of Min-SNR-gamma (0 = off; the paper uses 5)
    noise_offset: scale of the offset noise (0 = off; Guttenberg uses 0.1)
    unet_kwargs: what else the UNet reads (the family's: SDXL's added_cond_kwargs with the pooled text embedding
          and the time ids)
    -> [B] loss per example (mean over the counted elements, weighted by the mask, times the Min-SNR weight)
    """
    b = latents.shape[0]
    # 1. noise eps ~ N(0, I) and a timestep t ~ U{0, T-1} per example
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    if noise_offset:  # drawn after t, so runs without it keep their draws
        offset = torch.randn((b, latents.shape[1], 1, 1), generator=generator, dtype=torch.float32)  # [B, C, 1, 1]
        noise = noise + noise_offset * offset.to(latents.device, latents.dtype)  # [B, C, h, w]
    # 2. forward process: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
    noisy = scheduler.add_noise(latents, noise, t)
    # 3. the network's prediction
    pred = unet(noisy, t, encoder_hidden_states, **(unet_kwargs or {})).sample  # [B, C, h, w]
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
        per_example = err.mean(dim=(1, 2, 3))  # [B]
    else:
        mask = mask.to(err.dtype).expand_as(err)
        per_example = (err * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1.0)  # [B]
    # 6. Min-SNR-gamma: weight each example by its timestep's capped signal-to-noise ratio
    if snr_gamma:
        per_example = per_example * min_snr_weights(scheduler, t, snr_gamma).to(per_example.device)
    return per_example


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """[B] timesteps -> [B] Min-SNR-gamma loss weights (Hang et al. 2023, arXiv 2303.09556).

    The paper's weight min(SNR, gamma) is for the loss on x0; the epsilon loss is SNR times that loss and the v loss
    (SNR + 1) times it, so their weights are min(SNR, gamma) / SNR and min(SNR, gamma) / (SNR + 1) (what diffusers'
    train_text_to_image.py uses). SNR(t) from diffusers.training_utils.compute_snr.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)  # [B] float32
    capped = snr.clamp(max=gamma)  # min(SNR, gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":  # at a zero terminal SNR (rescale_betas_zero_snr) 0 / 0: weight 1, as diffusers' scripts
        return torch.where(snr == 0, torch.ones_like(snr), capped / snr.clamp_min(torch.finfo(snr.dtype).tiny))
    if kind == "v_prediction":
        return capped / (snr + 1)
    if kind == "sample":
        return capped
    raise ValueError(f"unsupported prediction_type {kind!r}")
