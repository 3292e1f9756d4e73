"""What a method trains and its per-batch loss: the base every methods/<name>/model.py extends."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import ImageSet, random_resize, with_size_word
from .loss import denoising_loss, training_scheduler


@dataclass
class Subject:
    """One concept to learn: its photos and how prompts name it."""

    images: ImageSet  #: the subject photos, prompt = instance prompt ("a photo of sks dog")
    class_noun: str
    token: str  #: the identifier in prompts: "sks", "<new1>", "<boothkit>"
    prior: ImageSet | None = None  #: class / regularisation images ("a photo of a dog"), or None


class Recipe:
    """Base class. A subclass decides what trains (`setup`), what is checkpointed and saved.

    Subclasses set `train_modules`: names of attributes (unet, text_encoder) whose modules hold the trainable
    parameters; the loop hands those to accelerate (DDP, mixed precision) and the loss calls the wrapped versions.
    """

    train_modules: tuple[str, ...] = ()
    random_resize: bool = False  #: Custom Diffusion's resize augmentation with size words and masked loss

    def __init__(self, pipe, cfg, subjects: list[Subject]):
        self.pipe, self.cfg, self.subjects = pipe, cfg, subjects
        self.prior_weight = float(getattr(cfg, "prior_weight", 1.0))
        self._wrapped: dict = {}
        #: the prompt as a user writes it (setup may rewrite the training prompts, e.g. multi-vector TI)
        self.display_prompt = subjects[0].images.prompt if subjects else ""
        self.unet = self.pipe.unet
        self.text_encoder = self.pipe.text_encoder
        self.vae = self.pipe.vae
        self.tokenizer = self.pipe.tokenizer
        self.noise_scheduler = training_scheduler(self.pipe)
        for m in (self.unet, self.text_encoder, self.vae):
            m.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # new weights (LoRA A...) are a function of the seed alone
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            self.setup()

    # --- what a method defines ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Make the trainable parameters (requires_grad) and anything they need (new tokens, adapters)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.nn.Parameter] | list[dict]:
        """What the optimizer trains: parameters, or param groups {"params": [...], "lr_scale": x} whose learning
        rate is the schedule's times lr_scale."""
        return [p for name in self.train_modules for p in getattr(self, name).parameters() if p.requires_grad]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors (checkpoints store them; resume loads them back)."""
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step (Textual Inversion restores the frozen embedding rows here)."""

    def save_artifact(self, folder) -> dict:
        """Write the inference artifact into folder; return what concept.json should record (tokens...)."""
        raise NotImplementedError

    # --- shared machinery -----------------------------------------------------------------------------------
    def module(self, name: str):
        """The module to call in the forward pass (the accelerate-wrapped one when it was prepared)."""
        return self._wrapped.get(name, getattr(self, name))

    @property
    def text_trains(self) -> bool:
        return "text_encoder" in self.train_modules

    def prompt_ids(self, prompts: list[str]) -> torch.Tensor:
        """[B] prompts -> [B, L] token ids, padded to the tokenizer's length, on the UNet's device."""
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return tok.input_ids.to(self.unet.device)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B] prompts -> [B, L, D] text encoder hidden states."""
        ids = self.prompt_ids(prompts)
        if self.text_trains:
            return self.module("text_encoder")(ids)[0]
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> [B, 4, S/8, S/8] scaled latents (a sample of the VAE posterior)."""
        x = x.to(self.vae.device, self.vae.dtype)
        dist = self.vae.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=g, dtype=torch.float32).to(dist.mean.device, dist.mean.dtype)
        z = dist.mean + dist.std * eps
        return (z * self.vae.config.scaling_factor).float()

    def loss(self, g: torch.Generator) -> torch.Tensor:
        """One micro-batch: subject images (+ the same number of prior images) -> scalar loss.

        With several subjects (Custom Diffusion joint training) each example picks its subject at random.
        DreamBooth's prior preservation (Ruiz et al. 2022, eq. 2) and Custom Diffusion's regularisation set add
        `prior_weight * L_simple(prior images)` to the subject term. cfg.snr_gamma and cfg.noise_offset (Min-SNR
        weighting, offset noise: see denoising_loss) apply to both terms.
        """
        b = self.cfg.batch_size
        which = torch.randint(0, len(self.subjects), (b,), generator=g).tolist()
        pix, prompts = [], []
        for s_i in which:
            s = self.subjects[s_i]
            x_i, p_i = s.images.sample_with_prompts(1, g, flip=self.cfg.flip)  # p_i: its caption, or the prompt
            pix.append(x_i)
            prompts.extend(p_i)
        x = torch.cat(pix)  # [b, 3, S, S]
        mask = None
        if self.random_resize:
            factor = int(self.pipe.vae_scale_factor)
            x, mask, words = random_resize(x, g, latent_factor=factor)
            prompts = [with_size_word(p, w) for p, w in zip(prompts, words)]
        prior_x, prior_prompts = [], []
        for s_i in which:
            s = self.subjects[s_i]
            if s.prior is not None:
                prior_x.append(s.prior.sample(1, g, flip=self.cfg.flip))
                prior_prompts.append(s.prior.prompt)
        latents = self.encode_images(torch.cat([x] + prior_x), g)  # [b + p, 4, h, w]
        cond = self.encode_prompts(prompts + prior_prompts)  # [b + p, L, D]
        if mask is not None and prior_x:
            mask = torch.cat([mask, torch.ones(len(prior_x), *mask.shape[1:])])
        if mask is not None:
            mask = mask.to(latents.device)
        per_example = denoising_loss(self.module("unet"), self.noise_scheduler, latents, cond, g, mask=mask,
                                     snr_gamma=self.cfg.snr_gamma, noise_offset=self.cfg.noise_offset)
        loss = per_example[:b].mean()
        if prior_x:
            loss = loss + self.prior_weight * per_example[b:].mean()
        return loss
