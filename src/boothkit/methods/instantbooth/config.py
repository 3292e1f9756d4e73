"""InstantBooth settings (Shi et al. 2023, arXiv 2304.03411): the model's shape and inference knobs, and pretraining.

`InstantBoothConfig` is stored in the artifact's json (it is what is needed to rebuild the heads and adapters and
to use them); `PretrainConfig` describes one pretraining run (a TrainConfig: the shared training loop runs it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...inputs import InputError
from ...training.config import DictConfig as _Dict
from ...training.config import TrainConfig


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise InputError(f"instantbooth config: {msg}")


@dataclass
class InstantBoothConfig(_Dict):
    """Shape of the heads and adapters, and the inference knobs. Defaults: the paper, where it says."""

    identifier: str = "sks"  #: the token whose text-encoder OUTPUT embedding the concept embedding replaces
    alpha: float = 0.4  #: concept renormalisation at inference: the concept embedding is multiplied by alpha
    beta: float = 0.3  #: adapter strength at inference (1.0 in training): identity vs. prompt fidelity
    concept_head_hidden: int = 0  #: hidden width of the concept head MLP (0 = one linear layer, as the paper)
    patch_head_hidden: int = 0  #: hidden width of the patch head MLP (0 = one linear layer, as the paper)
    adapter_heads: int = 4  #: attention heads of each adapter's self-attention

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        word = self.identifier
        _need(bool(word) and len(word.split()) == 1 and word == word.strip(),
              f"identifier must be one word (got {word!r})")
        _need(self.alpha >= 0, f"alpha must be >= 0 (got {self.alpha})")
        _need(self.beta >= 0, f"beta must be >= 0 (got {self.beta})")
        _need(self.concept_head_hidden >= 0 and self.patch_head_hidden >= 0, "head hidden sizes must be >= 0")
        _need(self.adapter_heads >= 1, f"adapter_heads must be at least 1 (got {self.adapter_heads})")


@dataclass
class PretrainConfig(TrainConfig):
    """One pretraining run (`boothkit pretrain instantbooth`): the shared training settings (mixed precision,
    gradient accumulation and checkpointing, 8-bit Adam, checkpoints, validation cadence, lr schedules) and
    InstantBooth's own. `lr` is the heads' learning rate; the adapters and their gates are parameter groups at
    lr_adapters and lr_gamma (a schedule scales every group alike)."""

    steps: int = 2000  #: optimizer steps
    lr: float = 1e-4  #: AdamW lr of the concept and patch heads (paper: 1e-4)
    lr_adapters: float = 1e-6  #: AdamW lr of the adapters (paper: 1e-6 on SD; the world model wants more)
    lr_gamma: float = 0.0  #: AdamW lr of the adapters' gates gamma (0 = lr_adapters); Adam moves gamma ~lr per step
    object_weight: float = 0.0  #: extra loss weight on the subject's latent pixels: 1 + w * mask (0 = paper's loss)
    batch_size: int = 8  #: images per process per micro-step
    #: left-right flips of the TARGET images (off: captions may say "on the left"); the condition flips anyway
    flip: bool = False
    checkpoint_every: int = 200  #: resumable checkpoint every N steps (0 = only the last one)
    keep_training_state: bool = True  #: keep the checkpoints (the last step's too: a finished run can go on)
    validate_every: int = 500  #: held-out loss (and grids, with validation_images) every N steps; also first and last
    validation_images: int = 2  #: held-out records drawn in each validation grid (reference, then generated)
    heldout: int = 8  #: records kept out of training for the held-out loss and grids (world: held-out concepts)
    cond_scale: tuple[float, float] = (0.55, 0.95)  #: condition crop: subject's longer side / condition side
    cond_shift: float = 0.12  #: condition crop: max shift of the subject centre, fraction of the side
    cond_flip: float = 0.5  #: condition crop: probability of a left-right flip
    cond_jitter: float = 0.15  #: condition crop: colour jitter strength (brightness, contrast, per-channel gain)

    def __post_init__(self):
        self.cond_scale = tuple(self.cond_scale)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        _need(self.lr_adapters > 0, "lr_adapters must be positive")
        _need(self.lr_gamma >= 0, "lr_gamma must be >= 0 (0: the adapters' learning rate)")
        _need(self.object_weight >= 0, "object_weight must be >= 0")
        _need(self.heldout >= 0, "heldout must be >= 0")
        self.condition()  # the condition settings' own checks

    def condition(self):
        """The condition augmentation (boothkit.data.ConditionConfig) these settings describe."""
        from ...data import ConditionConfig

        return ConditionConfig(scale=self.cond_scale, shift=self.cond_shift, flip=self.cond_flip,
                               jitter=self.cond_jitter)
