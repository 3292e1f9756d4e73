"""What E4T's domain pretraining trains and its per-batch loss (Gal et al. 2023, §3.1-3.2, §4); the shared training
loop (boothkit.training.loop.train) runs it on the loader's batches (boothkit.data), and boothkit.pretrain.encoders
orchestrates a run (`boothkit pretrain e4t`).

Per micro-step, one batch of the loader (any `--data` source; `--data world` draws scenes of the class's train
concepts):
  target     the image; its caption names the subject "<e4t> <class noun>" (the loader put the placeholder in front
             of the noun), the placeholder a new token of every text encoder whose embedding is the predicted word
  condition  what the encoder reads: the source's second photo of the same subject when it has one (the world draws
             another view of the concept, the way reference photos are drawn: random background, medium or large,
             centred or at an edge, so the encoder cannot copy the target's background, position or style, which
             the caption names), else the target itself (the paper: FFHQ has one photo per person). With `frame`
             it is first cut out on white by its mask and centred at 3/4 of the side (what tuning then does to the
             user's photos).
  loss       L_simple (training.loss.denoising_loss) with the predicted word at the placeholder and the weight
             offsets on, + reg_embedding * ||s E(x)||^2 + reg_weights * sum ||Delta W||_F^2 (the paper's two L2
             penalties).
SDXL: the word goes into both text encoders (one head predicts both offsets: modules.DomainEncoder), the pooled
embedding is the caption's own (with the word in it), the UNet reads each image's size/crop micro-conditioning, and
the weight offsets sit on SDXL's attention q/k/v as on SD's.
Trainable: the encoder head and the low-rank weight offsets, held by one module (`Trainer`) whose forward computes
the loss, so that under `accelerate launch` DDP synchronises exactly their gradients; two AdamW groups (lr for the
head, lr_offsets for the offsets). The VAE, the text encoder(s), the vision tower and the UNet are frozen.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from ...data import count_skipped
from ...inputs import InputError
from ...training.loss import denoising_loss
from ...training.recipe import DatasetRecipe
from .. import vision
from . import artifact
from .config import EncoderConfig, PretrainConfig
from .model import class_embeddings
from .modules import (DomainEncoder, WordInjector, add_weight_offsets, clip_features, embedding_l2, encoder_dims,
                      offset_parameters, preprocessing_of, weight_offset_l2)

#: the placeholder pretraining writes in captions (tuning uses the user's identifier; only the word matters)
IDENTIFIER = "<e4t>"


def _seed(seed: int, name: str) -> int:
    return int(hashlib.sha1(f"e4t:{seed}:{name}".encode()).hexdigest()[:8], 16)


def framed(images01: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The subject cut out on white by its mask, centred square at 3/4 of the side: boothkit.data.frame_subject on
    tensors (subject_condition at a fixed scale, no shift, flip or jitter). [B, 3, S, S], [B, 1, S, S] -> [B, 3, S, S]
    in [0, 1]."""
    from ...data import ConditionConfig, subject_condition

    fixed = ConditionConfig(scale=(0.75, 0.75), shift=0.0, flip=0.0, jitter=0.0)
    return subject_condition(images01, mask, torch.Generator("cpu").manual_seed(0), fixed)  # draws unused


