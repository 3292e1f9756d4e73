"""Settings every training run shares; each method's config (methods/<name>/config.py) extends this."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from ..inputs import InputError

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
CROPS = ("center", "random")
OPTIMIZERS = ("adamw", "prodigy")
#: learning-rate schedules: diffusers.optimization.SchedulerType's values (piecewise_constant, which needs a rule
#: string, left out). Named here so importing a config does not import diffusers; a test checks the names.
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
#: the learning rate diffusers' polynomial schedule decays to (get_polynomial_decay_schedule_with_warmup's lr_end)
POLYNOMIAL_LR_END = 1e-7


class DictConfig:
    """from_dict / to_dict for the typed config dataclasses (training and the methods' own configs)."""

    @classmethod
    def from_dict(cls, d: dict | None) -> "DictConfig":
        """Build from a JSON object; unknown keys are an error that lists the known ones."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"config: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
        for f in fields(cls):  # type check what JSON can get wrong
            if f.name in d and f.type in ("float | None", "float | None = None") and isinstance(d[f.name], int) \
                    and not isinstance(d[f.name], bool):
                d[f.name] = float(d[f.name])  # an optional float given as an int
            if f.name in d and f.type in ("int", "float", "bool", "str"):
                v = d[f.name]
                want = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
                if isinstance(v, bool) and f.type in ("int", "float") or not isinstance(v, want):
                    raise InputError(f"config: {f.name} must be {f.type} (got {v!r})")
                if f.type == "float":
                    d[f.name] = float(v)  # `--set snr_gamma=5` and 5.0 are one run (resume compares configs)
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(DictConfig):
    """Shared training settings. Every field is recorded in concept.json."""

    steps: int = 200  #: optimizer steps
    lr: float = 1e-4  #: AdamW learning rate
    lr_warmup: int = 0  #: linear warm-up steps
    #: constant (lr, after a warm-up of lr * (step + 1) / lr_warmup), or a diffusers schedule over `steps`, as
    #: diffusers' training scripts' --lr_scheduler (their warm-up is lr * step / lr_warmup): constant_with_warmup,
    #: linear, cosine, cosine_with_restarts, polynomial
    lr_scheduler: str = "constant"
    lr_num_cycles: int = 1  #: hard restarts of cosine_with_restarts (diffusers' --lr_num_cycles)
    lr_power: float = 1.0  #: power of the polynomial decay (diffusers' --lr_power)
    batch_size: int = 1  #: subject images per micro-batch (prior/regularisation images are added on top)
    grad_accum: int = 1  #: micro-batches per optimizer step
    weight_decay: float = 1e-2  #: AdamW weight decay
    max_grad_norm: float = 1.0  #: gradient clipping (0 = off)
    snr_gamma: float = 0.0  #: Min-SNR-gamma loss weighting, Hang et al. 2023 (arXiv 2303.09556); 5.0 is usual; 0 = off
    noise_offset: float = 0.0  #: offset noise (Guttenberg 2023): noise += noise_offset * N(0, 1) per image and channel
    seed: int = 0  #: decides every random choice of the run (data, augmentation, noise, timesteps)
    resolution: int = 0  #: training image side in pixels (0 = the model's native size)
    flip: bool = True  #: random left-right flips of the photos
    #: how a photo that is not square becomes a square training image: center (its middle square, always) or
    #: random (a new square window along its long side at every draw: diffusers' training scripts without
    #: --center_crop). Square photos are the same either way.
    crop: str = "center"
    mixed_precision: str = "auto"  #: auto (bf16/fp16 on GPU, none on CPU), no, fp16, bf16
    gradient_checkpointing: bool = False  #: trade compute for memory in the UNet (and trained text encoder)
    #: compute each photo's VAE latents (per flip) once, and each prompt's text conditioning once while no text
    #: encoder trains (kohya's cache_latents; diffusers' SDXL scripts precompute embeddings). Same draws, same
    #: weights up to float rounding; photos drawn as random windows or resized (crop=random, Custom Diffusion's
    #: random_resize) are encoded at each draw
    cache: bool = True
    #: adamw, or prodigy (Mishchenko & Defazio 2023: estimates its own step size; `lr` multiplies it, 1.0 is
    #: usual; diffusers' advanced scripts' settings: bias correction, safeguard warm-up, decoupled weight decay)
    optimizer: str = "adamw"
    use_8bit_adam: bool = True  #: adamw: bitsandbytes AdamW8bit when installed and on CUDA; otherwise torch AdamW
    #: adamw: torch's fused kernel (fused=True) where the parameters' device has one (CPU, CUDA): the same update,
    #: all tensors in one kernel instead of a loop over them (issue 18: 4.7 -> 0.8 ms a step for LoRA's 176 tensors
    #: on the world model, 1 CPU thread). False: torch's per-tensor loop; the two round differently in the last bits
    fused_adamw: bool = True
    checkpoint_every: int = 50  #: write a resumable checkpoint every N steps (0 = never)
    keep_checkpoints: int = 2  #: keep the newest K complete checkpoints
    #: also keep the concept as it was every N steps, in <out>/snapshots/<name>-step-N/ (each one a concept folder
    #: that generate --concept loads), to pick an earlier, less overfit one (kohya's --save_every_n_steps); 0 = off
    save_every: int = 0
    #: every N steps: the recipe's evaluation (pretraining's held-out loss) and, when validation_images > 0, a
    #: validation grid (0 = only at the end)
    validate_every: int = 0
    #: images per validation grid (0 = no validation). Off by default, as diffusers' training scripts and kohya draw
    #: samples only when asked: at the end of a short run they cost more than its training (issue 18: 4 images were
    #: 7 of the 26 s of `tune --method lora --steps 60` on the world model)
    validation_images: int = 0
    validation_steps: int = 20  #: sampler steps for validation images
    validation_prompt: str = ""  #: default: "a photo of <identifier> <class>"
    keep_training_state: bool = False  #: keep the checkpoints folder after a successful run

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise InputError(f"config: {msg}")

        need(self.steps >= 1, f"steps must be at least 1 (got {self.steps})")
        need(self.lr > 0, f"lr must be positive (got {self.lr})")
        need(self.lr_warmup >= 0, "lr_warmup must be >= 0")
        need(self.lr_scheduler in LR_SCHEDULERS,
             f"lr_scheduler must be one of {LR_SCHEDULERS} (got {self.lr_scheduler!r})")
        need(self.lr_num_cycles >= 1, f"lr_num_cycles must be at least 1 (got {self.lr_num_cycles})")
        need(self.lr_power > 0, f"lr_power must be positive (got {self.lr_power})")
        need(self.lr_scheduler != "polynomial" or self.lr > POLYNOMIAL_LR_END,
             f"lr_scheduler polynomial decays to {POLYNOMIAL_LR_END}: lr must be above it (got {self.lr})")
        need(self.snr_gamma >= 0, f"snr_gamma must be >= 0 (0 = off; got {self.snr_gamma})")
        need(self.noise_offset >= 0, f"noise_offset must be >= 0 (0 = off; got {self.noise_offset})")
        need(self.batch_size >= 1, f"batch_size must be at least 1 (got {self.batch_size})")
        need(self.grad_accum >= 1, f"grad_accum must be at least 1 (got {self.grad_accum})")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.max_grad_norm >= 0, "max_grad_norm must be >= 0")
        need(self.resolution == 0 or (self.resolution >= 8 and self.resolution % 8 == 0),
             f"resolution must be 0 or a multiple of 8 (got {self.resolution})")
        need(self.crop in CROPS, f"crop must be one of {CROPS} (got {self.crop!r})")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS} (got {self.optimizer!r})")
        need(self.mixed_precision in MIXED_PRECISION,
             f"mixed_precision must be one of {MIXED_PRECISION} (got {self.mixed_precision!r})")
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1")
        need(self.save_every >= 0, f"save_every must be >= 0 (0 = off; got {self.save_every})")
        need(self.validate_every >= 0, "validate_every must be >= 0")
        need(self.validation_images >= 0, "validation_images must be >= 0")
        need(self.validation_steps >= 1, "validation_steps must be at least 1")

