"""What DreamBooth-LoRA trains: peft LoRA adapters on the UNet's attention (and optionally the text encoder).

B is zero-initialised, so the adapted model starts exactly as the base model (tests check before == after).
"""

from __future__ import annotations

import torch

from ...training.recipe import Recipe
from .config import TEXT_TARGETS, UNET_TARGETS


class LoraRecipe(Recipe):
    def setup(self) -> None:
        from peft import LoraConfig as PeftLoraConfig

        cfg = self.cfg
        self.unet.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                             target_modules=list(UNET_TARGETS)))
        modules = ["unet"]
        if cfg.train_text_encoder:  # every text encoder of the family (SDXL: both)
            for slot in self.family.slots:
                getattr(self, slot.encoder).add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,
                                                                       init_lora_weights="gaussian",
                                                                       target_modules=list(TEXT_TARGETS)))
                modules.append(slot.encoder)
        self.train_modules = tuple(modules)

    def _named(self):
        for mod in self.train_modules:
            for n, p in getattr(self, mod).named_parameters():
                if p.requires_grad:  # peft marks exactly the lora_A / lora_B weights trainable
                    yield f"{mod}.{n}", p

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self._named()}

    def load_state_tensors(self, tensors):
        with torch.no_grad():
            for n, p in self._named():
                p.copy_(tensors[n])

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)
