"""InstantBooth (Shi et al. 2023, arXiv 2304.03411): personalisation without test-time fine-tuning.

A pretrained concept encoder, patch encoder and gated self-attention adapters turn N reference photos into a
token embedding and visual tokens; generation needs no gradient step. Layers:

    config.py     InstantBoothConfig (shape + inference knobs, stored in the artifact), PretrainConfig
    modules.py    heads, adapters, and `attach` (attn1 processors + block pre-hooks on a stock UNet)
    artifact.py   instantbooth.safetensors (concept_head.*, patch_head.*, adapters.*) + instantbooth.json
    inference.py  install_instantbooth (plain diffusers pipelines), generate_instant (boothkit's path)
    pretrain.py   the pretraining recipe (heads + adapters on a dataset's batches; boothkit.pretrain runs it)
    concept.py    the registered method: `tune --method instantbooth` encodes photos into a concept folder (no
                  training step) that apply_concepts / generate --concept / the app / the benchmark load

The encoder shipped for the world model is src/boothkit/assets/instantbooth/all (see notes/issue-5.md for how it
was trained and how well it works); `boothkit pretrain instantbooth --data ... --model ... --image-encoder ...`
trains one for any SD-1.x/2.x or SDXL base model on a user's data (docs/real-data.md).
"""

from ..spec import MethodSpec
from .concept import ConceptConfig, encode, load, tower
from .config import InstantBoothConfig, PretrainConfig
from .inference import InstantBoothPipeline, generate_instant, install_instantbooth


def _available() -> str | None:
    from ...encoders import shipped

    if any(e.kind == "instantbooth" for e in shipped()):
        return None
    return "no InstantBooth encoder is shipped (boothkit pretrain instantbooth; then --set encoder=DIR)"


METHOD = MethodSpec(name="instantbooth", config=ConceptConfig, recipe=None, load=load, default_identifier="sks",
                    uses_prior=lambda cfg: False, encode=encode, available=_available, image_encoder=tower)

__all__ = ["METHOD", "ConceptConfig", "InstantBoothConfig", "InstantBoothPipeline", "PretrainConfig", "generate_instant",
           "install_instantbooth"]
