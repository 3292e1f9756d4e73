"""Custom Diffusion: cross-attention K/V + a modifier token; several concepts jointly or merged in closed form."""

from ..spec import MethodSpec
from .artifact import export_webui, load
from .config import CustomConfig
from .model import CustomRecipe

METHOD = MethodSpec(name="custom", config=CustomConfig, recipe=CustomRecipe, load=load,
                    default_identifier="<new1>", uses_prior=lambda cfg: cfg.prior_preservation, multi_concept=True,
                    export=export_webui)
