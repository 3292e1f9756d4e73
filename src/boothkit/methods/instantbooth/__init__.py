"""InstantBooth (Shi et al. 2023, arXiv 2304.03411): personalisation without test-time fine-tuning.

A pretrained concept encoder, patch encoder and gated self-attention adapters turn N reference photos into a
token embedding and visual tokens; generation needs no gradient step. Layers:

    config.py     InstantBoothConfig (shape + inference knobs, stored in the artifact), PretrainConfig
    modules.py    heads, adapters, and `attach` (attn1 processors + block pre-hooks on a stock UNet)
    artifact.py   instantbooth.safetensors (concept_head.*, patch_head.*, adapters.*) + instantbooth.json
    inference.py  install_instantbooth (plain diffusers pipelines), generate_instant (boothkit's path)
    pretrain.py   pretraining on world scenes of train concepts (`boothkit pretrain instantbooth`)

Not registered in boothkit.methods.METHODS: that registry is for `tune` (per-subject training); InstantBooth has
no per-subject training, and no pretrained weights ship yet (see notes/issue-5.md).
"""

from .config import InstantBoothConfig, PretrainConfig
from .inference import InstantBoothPipeline, generate_instant, install_instantbooth

__all__ = ["InstantBoothConfig", "InstantBoothPipeline", "PretrainConfig", "generate_instant",
           "install_instantbooth"]
