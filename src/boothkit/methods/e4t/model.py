"""What E4T's domain tuning trains (Gal et al. 2023, §3.3): the pretrained encoder head and the weight offsets.

Starts from the pretrained domain encoder's prediction for the subject's photo(s): the word
``e = embed(class) + s * E(x)`` goes in at the placeholder token (a forward hook on the text encoder's input
embedding, modules.WordInjector), and the UNet carries the domain's pretrained weight offsets. A few steps (5-15)
of the plain denoising loss on flipped copies of the photo(s) tune both (the paper's two L2 penalties are options,
off by default: config.E4TConfig). The text encoder, VAE, vision tower and the UNet's own weights stay frozen.
"""

from __future__ import annotations

import torch

from ...inputs import InputError
from ...training.recipe import Recipe
from ..ti.model import add_tokens
from .artifact import domain_of, load_encoder, resolve_encoder
from .modules import (WordInjector, add_weight_offsets, clip_features, embedding_l2, encoder_dims, frame_photos,
                      offset_parameters, weight_offset_l2)


class E4TRecipe(Recipe):
    train_modules = ("unet",)

    def setup(self) -> None:
        from peft.utils import set_peft_model_state_dict

        from ..core import pipeline_model_hash

        cfg, subject = self.cfg, self.subjects[0]
        self.encoder_path = resolve_encoder(cfg.encoder, subject.class_noun)
        encoder, offsets, meta = load_encoder(self.encoder_path)
        self.encoder_meta = meta
        where = f"e4t encoder {self.encoder_path}"
        domain = domain_of(subject.class_noun)
        if domain is not None and meta.get("class") != domain:
            raise InputError(f"{where} was pretrained for class {meta.get('class')!r}, but {subject.class_noun!r} is "
                             f"in class {domain!r}: use that class's encoder "
                             f"(`boothkit pretrain e4t --class {domain}`)")
        if meta.get("model_hash") != pipeline_model_hash(self.pipe):
            raise InputError(f"{where} was pretrained on base model {meta.get('base_model')!r} (hash "
                             f"{meta.get('model_hash')}), not on this one: use --model {meta.get('base_model')}")
        if meta["dims"] != encoder_dims(self.pipe):
            raise InputError(f"{where} does not fit this pipeline's sizes ({meta['dims']} vs "
                             f"{encoder_dims(self.pipe)})")
        self.class_word = meta.get("class_word", subject.class_noun)
        (self.token_id,) = add_tokens(self.tokenizer, self.text_encoder, [subject.token], self.class_word)
        class_id = self.tokenizer.encode(self.class_word, add_special_tokens=False)[0]
        self.class_embedding = self.text_encoder.get_input_embeddings().weight.detach()[class_id].clone()  # [D]
        add_weight_offsets(self.unet, encoder.cfg)
        unexpected = set_peft_model_state_dict(self.unet, offsets).unexpected_keys
        if unexpected:
            raise InputError(f"{where}: weight offsets do not fit this UNet ({sorted(unexpected)[:3]})")
        self.offsets = offset_parameters(self.unet)
        for p in self.offsets.values():
            p.requires_grad_(True)
        self.encoder = encoder.train().requires_grad_(True)
        photos = (subject.images.pixels + 1) / 2  # [N, 3, S, S] in [0, 1]
        pre = meta["preprocessing"]
        if pre.get("frame"):  # the encoder was pretrained on framed photos: frame these the same way
            photos = frame_photos(photos)
        feats = clip_features(self.pipe.image_encoder, photos, pre["mean"], pre["std"])  # [N, F]
        self.features = feats.mean(0, keepdim=True)  # [1, F]: several photos are averaged (N = 1: the paper)
        self.injector = WordInjector(self.text_encoder, self.token_id)
        self.after_step()

    # --- the word -------------------------------------------------------------------------------------------------
    def offset(self) -> torch.Tensor:
        """s * E(x): [D]."""
        return self.encoder(self.features)[0]

    def word(self) -> torch.Tensor:
        """e = embed(class) + s * E(x): [D]."""
        return self.class_embedding + self.offset()

    # --- what the loop calls ----------------------------------------------------------------------------------------
    def trainable_parameters(self):
        dev = self.unet.device  # the loop has placed the UNet; the head and its inputs follow it
        self.encoder.to(dev)
        self.features = self.features.to(dev)
        self.class_embedding = self.class_embedding.to(dev)
        head = list(self.encoder.parameters())
        if self.cfg.lr_encoder is None:
            return list(self.offsets.values()) + head
        return [{"params": list(self.offsets.values()), "lr_scale": 1.0},
                {"params": head, "lr_scale": self.cfg.lr_encoder / self.cfg.lr}]

    def encode_prompts(self, prompts: list[str]):
        """The frozen text encoder(s), run WITH gradients: they flow back to the injected word only.

        Each distinct prompt is encoded once and gathered into the batch (a tuning batch is 16 copies of one
        caption): the same values and the same gradient (the gather's backward sums the rows), at 1/16 of the cost.
        """
        row = {p: i for i, p in enumerate(dict.fromkeys(prompts))}  # distinct prompts, in first-seen order
        cond = self.family.encode_prompts(self.pipe, list(row))  # hidden [U, L, D]
        return cond.rows(torch.tensor([row[p] for p in prompts], device=cond.hidden.device))

    def loss(self, g: torch.Generator) -> torch.Tensor:
        """Denoising loss on the photo(s) + reg_embedding ||s E(x)||^2 + reg_weights sum ||Delta W||^2 (§3.3)."""
        offset = self.encoder(self.features)  # [1, D]
        self.injector.set(self.class_embedding + offset[0])
        loss = super().loss(g)
        if self.cfg.reg_embedding:
            loss = loss + self.cfg.reg_embedding * embedding_l2(offset)
        if self.cfg.reg_weights:
            loss = loss + self.cfg.reg_weights * weight_offset_l2(self.module("unet"))
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        self.injector.set(self.word().detach())  # validation images and the artifact use the current word

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"encoder.{k}": v.detach() for k, v in self.encoder.state_dict().items()}
        out.update({f"unet.{n}": p.detach() for n, p in self.offsets.items()})
        return out

    def load_state_tensors(self, tensors) -> None:
        with torch.no_grad():
            self.encoder.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items()
                                          if k.startswith("encoder.")})
            for n, p in self.offsets.items():
                p.copy_(tensors[f"unet.{n}"])
        self.after_step()

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)
