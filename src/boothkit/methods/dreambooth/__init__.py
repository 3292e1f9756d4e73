"""DreamBooth: full UNet fine-tuning with a rare-token identifier and class-specific prior preservation."""

from ..spec import MethodSpec
from .artifact import export_webui, load
from .config import DreamBoothConfig
from .model import DreamBoothRecipe

METHOD = MethodSpec(name="dreambooth", config=DreamBoothConfig, recipe=DreamBoothRecipe, load=load,
                    default_identifier="sks", uses_prior=lambda cfg: cfg.prior_preservation, export=export_webui)
