"""E4T (Gal et al. 2023, arXiv 2302.12228): encoder-based domain tuning.

Per class, a domain encoder (frozen CLIP vision tower -> head -> an offset from the class word's embedding) and
low-rank weight offsets on the UNet's attention are pretrained on many concepts of the class
(`boothkit pretrain e4t`); a subject then needs one photo and 5-15 tuning steps (`boothkit tune --method e4t`).
Layers:

    config.py     EncoderConfig (shape, stored with the encoder), PretrainConfig, E4TConfig (domain tuning)
    modules.py    DomainEncoder, the weight offsets (peft LoRA on to_q/to_k/to_v), WordInjector, the L2 penalties
    model.py      E4TRecipe: what domain tuning trains and its loss (the shared training loop runs it)
    artifact.py   the pretrained encoder folder; the concept (textual-inversion word + LoRA weight offsets)
    pretrain.py   domain pretraining on world scenes of train concepts
"""

from ..spec import MethodSpec
from .artifact import export_webui, load, shipped_classes
from .config import E4TConfig, EncoderConfig, PretrainConfig
from .model import E4TRecipe

METHOD = MethodSpec(name="e4t", config=E4TConfig, recipe=E4TRecipe, load=load, default_identifier="sks",
                    uses_prior=lambda cfg: False, export=export_webui,
                    available=lambda: None if shipped_classes() else "no E4T encoder is shipped (boothkit pretrain "
                    "e4t --class CLASS; then --set encoder=DIR)")

__all__ = ["METHOD", "E4TConfig", "E4TRecipe", "EncoderConfig", "PretrainConfig"]
