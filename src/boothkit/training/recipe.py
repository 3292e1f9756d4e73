"""What a method trains and its per-batch loss: the base every methods/<name>/model.py extends."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..families import TextConditioning
from .data import Draw, ImageSet, random_resize, with_size_word
from .loss import denoising_loss, training_scheduler


@dataclass
class Subject:
    """One concept to learn: its photos and how prompts name it."""

    images: ImageSet  #: the subject photos, prompt = instance prompt ("a photo of sks dog")
    class_noun: str
    token: str  #: the identifier in prompts: "sks", "<new1>", "<boothkit>"
    prior: ImageSet | None = None  #: class / regularisation images ("a photo of a dog"), or None
    photos: list | None = None  #: the decoded photos (PIL, alpha in info), for methods that read them (E4T framing)


class Recipe:
    """Base class. A subclass decides what trains (`setup`), what is checkpointed and saved.

    Subclasses set `train_modules`: names of attributes (unet, text_encoder) whose modules hold the trainable
    parameters; the loop hands those to accelerate (DDP, mixed precision) and the loss calls the wrapped versions.
    """

    train_modules: tuple[str, ...] = ()
    random_resize: bool = False  #: Custom Diffusion's resize augmentation with size words and masked loss

    def __init__(self, pipe, cfg, subjects: list[Subject]):
        from ..families import family_of

        self.pipe, self.cfg, self.subjects = pipe, cfg, subjects
        self.family = family_of(pipe)
        self.prior_weight = float(getattr(cfg, "prior_weight", 1.0))
        self._wrapped: dict = {}
        #: the prompt as a user writes it (setup may rewrite the training prompts, e.g. multi-vector TI)
        self.display_prompt = subjects[0].images.prompt if subjects else ""
        self.unet = self.pipe.unet
        self.vae = self.pipe.vae
        #: the family's text encoders and tokenizers by their pipeline names (text_encoder, text_encoder_2, ...), so
        #: train_modules can name any of them; `text_encoder` / `tokenizer` are the first slot's
        for slot in self.family.slots:
            setattr(self, slot.encoder, getattr(pipe, slot.encoder))
            setattr(self, slot.tokenizer, getattr(pipe, slot.tokenizer))
        self.noise_scheduler = training_scheduler(self.pipe)
        #: cfg.cache (issue 18): each photo's VAE posterior (per flip) and, while no text encoder trains, each
        #: prompt's conditioning are computed once and reused; the draws of the random stream are unchanged
        self._latent_cache: dict = {}
        self._text_cache: dict = {}
        for m in Recipe.components(self).values():  # the pipeline's models start frozen (setup decides what trains)
            m.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # new weights (LoRA A...) are a function of the seed alone
            torch.manual_seed(int(getattr(cfg, "seed", 0)))
            self.setup()

    def components(self) -> dict[str, torch.nn.Module]:
        """Every model that training touches, by name: the loop places them on the device (the frozen ones in the
        mixed-precision dtype where safe). A recipe that uses more (an image encoder) adds them."""
        out = {"unet": self.unet, "vae": self.vae}
        out.update({s.encoder: getattr(self, s.encoder) for s in self.family.slots})
        return out

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
        """Called after each optimizer step (Textual Inversion writes its trained rows into the embedding matrix here)."""

    def save_artifact(self, folder) -> dict:
        """Write the inference artifact into folder; return what concept.json should record (tokens...)."""
        raise NotImplementedError

    # --- shared machinery -----------------------------------------------------------------------------------
    def module(self, name: str):
        """The module to call in the forward pass (the accelerate-wrapped one when it was prepared)."""
        return self._wrapped.get(name, getattr(self, name))

    @property
    def text_trains(self) -> bool:
        return any(s.encoder in self.train_modules for s in self.family.slots)

    @property
    def caching(self) -> bool:
        return bool(getattr(self.cfg, "cache", True))

    def encode_prompts(self, prompts: list[str]) -> TextConditioning:
        """[B] prompts -> their conditioning (hidden [B, L, D], and SDXL's pooled [B, P]).

        With a trained text encoder: through the (wrapped) encoders, with gradients. Frozen: without gradients, each
        distinct prompt once (cached across steps when cfg.cache), gathered into the batch.
        """
        encoders = [self.module(s.encoder) for s in self.family.slots]
        if self.text_trains:
            return self.family.encode_prompts(self.pipe, prompts, encoders)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if todo and not self.caching:
            with torch.no_grad():
                cond = self.family.encode_prompts(self.pipe, todo, encoders)
            rows = {p: cond.rows(slice(i, i + 1)) for i, p in enumerate(todo)}
            return TextConditioning.cat([rows[p] for p in prompts])
        for p in todo:  # each alone: an encoder's output for a prompt depends on the batch it is in (float rounding),
            # and a resumed run fills its cache at other steps, in other batches, than the run it continues
            with torch.no_grad():
                self._text_cache[p] = self.family.encode_prompts(self.pipe, [p], encoders)
        return TextConditioning.cat([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> [B, 4, S/8, S/8] scaled latents (a sample of the VAE posterior)."""
        mean, std = self._posterior(x)
        return self._sample_latents(mean, std, g)

    @torch.no_grad()
    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> the VAE posterior's mean and std, [B, 4, h, w] each."""
        dist = self.vae.encode(x.to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mean, dist.std

    def _sample_latents(self, mean: torch.Tensor, std: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=g, dtype=torch.float32).to(mean.device, mean.dtype)
        return ((mean + std * eps) * self.vae.config.scaling_factor).float()

    @torch.no_grad()
    def draw_latents(self, draws: list[Draw], x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Latents of drawn images (x: their pixels, as drawn). Cached per (image set, image, flip) when the draw
        is a fixed image (centre crop, no resize augmentation): the VAE then runs once per photo and flip, and the
        noise eps is drawn exactly as without the cache (same shape, same point of the random stream)."""
        if not (self.caching and all(d.cacheable for d in draws)):
            return self.encode_images(x, g)
        keys = [(id(d.source), i, fl) for d in draws for i, fl in zip(d.index, d.flipped)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._latent_cache]
        for k in missing:  # each missing key once, from its first draw's pixels, alone: the VAE's result for a photo
            # depends on the batch it is encoded in (float rounding), and a resumed run fills its cache in other
            # batches than the run it continues, which would make resume inexact
            self._latent_cache[k] = self._posterior(x[keys.index(k)][None])
        mean = torch.cat([self._latent_cache[k][0] for k in keys])
        std = torch.cat([self._latent_cache[k][1] for k in keys])
        return self._sample_latents(mean, std, g)

    def loss(self, g: torch.Generator) -> torch.Tensor:
        """One micro-batch: subject images (+ the same number of prior images) -> scalar loss.

        With several subjects (Custom Diffusion joint training) each example picks its subject at random.
        DreamBooth's prior preservation (Ruiz et al. 2022, eq. 2) and Custom Diffusion's regularisation set add
        `prior_weight * L_simple(prior images)` to the subject term. cfg.snr_gamma and cfg.noise_offset (Min-SNR
        weighting, offset noise: see denoising_loss) apply to both terms. The family adds what its UNet reads
        besides the text (SDXL: the pooled embedding and each image's size/crop micro-conditioning).
        """
        b = self.cfg.batch_size
        which = torch.randint(0, len(self.subjects), (b,), generator=g).tolist()
        draws = [self.subjects[s_i].images.draw(1, g, flip=self.cfg.flip) for s_i in which]
        x = torch.cat([d.pixels for d in draws])  # [b, 3, S, S]
        prompts = [p for d in draws for p in d.prompts]  # each drawn image's caption, or the prompt
        mask = None
        if self.random_resize:
            factor = int(self.pipe.vae_scale_factor)
            x, mask, words = random_resize(x, g, latent_factor=factor)
            prompts = [with_size_word(p, w) for p, w in zip(prompts, words)]
            draws = [d.resized() for d in draws]
        prior = [self.subjects[s_i].prior.draw(1, g, flip=self.cfg.flip) for s_i in which
                 if self.subjects[s_i].prior is not None]
        prior_prompts = [self.subjects[s_i].prior.prompt for s_i in which if self.subjects[s_i].prior is not None]
        every = draws + prior
        latents = self.draw_latents(every, torch.cat([x] + [d.pixels for d in prior]), g)  # [b + p, 4, h, w]
        text = self.encode_prompts(prompts + prior_prompts)  # hidden [b + p, L, D]
        if mask is not None and prior:
            mask = torch.cat([mask, torch.ones(len(prior), *mask.shape[1:])])
        if mask is not None:
            mask = mask.to(latents.device)
        micro = torch.cat([d.micro for d in every])  # [b + p, 6]
        per_example = denoising_loss(self.module("unet"), self.noise_scheduler, latents, text.hidden, g, mask=mask,
                                     snr_gamma=self.cfg.snr_gamma, noise_offset=self.cfg.noise_offset,
                                     unet_kwargs=self.family.unet_kwargs(text, micro))
        loss = per_example[:b].mean()
        if prior:
            loss = loss + self.prior_weight * per_example[b:].mean()
        return loss


class DatasetRecipe(Recipe):
    """A recipe fed by a dataset (the encoder pretrainings): the loop hands each micro-step's batch to
    `loss(g, batch)`; `evaluate()` is the mean denoising loss on the held-out batch (`self.validation`, from
    boothkit.data.validation_batch) with fixed noise, comparable across steps and runs. A subclass gives
    `heldout_losses(batch, g) -> [B]` and `heldout_seed(i)` (the noise seed of the held-out rows from i), and holds
    its trainable parts in `self.trainer` (the one trained module, what DDP wraps)."""

    train_modules = ("trainer",)

    def __init__(self, pipe, cfg, *, validation: dict | None = None, segmenter=None):
        """validation: the held-out batch (boothkit.data.validation_batch) for evaluate() and the grids; segmenter:
        a boothkit.data.Segmenter that fills the masks of the rows that have none (on the training device)."""
        self.validation, self.segmenter = validation, segmenter
        self.skipped: dict[str, int] = {}  #: records the loader replaced so far, by reason (count_skipped)
        super().__init__(pipe, cfg, [])

    def heldout_losses(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def heldout_seed(self, i: int) -> int:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self) -> dict:
        from ..data import batch_rows

        if not self.validation:
            return {}
        was = self.trainer.training
        self.trainer.eval()
        b, n = self.cfg.batch_size, len(self.validation["captions"])
        try:
            losses = [self.heldout_losses(batch_rows(self.validation, slice(i, i + b)),
                                          torch.Generator("cpu").manual_seed(self.heldout_seed(i)))
                      for i in range(0, n, b)]
        finally:
            self.trainer.train(was)
        return {"heldout_loss": float(torch.cat(losses).mean())}
