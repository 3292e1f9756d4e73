"""What InstantBooth's pretraining trains and its per-batch loss (Shi et al. 2023, §3.1 data, §3.5 training); the
shared training loop (boothkit.training.loop.train) runs it on the loader's batches (boothkit.data), and
boothkit.pretrain.encoders orchestrates a run (`boothkit pretrain instantbooth`).

Per micro-step, one batch of the loader, from any source (`--data`: a caption folder, an imagefolder, a `datasets`
folder or name, WebDataset shards, or the world, the default):
  target     the full image, unmasked (the paper's choice: the model learns to place the subject in a new context
             instead of copying it); its caption names the subject by the identifier in front of the class noun
             ("a sks woman on a beach"), which the loader put there.
  condition  the subject cut out onto white by its mask and augmented (boothkit.data.subject_condition: re-centred at
             a random scale, shifted, flipped, colour-jittered, all drawn from the step's generator). Cut out of the
             target itself (real data has one photo per record: its mask comes from an alpha channel, a mask file or
             column, a bbox, the --segmenter, else the whole image), or out of the source's own condition photo when
             it has one: the world renders the same glyph at the same place in its plain colour style on white with
             its exact alpha, so style words ("grayscale", "outline") stay in the caption's control.
  loss       the plain denoising loss (training.loss.denoising_loss) with the concept embedding injected at the
             identifier (alpha = 1) and the adapters on (beta = 1), as in the paper's training. Beyond the paper,
             `object_weight` w weights each latent pixel by 1 + w * (subject coverage, from the mask): in a small
             image a small subject is a few percent of the latent, so the plain loss is mostly background.
SDXL (boothkit.families): the concept embedding replaces the identifier's position of the concatenated context of
both text encoders; the pooled embedding is the caption's own (text_encoder_2's projection of the caption as
written), as at generation (concept.py); the UNet reads each image's size and crop micro-conditioning from the
loader (`original_size`, `crop_top_left`).
Trainable: the concept head, the patch head and the adapters, held by one module (`Trainer`) whose forward computes
the per-example loss, so that under `accelerate launch` DDP synchronises exactly their gradients; AdamW groups with
their own learning rates (lr for the heads, lr_adapters, lr_gamma for the gates: Adam moves a scalar by about lr per
step). The VAE, the text encoder(s), the vision tower and the UNet are frozen.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import count_skipped
from ...families import TextConditioning
from ...training.loss import denoising_loss
from ...training.recipe import DatasetRecipe
from .. import vision
from . import artifact
from .config import InstantBoothConfig, PretrainConfig
from .modules import (InstantBooth, attach, image_features, inject_concept, model_dims, normalise_pixels,
                      single_token_id)


def _seed(seed: int, name: str) -> int:
    return int(hashlib.sha1(f"instantbooth:{seed}:{name}".encode()).hexdigest()[:8], 16)


def preprocessing_of(pipe) -> dict:
    """How images are fed to the vision tower (its input size, the image processor's mean/std) and how the
    references are prepared (what `InstantBoothPipeline.encode_images` repeats at inference)."""
    return {**vision.tower_preprocessing(pipe), "background": "masked to white",
            "framing": "subject re-centred in a square (pretraining: random cond_scale; inference: 3/4 of the side)"}


def artifact_meta(pipe, model_cfg: InstantBoothConfig, class_noun: str) -> dict:
    """What the artifact's json records besides the weights: what it was trained for (base model and hash, family,
    vision tower: methods.vision), the class, the identifier and the preprocessing."""
    return {"method": "instantbooth", **vision.trained_for(pipe),
            "class": None if class_noun == "all" else class_noun, "classes": class_noun,
            "identifier": model_cfg.identifier, "preprocessing": preprocessing_of(pipe),
            "prompt": f"a photo of {model_cfg.identifier} {'person' if class_noun == 'all' else class_noun}"}


def write_untrained(out: str | Path, pipe, model: str | None = None, model_cfg: InstantBoothConfig | None = None,
                    seed: int = 0, cls: str = "all") -> Path:
    """An artifact with freshly initialised weights (gamma = 0, so the adapters change nothing): what a trained one
    costs at inference, and a fixture for tests. Marked "trained": false in its json. model: the base model to
    record when it is not the one `pipe` was loaded as."""
    from ...pipeline import model_hash

    model_cfg = model_cfg or InstantBoothConfig()
    torch.manual_seed(_seed(seed, "init"))
    ib = InstantBooth(model_cfg, model_dims(pipe))
    meta = artifact_meta(pipe, model_cfg, cls)
    if model is not None and model != meta["base_model"]:
        meta.update(base_model=model, model_hash=model_hash(model))
    return artifact.save(ib, out, {**meta, "trained": False})


def loss_weights(mask: torch.Tensor, latent_hw: tuple[int, int], object_weight: float) -> torch.Tensor | None:
    """[B, 1, H, W] subject coverage in [0, 1] -> [B, 1, h, w] latent-pixel weights 1 + w * coverage (None: w = 0)."""
    if not object_weight:
        return None
    return 1.0 + object_weight * F.adaptive_avg_pool2d(mask.float(), latent_hw)


class Trainer(nn.Module):
    """The trainable parts as one module whose forward is the per-example loss: what the training loop hands to
    accelerate (DDP synchronises the gradients of the parameters used in the wrapped module's forward). The frozen
    models are reached through the recipe, not registered here, so DDP neither broadcasts nor watches them."""

    def __init__(self, ib: InstantBooth, recipe: "InstantBoothPretrain"):
        super().__init__()
        self.ib = ib
        self.__dict__["recipe"] = recipe  # a plain attribute: not a submodule

    def forward(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        """-> [B] denoising loss per example."""
        return self.recipe.per_example_loss(self.ib, batch, g)

    def enable_gradient_checkpointing(self) -> None:
        """The loop's gradient_checkpointing: the frozen UNet recomputes its activations in the backward pass."""
        self.recipe.unet.enable_gradient_checkpointing()


class InstantBoothPretrain(DatasetRecipe):
    """InstantBooth's pretraining recipe: heads + adapters trainable, everything else frozen (see the module)."""

    def __init__(self, pipe, cfg: PretrainConfig, model_cfg: InstantBoothConfig, *, class_noun: str,
                 validation: dict | None = None, segmenter=None):
        """class_noun: what the captions name ("all" for the world's every class); validation, segmenter: see
        DatasetRecipe."""
        self.model_cfg, self.class_noun = model_cfg, class_noun
        super().__init__(pipe, cfg, validation=validation, segmenter=segmenter)

    def setup(self) -> None:
        vision.require_tower(self.pipe, "InstantBooth")
        self.image_encoder = self.pipe.image_encoder.requires_grad_(False).eval()
        self.token_id = single_token_id(self.tokenizer, self.model_cfg.identifier)
        self.pre = preprocessing_of(self.pipe)
        self.ib = InstantBooth(self.model_cfg, model_dims(self.pipe))  # Recipe seeded the init from cfg.seed
        self.attached = attach(self.unet, self.ib, beta=1.0)
        self.trainer = Trainer(self.ib, self).requires_grad_(True)
        self.display_prompt = self.cfg.validation_prompt or self.artifact_meta()["prompt"]

    def components(self) -> dict[str, nn.Module]:
        return {**super().components(), "image_encoder": self.image_encoder, "trainer": self.trainer}

    def trainable_parameters(self) -> list[dict]:
        cfg, ib = self.cfg, self.ib
        heads = list(ib.concept_head.parameters()) + list(ib.patch_head.parameters())
        groups = [{"params": heads, "lr_scale": 1.0, "name": "heads"}]
        if not cfg.lr_gamma:
            return groups + [{"params": list(ib.adapters.parameters()), "lr_scale": cfg.lr_adapters / cfg.lr,
                              "name": "adapters"}]
        gammas = [a.gamma for a in ib.adapters.values()]
        rest = [p for p in ib.adapters.parameters() if all(p is not g for g in gammas)]
        return groups + [{"params": rest, "lr_scale": cfg.lr_adapters / cfg.lr, "name": "adapters"},
                         {"params": gammas, "lr_scale": cfg.lr_gamma / cfg.lr, "weight_decay": 0.0, "name": "gamma"}]

    # --- the loss -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def condition_images(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        """The batch's conditions: the subject cut out on white and augmented -> [B, 3, S, S] in [0, 1]: from the
        source's condition photo when it has one (the world), else from the target and its mask."""
        if "condition" in batch:
            images, mask = batch["condition"], batch["condition_mask"]
        else:
            images, mask = batch["pixels"], batch["mask"]
        from ...data import subject_condition

        return subject_condition((images.float() + 1) / 2, mask.float(), g, self.cfg.condition())

    def per_example_loss(self, ib: InstantBooth, batch: dict, g: torch.Generator) -> torch.Tensor:
        """One batch of the loader -> [B] denoising loss with the concept at the identifier and the adapters on."""
        from ...data import micro_conditioning, to_device

        dev = self.unet.device
        batch = to_device(batch, dev)
        if self.segmenter is not None:
            self.segmenter.fill(batch)  # the rows without a mask: cut out by the segmenter, on the device
        pre = self.pre
        with torch.no_grad():
            cond = self.condition_images(batch, g)  # [B, 3, S, S] in [0, 1]
            pix = normalise_pixels(cond, pre["image_size"], pre["mean"], pre["std"])  # [B, 3, s, s]
            embeds, tokens = image_features(self.image_encoder, pix)  # [B, E], [B, T, H]
            latents = self.encode_images(batch["pixels"], g)  # [B, 4, h, w]
            text = self.family.encode_prompts(self.pipe, batch["captions"])  # hidden [B, L, D] (SDXL: + pooled)
            ids = self.family.token_ids(self.pipe, batch["captions"])[0].to(dev)  # [B, L]
        concept, patches = ib.encode(embeds[:, None].float(), tokens[:, None].float())  # one condition per image
        hidden = inject_concept(text.hidden, ids, self.token_id, concept, alpha=1.0)  # [B, L, D]
        self.attached.set_patches(patches, beta=1.0)
        weights = loss_weights(batch["mask"], tuple(latents.shape[-2:]), self.cfg.object_weight)
        cond_text = TextConditioning(hidden, text.pooled)
        return denoising_loss(self.unet, self.noise_scheduler, latents, hidden, g, mask=weights,
                              snr_gamma=self.cfg.snr_gamma, noise_offset=self.cfg.noise_offset,
                              unet_kwargs=self.family.unet_kwargs(cond_text, micro_conditioning(batch)))  # [B]

    def loss(self, g: torch.Generator, batch: dict | None = None) -> torch.Tensor:
        count_skipped(self.skipped, batch)
        return self.module("trainer")(batch, g).mean()

    # --- what the loop logs ----------------------------------------------------------------------------------------
    def heldout_losses(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        """[B] denoising loss of held-out rows (evaluate(): DatasetRecipe)."""
        return self.per_example_loss(self.ib, batch, g)

    def heldout_seed(self, i: int) -> int:
        return _seed(self.cfg.seed, f"val-{i}")

    def step_log(self) -> dict:
        gammas = torch.stack([a.gamma.detach() for a in self.ib.adapters.values()])
        return {"mean_abs_tanh_gamma": float(gammas.tanh().abs().mean()),
                "skipped_records": sum(self.skipped.values())}

    @torch.no_grad()
    def validation_images(self, cfg) -> tuple[list, str]:
        """For each of the first cfg.validation_images held-out records: its reference as the encoder reads it at
        inference (cut out, framed) and one image of "a photo of <identifier> <its class>" drawn from it at the
        artifact's alpha and beta (seed 0)."""
        from PIL import Image

        from ...data import frame_subject, row_image
        from .inference import InstantBoothPipeline

        val = self.validation
        if not val:
            return [], "no held-out records"
        n = min(cfg.validation_images, len(val["captions"]))
        handle = InstantBoothPipeline(self.pipe, self.ib, {"preprocessing": self.pre}, self.attached)
        models = [self.trainer, self.unet, self.vae, self.image_encoder]
        was = [m.training for m in models]
        for m in models:
            m.eval()
        vae_dtype = self.vae.dtype
        if vae_dtype != torch.float32:  # sampling decodes in fp32 (as the loop's prompt_samples)
            self.vae.to(torch.float32)
        images, prompts = [], []
        try:
            for i in range(n):
                photo = row_image(val["pixels"][i])
                mask = Image.fromarray((val["mask"][i, 0].float().cpu().numpy() * 255).round().astype("uint8"), "L")
                ref = frame_subject(photo, mask)
                noun = val["class_nouns"][i] or self.class_noun
                prompt = cfg.validation_prompt or f"a photo of {self.model_cfg.identifier} {noun}"
                handle.set_images([ref], beta=self.model_cfg.beta, mask_background=False)
                g = torch.Generator("cpu").manual_seed(0)
                images += [ref.resize(photo.size), self.pipe(**handle.pipe_kwargs(prompt, alpha=self.model_cfg.alpha),
                                                             num_inference_steps=cfg.validation_steps,
                                                             guidance_scale=5.0, generator=g).images[0]]
                prompts.append(prompt)
        finally:
            self.attached.set_patches(None, beta=1.0)
            if vae_dtype != torch.float32:
                self.vae.to(vae_dtype)
            for m, w in zip(models, was):
                m.train(w)
        return images, " | ".join(f"reference, then {p!r}" for p in prompts)

    # --- checkpoints and the artifact --------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.ib.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.ib.load_state_dict(tensors)
        self.attached.set_patches(None)  # invalidates any cached patch keys/values

    def artifact_meta(self) -> dict:
        return artifact_meta(self.pipe, self.model_cfg, self.class_noun)

    def save_artifact(self, folder, meta: dict | None = None) -> dict:
        """Write the artifact (instantbooth.safetensors + .json) to `folder`, atomically."""
        artifact.save(self.ib, folder, {**self.artifact_meta(), **(meta or {})})
        return {"files": [artifact.WEIGHTS, artifact.META]}

