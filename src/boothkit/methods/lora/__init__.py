"""DreamBooth-LoRA: low-rank adapters on the UNet attention, rare-token captions."""

from ..spec import MethodSpec
from .artifact import export_webui, load
from .config import LoraConfig
from .model import LoraRecipe

METHOD = MethodSpec(name="lora", config=LoraConfig, recipe=LoraRecipe, load=load, default_identifier="sks",
                    uses_prior=lambda cfg: cfg.prior_preservation, export=export_webui)
