"""InstantBooth settings (Shi et al. 2023, arXiv 2304.03411): the model's shape and inference knobs, and pretraining.

`InstantBoothConfig` is stored in the artifact's json (it is what is needed to rebuild the heads and adapters and
to use them); `PretrainConfig` describes one pretraining run and lives beside its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...inputs import InputError
from ...training.config import DictConfig as _Dict

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
class PretrainConfig(_Dict):
    """One pretraining run on world scenes of TRAIN concepts (held-out subjects are never drawn)."""

    cls: str = "all"  #: class of the train concepts drawn ("person", "animal", ...) or "all"
    steps: int = 2000  #: optimizer steps
    batch_size: int = 8  #: scenes per step
    lr_heads: float = 1e-4  #: AdamW lr of the concept and patch heads (paper: 1e-4)
    lr_adapters: float = 1e-6  #: AdamW lr of the adapters (paper: 1e-6 on SD; the world model likely wants more)
    lr_gamma: float = 0.0  #: AdamW lr of the adapters' gates gamma (0 = lr_adapters); Adam moves gamma ~lr per step
    object_weight: float = 0.0  #: extra loss weight on the object's latent pixels: 1 + w * mask (0 = paper's loss)
    weight_decay: float = 1e-2  #: AdamW weight decay
    max_grad_norm: float = 1.0  #: gradient clipping (0 = off)
    seed: int = 0  #: decides initialisation, data, augmentation, noise and timesteps
    checkpoint_every: int = 200  #: resumable checkpoint every N steps (0 = only at the end)
    keep_checkpoints: int = 2  #: keep the newest K complete checkpoints
    val_every: int = 500  #: held-out denoising loss every N steps (also before the first and after the last step)
    val_batches: int = 4  #: fixed batches of HELD-OUT concepts of the class for that loss (0 = no validation)
    cond_scale: tuple[float, float] = (0.55, 0.95)  #: condition crop: object's longer side / image side
    cond_shift: float = 0.12  #: condition crop: max shift of the object centre, fraction of the image side
    cond_flip: float = 0.5  #: condition crop: probability of a left-right flip
    cond_jitter: float = 0.15  #: condition crop: colour jitter strength (brightness, contrast, per-channel gain)

    def __post_init__(self):
        self.cond_scale = tuple(self.cond_scale)
        self.validate()

    def validate(self) -> None:
        from ...world.concepts import CLASSES

        _need(self.cls == "all" or self.cls in CLASSES, f"cls must be 'all' or one of {CLASSES} (got {self.cls!r})")
        _need(self.steps >= 1, f"steps must be at least 1 (got {self.steps})")
        _need(self.batch_size >= 1, f"batch_size must be at least 1 (got {self.batch_size})")
        _need(self.lr_heads > 0 and self.lr_adapters > 0, "learning rates must be positive")
        _need(self.lr_gamma >= 0, "lr_gamma must be >= 0 (0: the adapters' learning rate)")
        _need(self.object_weight >= 0, "object_weight must be >= 0")
        _need(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        _need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")
        _need(self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1")
        _need(self.val_every >= 0 and self.val_batches >= 0, "val_every and val_batches must be >= 0")
        lo, hi = self.cond_scale
        _need(0 < lo <= hi <= 1.5, f"cond_scale must satisfy 0 < lo <= hi <= 1.5 (got {self.cond_scale})")
        _need(0 <= self.cond_shift <= 0.5, "cond_shift must be in [0, 0.5]")
        _need(0 <= self.cond_flip <= 1, "cond_flip must be in [0, 1]")
        _need(0 <= self.cond_jitter <= 1, "cond_jitter must be in [0, 1]")
