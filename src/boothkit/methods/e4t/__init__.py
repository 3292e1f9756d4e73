"""E4T (Gal et al. 2023, arXiv 2302.12228): encoder-based domain tuning.

Per class, a domain encoder (frozen CLIP vision tower -> head -> an offset from the class word's embedding) and
low-rank weight offsets on the UNet's attention are pretrained on many images of the class (`boothkit pretrain
e4t`, on a dataset or the world); a subject then needs one photo and 5-15 tuning steps (`boothkit tune --method
e4t`). Works on SD-1.x/2.x and SDXL (the word in both text encoders). Layers:

    config.py     EncoderConfig (shape, stored with the encoder), PretrainConfig, E4TConfig (domain tuning)
    modules.py    DomainEncoder, the weight offsets (peft LoRA on to_q/to_k/to_v), WordInjector, the L2 penalties
    model.py      E4TRecipe: what domain tuning trains and its loss (the shared training loop runs it)
    artifact.py   the pretrained encoder folder; the concept (textual-inversion word(s) + LoRA weight offsets)
    pretrain.py   the domain-pretraining recipe (encoder head + offsets on a dataset's batches; boothkit.pretrain
                  runs it)
"""

from ..spec import MethodSpec
from .artifact import export_webui, load
from .config import E4TConfig, EncoderConfig, PretrainConfig
from .model import E4TRecipe


def _available() -> str | None:
    from ...encoders import shipped

    if any(e.kind == "e4t" for e in shipped()):
        return None
    return "no E4T encoder is shipped (boothkit pretrain e4t --class CLASS; then --set encoder=DIR)"


def _tower(cfg: E4TConfig, model: str, class_noun: str) -> str | None:
    """The vision tower `tune` loads beside the base model: the one the encoder was trained with, if separate."""
    from .. import vision
    from .artifact import read_encoder_meta, resolve_encoder

    return vision.tower_source(read_encoder_meta(resolve_encoder(cfg.encoder, class_noun, model)))


METHOD = MethodSpec(name="e4t", config=E4TConfig, recipe=E4TRecipe, load=load, default_identifier="sks",
                    uses_prior=lambda cfg: False, export=export_webui, available=_available, image_encoder=_tower)

__all__ = ["METHOD", "E4TConfig", "E4TRecipe", "EncoderConfig", "PretrainConfig"]