class Trainer(nn.Module):
    """The trainable parts as one module whose forward is the loss (what the loop hands to accelerate: DDP
    synchronises the gradients of the parameters used in the wrapped forward): the encoder head, and the weight
    offsets, which live in the UNet's peft layers and are registered here too (the same Parameter objects)."""

    def __init__(self, encoder: DomainEncoder, offsets: list[nn.Parameter], recipe: "E4TPretrain"):
        super().__init__()
        self.encoder = encoder
        self.offsets = nn.ParameterList(offsets)
        self.__dict__["recipe"] = recipe  # a plain attribute: the frozen models stay outside DDP

    def forward(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        """-> the loss of the batch (denoising + the two penalties)."""
        loss, _ = self.recipe.batch_loss(self.encoder, batch, g)
        return loss

    def enable_gradient_checkpointing(self) -> None:
        self.recipe.unet.enable_gradient_checkpointing()


class E4TPretrain(DatasetRecipe):
    """E4T's domain-pretraining recipe: encoder head + weight offsets trainable, everything else frozen."""

    def __init__(self, pipe, cfg: PretrainConfig, enc_cfg: EncoderConfig, *, class_noun: str,
                 validation: dict | None = None, segmenter=None):
        """class_noun: the domain the captions name (one class); validation, segmenter: see DatasetRecipe (the
        segmenter frames rows without a mask)."""
        if class_noun == "all" or not class_noun.strip():
            raise InputError("e4t pretraining learns one domain: --class names one class noun (not 'all')")
        self.enc_cfg, self.class_noun = enc_cfg, class_noun
        self.stats: dict = {}
        super().__init__(pipe, cfg, validation=validation, segmenter=segmenter)

    def setup(self) -> None:
        from ..ti.model import add_tokens_per_encoder

        vision.require_tower(self.pipe, "E4T")
        self.image_encoder = self.pipe.image_encoder.requires_grad_(False).eval()
        dims = encoder_dims(self.pipe)
        self.pre = preprocessing_of(self.pipe, frame=self.cfg.frame)
        self.token_ids = [ids[0] for ids in add_tokens_per_encoder(self.family, self, [IDENTIFIER], self.class_noun)]
        self.class_embedding = class_embeddings(self.family, self, self.class_noun)  # [D_i] per text encoder
        self.encoder = DomainEncoder(self.enc_cfg, dims)  # Recipe seeded the init from cfg.seed
        add_weight_offsets(self.unet, self.enc_cfg)
        self.offsets = offset_parameters(self.unet)
        self.trainer = Trainer(self.encoder, list(self.offsets.values()), self).requires_grad_(True)
        self.injectors = [WordInjector(getattr(self, s.encoder), i) for s, i in zip(self.family.slots,
                                                                                    self.token_ids)]
        self.display_prompt = self.cfg.validation_prompt or f"a photo of {IDENTIFIER} {self.class_noun}"

    def components(self) -> dict[str, nn.Module]:
        return {**super().components(), "image_encoder": self.image_encoder, "trainer": self.trainer}

    def trainable_parameters(self) -> list[dict]:
        self.class_embedding = [c.to(self.unet.device) for c in self.class_embedding]  # placed by the loop
        return [{"params": list(self.encoder.parameters()), "lr_scale": 1.0, "name": "encoder"},
                {"params": list(self.offsets.values()), "lr_scale": self.cfg.lr_offsets / self.cfg.lr,
                 "name": "offsets"}]

    # --- the loss -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def condition_images(self, batch: dict) -> torch.Tensor:
        """What the encoder reads -> [B, 3, C, C] in [0, 1]: the source's condition photo (the world's other view)
        or the target, framed by its mask with `frame`."""
        if "condition" in batch:
            images, mask = batch["condition"], batch["condition_mask"]
        else:
            images, mask = batch["pixels"], batch["mask"]
        images = (images.float() + 1) / 2
        return framed(images, mask.float()) if self.cfg.frame else images

    def set_words(self, words: list[torch.Tensor] | None) -> None:
        """The word of each text encoder ([D_i] or [B, D_i]; None: the placeholder's own embedding row)."""
        for injector, w in zip(self.injectors, words or [None] * len(self.injectors)):
            injector.set(w)

    def batch_loss(self, encoder: DomainEncoder, batch: dict, g: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of the loader -> (the loss to minimise, the per-example denoising loss [B])."""
        from ...data import micro_conditioning, to_device

        dev = self.unet.device
        batch = to_device(batch, dev)
        if self.segmenter is not None and self.cfg.frame:
            self.segmenter.fill(batch)
        with torch.no_grad():
            feats = clip_features(self.image_encoder, self.condition_images(batch), self.pre["mean"],
                                  self.pre["std"])  # [B, F]
            latents = self.encode_images(batch["pixels"], g)  # [B, 4, h, w]
        offset = encoder(feats)  # [B, sum D_i]
        self.set_words([c + o for c, o in zip(self.class_embedding, encoder.split(offset))])  # one word per image
        text = self.family.encode_prompts(self.pipe, batch["captions"])  # gradients flow to the injected words only
        per_example = denoising_loss(self.unet, self.noise_scheduler, latents, text.hidden, g,
                                     snr_gamma=self.cfg.snr_gamma, noise_offset=self.cfg.noise_offset,
                                     unet_kwargs=self.family.unet_kwargs(text, micro_conditioning(batch)))  # [B]
        denoise = per_example.mean()
        reg_e, reg_w = embedding_l2(offset), weight_offset_l2(self.unet)
        self.stats = {"denoise": float(denoise.detach()), "offset_sq": float(reg_e.detach()),
                      "weight_offset_sq": float(reg_w.detach())}
        return denoise + self.cfg.reg_embedding * reg_e + self.cfg.reg_weights * reg_w, per_example

    def loss(self, g: torch.Generator, batch: dict | None = None) -> torch.Tensor:
        count_skipped(self.skipped, batch)
        return self.module("trainer")(batch, g)

    # --- what the loop logs ----------------------------------------------------------------------------------------
    def heldout_losses(self, batch: dict, g: torch.Generator) -> torch.Tensor:
        """[B] denoising loss of held-out rows (evaluate(): DatasetRecipe), the words cleared after."""
        per_example = self.batch_loss(self.encoder, batch, g)[1]
        self.set_words(None)
        return per_example

    def heldout_seed(self, i: int) -> int:
        return _seed(self.cfg.seed, f"val-{i}")

    def step_log(self) -> dict:
        return {**self.stats, "skipped_records": sum(self.skipped.values())}

    @torch.no_grad()
    def validation_images(self, cfg) -> tuple[list, str]:
        """For each of the first cfg.validation_images held-out records: what the encoder reads, and one image of
        "a photo of <e4t> <class>" with the word it predicts (no tuning; seed 0)."""
        from ...data import batch_rows, row_image, to_device

        val = self.validation
        if not val:
            return [], "no held-out records"
        n = min(cfg.validation_images, len(val["captions"]))
        batch = to_device(batch_rows(val, slice(0, n)), self.unet.device)
        cond = self.condition_images(batch)  # [n, 3, C, C] in [0, 1]
        feats = clip_features(self.image_encoder, cond, self.pre["mean"], self.pre["std"])
        models = [self.trainer, self.unet, self.vae, *self.family.text_encoders(self.pipe)]
        was = [m.training for m in models]
        for m in models:
            m.eval()
        vae_dtype = self.vae.dtype
        if vae_dtype != torch.float32:  # sampling decodes in fp32 (as the loop's prompt_samples)
            self.vae.to(torch.float32)
        prompt = cfg.validation_prompt or self.display_prompt
        images = []
        try:
            for i in range(n):
                offset = self.encoder(feats[i:i + 1])[0]
                self.set_words([c + o for c, o in zip(self.class_embedding, self.encoder.split(offset))])
                g = torch.Generator("cpu").manual_seed(0)
                images += [row_image(cond[i] * 2 - 1), self.pipe(prompt, num_inference_steps=cfg.validation_steps,
                                                             guidance_scale=5.0, generator=g).images[0]]
        finally:
            self.set_words(None)
            if vae_dtype != torch.float32:
                self.vae.to(vae_dtype)
            for m, w in zip(models, was):
                m.train(w)
        return images, f"what the encoder reads, then {prompt!r} with its word"

    # --- checkpoints and the artifact --------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"encoder.{k}": v.detach() for k, v in self.encoder.state_dict().items()}
        t.update({f"unet.{n}": p.detach() for n, p in self.offsets.items()})
        return t

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.encoder.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")})
        with torch.no_grad():
            for n, p in self.offsets.items():
                p.copy_(tensors[f"unet.{n}"])

    def artifact_meta(self) -> dict:
        return {"method": "e4t", **vision.trained_for(self.pipe), "class": self.class_noun,
                "class_word": self.class_noun, "identifier": IDENTIFIER, "preprocessing": self.pre}

    def save_artifact(self, folder, meta: dict | None = None) -> dict:
        """Write the encoder folder (e4t_encoder.safetensors + .json) to `folder`, atomically."""
        from peft.utils import get_peft_model_state_dict

        artifact.save_encoder(self.encoder, get_peft_model_state_dict(self.unet), folder,
                              {**self.artifact_meta(), **(meta or {})})
        return {"files": [artifact.ENCODER_WEIGHTS, artifact.ENCODER_META]}
