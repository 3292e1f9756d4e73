"""Textual Inversion: a new placeholder token's embedding, learned with the frozen model."""

from ..spec import MethodSpec
from .artifact import export_webui, load
from .config import TIConfig
from .model import TIRecipe

METHOD = MethodSpec(name="ti", config=TIConfig, recipe=TIRecipe, load=load, default_identifier="<sks>",
                    uses_prior=lambda cfg: False, export=export_webui)
