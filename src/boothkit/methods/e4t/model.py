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
from ..ti.model import add_tokens_per_encoder
from .artifact import load_encoder, resolve_encoder
from .modules import (WordInjector, add_weight_offsets, clip_features, dims_fit, embedding_l2, encoder_dims,
                      offset_parameters, weight_offset_l2)


def class_embeddings(family, holder, word: str) -> list[torch.Tensor]:
    """Each text encoder's input embedding of the class word's first token (the base of E4T's offset): [D_i] per
    slot of the family. holder: the pipeline or a recipe (what has the slots' attributes)."""
    out = []
    for slot in family.slots:
        tok, enc = getattr(holder, slot.tokenizer), getattr(holder, slot.encoder)
        ids = tok.encode(word, add_special_tokens=False)
        if not ids:
            raise InputError(f"e4t: the class word {word!r} encodes to no token")
        out.append(enc.get_input_embeddings().weight.detach()[ids[0]].clone())
    return out


def framed_pixels(photos: list, class_noun: str, size: int, segmenter: str = "", device=None) -> torch.Tensor:
    """Photos (PIL) framed as an encoder pretrained with `frame` read them (methods.vision.framed_references: the
    subject cut out on white by its alpha / the segmenter / a flat background, centred at 3/4 of the side)
    -> [N, 3, size, size] in [0, 1]."""
    import numpy as np
    from PIL import Image

    from .. import vision

    framed = vision.framed_references(photos, class_noun, segmenter=segmenter, device=device)
    arr = np.stack([np.asarray(f.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
                    for f in framed])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)  # [N, 3, size, size]


class E4TRecipe(Recipe):
    train_modules = ("unet",)

    def setup(self) -> None:
        from peft.utils import set_peft_model_state_dict

        from ...encoders import e4t_class_conflict
        from .. import vision

        cfg, subject = self.cfg, self.subjects[0]
        model = getattr(self.pipe, "boothkit_model", None) or "world"
        self.encoder_path = resolve_encoder(cfg.encoder, subject.class_noun, model)
        encoder, offsets, meta = load_encoder(self.encoder_path)
        self.encoder_meta = meta
        where = f"e4t encoder {self.encoder_path}"
        conflict = e4t_class_conflict(meta.get("class") or "", subject.class_noun)
        if conflict:
            raise InputError(f"{where} {conflict}")
        vision.require_tower(self.pipe, where)
        vision.check_fits(self.pipe, meta, where)
        if not dims_fit(meta["dims"], encoder_dims(self.pipe)):
            raise InputError(f"{where} does not fit this pipeline's sizes ({meta['dims']} vs "
                             f"{encoder_dims(self.pipe)})")
        self.class_word = meta.get("class_word", subject.class_noun)
        # the identifier as a new token in every text encoder (SDXL: both), its rows the class word's
        self.token_ids = [ids[0] for ids in add_tokens_per_encoder(self.family, self, [subject.token],
                                                                   self.class_word)]
        self.class_embedding = class_embeddings(self.family, self, self.class_word)  # [D_i] per encoder
        add_weight_offsets(self.unet, encoder.cfg)
        unexpected = set_peft_model_state_dict(self.unet, offsets).unexpected_keys
        if unexpected:
            raise InputError(f"{where}: weight offsets do not fit this UNet ({sorted(unexpected)[:3]})")
        self.offsets = offset_parameters(self.unet)
        for p in self.offsets.values():
            p.requires_grad_(True)
        self.encoder = encoder.train().requires_grad_(True)
        pre = meta["preprocessing"]
        if pre.get("frame"):  # the encoder was pretrained on framed photos: frame these the same way
            from ...data import row_image

            given = subject.photos or [row_image(p) for p in subject.images.pixels]  # the decoded photos, else crops
            photos = framed_pixels(given, subject.class_noun, pre["image_size"], cfg.segmenter,
                                   self.pipe.image_encoder.device)
        else:
            photos = (subject.images.pixels + 1) / 2  # [N, 3, S, S] in [0, 1]: each photo's centre square
        feats = clip_features(self.pipe.image_encoder, photos, pre["mean"], pre["std"])  # [N, F]
        self.features = feats.mean(0, keepdim=True)  # [1, F]: several photos are averaged (N = 1: the paper)
        self.injectors = [WordInjector(getattr(self, s.encoder), i) for s, i in zip(self.family.slots,
                                                                                    self.token_ids)]
        self.after_step()

    # --- the word -------------------------------------------------------------------------------------------------
    def offset(self) -> torch.Tensor:
        """s * E(x): [sum of D_i] (all text encoders' offsets, concatenated)."""
        return self.encoder(self.features)[0]

    def word(self) -> list[torch.Tensor]:
        """e_i = embed_i(class) + s * E(x)_i: one [D_i] per text encoder."""
        return [c + o for c, o in zip(self.class_embedding, self.encoder.split(self.offset()))]

    def _inject(self, words: list[torch.Tensor]) -> None:
        for injector, w in zip(self.injectors, words):
            injector.set(w)

    # --- what the loop calls ----------------------------------------------------------------------------------------
    def trainable_parameters(self):
        dev = self.unet.device  # the loop has placed the UNet; the head and its inputs follow it
        self.encoder.to(dev)
        self.features = self.features.to(dev)
        self.class_embedding = [c.to(dev) for c in self.class_embedding]
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
        offset = self.encoder(self.features)  # [1, sum D_i]
        self._inject([c + o for c, o in zip(self.class_embedding, self.encoder.split(offset[0]))])
        loss = super().loss(g)
        if self.cfg.reg_embedding:
            loss = loss + self.cfg.reg_embedding * embedding_l2(offset)
        if self.cfg.reg_weights:
            loss = loss + self.cfg.reg_weights * weight_offset_l2(self.module("unet"))
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        self._inject([w.detach() for w in self.word()])  # validation images and the artifact use the current word

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
