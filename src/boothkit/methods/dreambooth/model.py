"""What full DreamBooth trains: every UNet weight (and optionally every text encoder weight)."""

from __future__ import annotations

from ...training.recipe import Recipe


class DreamBoothRecipe(Recipe):
    def setup(self) -> None:
        self.unet.requires_grad_(True)
        modules = ["unet"]
        if self.cfg.train_text_encoder:  # every text encoder of the family (SDXL: both)
            for slot in self.family.slots:
                getattr(self, slot.encoder).requires_grad_(True)
                modules.append(slot.encoder)
        self.train_modules = tuple(modules)

    def state_tensors(self):
        return {f"{m}.{k}": v for m in self.train_modules for k, v in getattr(self, m).state_dict().items()}

    def load_state_tensors(self, tensors):
        for m in self.train_modules:
            prefix = f"{m}."
            getattr(self, m).load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})

    def save_artifact(self, folder) -> dict:
        from .artifact import save

        return save(self, folder)
