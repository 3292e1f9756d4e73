"""E4T settings (Gal et al. 2023, arXiv 2302.12228): the encoder's shape, domain pretraining, domain tuning.

`EncoderConfig` is stored in the pretrained encoder's json (what rebuilds the head and the weight offsets);
`PretrainConfig` describes one domain-pretraining run (a TrainConfig, run by the shared training loop); `E4TConfig` is the per-subject domain tuning that
`boothkit tune --method e4t` runs (a TrainConfig, so it shares the training loop, checkpoints and resume).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...inputs import InputError
from ...training.config import DictConfig as _Dict
from ...training.config import TrainConfig

#: UNet attention projections that get weight offsets (self- and cross-attention q/k/v, as in the paper)
UNET_TARGETS = ("to_q", "to_k", "to_v")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise InputError(f"e4t config: {msg}")


@dataclass
class EncoderConfig(_Dict):
    """Shape of the domain encoder and the weight offsets (stored with the pretrained weights)."""

    hidden: int = 256  #: hidden width of the encoder head (CLIP features -> embedding offset)
    offset_scale: float = 0.1  #: s in e = embed(class) + s * E(x) (the paper's small scale on the offset)
    rank: int = 4  #: rank of the weight offsets (LoRA-style Delta W = B A on to_q / to_k / to_v)
    alpha: float = 4.0  #: weight offset scale numerator (Delta W = alpha / rank * B A)

    def __post_init__(self):
        _need(self.hidden >= 1, f"hidden must be at least 1 (got {self.hidden})")
        _need(self.offset_scale > 0, f"offset_scale must be positive (got {self.offset_scale})")
        _need(self.rank >= 1, f"rank must be at least 1 (got {self.rank})")
        _need(self.alpha > 0, f"alpha must be positive (got {self.alpha})")


@dataclass
class PretrainConfig(TrainConfig):
    """One domain-pretraining run (`boothkit pretrain e4t`): the shared training settings (mixed precision, gradient
    accumulation and checkpointing, 8-bit Adam, checkpoints, validation cadence, lr schedules) and E4T's own. `lr`
    is the encoder head's learning rate; the weight offsets are a parameter group at lr_offsets."""

    steps: int = 1000  #: optimizer steps
    batch_size: int = 8  #: images per process per micro-step
    lr: float = 3e-4  #: AdamW lr of the encoder head
    lr_offsets: float = 3e-4  #: AdamW lr of the weight offsets
    reg_embedding: float = 1e-2  #: lambda of the L2 penalty on the embedding offset s * E(x) (mean square per dim x D)
    reg_weights: float = 1e-2  #: lambda of the L2 penalty on the weight offsets (sum of ||Delta W||_F^2)
    weight_decay: float = 0.0  #: AdamW weight decay (the L2 penalties are the regularisers)
    #: left-right flips of the target images (off: captions may say "on the left")
    flip: bool = False
    checkpoint_every: int = 100  #: resumable checkpoint every N steps (0 = only the last one)
    keep_training_state: bool = True  #: keep the checkpoints (the last step's too: a finished run can go on)
    validate_every: int = 250  #: held-out loss (and grids, with validation_images) every N steps; also first and last
    validation_images: int = 2  #: held-out records drawn in each validation grid (reference, then generated)
    heldout: int = 8  #: records kept out of training for the held-out loss and grids (world: held-out concepts)
    #: frame the photos the encoder reads (the subject cut out on white by its mask, centred at 3/4 of the side), in
    #: pretraining and at tuning (recorded in the encoder's preprocessing); False: the photos as given (the paper)
    frame: bool = False

    def validate(self) -> None:
        super().validate()
        _need(self.lr_offsets > 0, "lr_offsets must be positive")
        _need(self.reg_embedding >= 0 and self.reg_weights >= 0, "reg_embedding and reg_weights must be >= 0")
        _need(self.heldout >= 0, "heldout must be >= 0")


@dataclass
class E4TConfig(TrainConfig):
    """Domain tuning of one subject: starts from the pretrained encoder; encoder head + weight offsets train."""

    steps: int = 5  #: the paper tunes 5-15 steps; 5 at lr 3e-3 was chosen on `boothkit bench --val` (results/e4t_val/)
    lr: float = 3e-3  #: one lr for the encoder head and the weight offsets (4e-3 and above collapse: results/e4t_val/)
    lr_encoder: float | None = None  #: the encoder head's own lr (None: lr); the weight offsets keep lr
    batch_size: int = 16  #: augmented (flipped) copies of the subject photo(s) per step (the paper's 16)
    weight_decay: float = 0.0  #: the L2 penalties below are the regularisers
    encoder: str = ""  #: pretrained E4T encoder folder (default: the one shipped for the class noun: boothkit.encoders)
    segmenter: str = ""  #: encoders pretrained on framed photos: a CLIPSeg folder or id that cuts the subject out
    #: lambdas of the L2 penalties on the embedding offset and on the weight offsets while TUNING (pretraining keeps
    #: the paper's 1e-2). Off by default: in 5 steps they only pull identity back (judge-I +0.02 without them on
    #: both the --val and the --full subjects: results/e4t_val/); set them to 1e-2 for the paper's tuning loss
    reg_embedding: float = 0.0
    reg_weights: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.reg_embedding < 0 or self.reg_weights < 0:
            raise InputError("config: reg_embedding and reg_weights must be >= 0")
        if self.lr_encoder is not None and self.lr_encoder <= 0:
            raise InputError(f"config: lr_encoder must be positive (got {self.lr_encoder})")
        if self.encoder:
            from .artifact import read_encoder_meta

            read_encoder_meta(self.encoder)  # a missing or wrong folder fails here, before anything is written
