"""Typed configuration of `boothkit pretrain world`, with the recipes for GPU, CPU and smoke runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

STAGES = ("tokenizer", "vae", "clip", "judge", "unet", "export")


@dataclass
class StageConfig:
    """Optimisation settings of one training stage."""

    steps: int  #: optimizer steps
    batch: int  #: scenes per step
    lr: float  #: peak learning rate (cosine decay after a short warm-up)
    warmup: int = 100  #: linear warm-up steps

    def __post_init__(self):
        if self.steps < 1 or self.batch < 1 or self.lr <= 0:
            raise ValueError(f"bad stage config {self}: steps, batch and lr must be positive")


@dataclass
class WorldPretrainConfig:
    """Everything that decides the world model's weights. Same config + same seed = same weights (per device)."""

    out: str  #: output folder: a StableDiffusionPipeline folder plus world_clip/ and judge/
    work: str = ""  #: checkpoints and logs (default: <out>.work)
    seed: int = 0  #: the one seed everything derives from
    recipe: str = "auto"  #: gpu | cpu | smoke | auto (gpu when CUDA is available)
    stages: tuple[str, ...] = STAGES  #: which stages to run (finished ones are skipped)
    device: str = "auto"  #: cuda | cpu | auto
    workers: int = -1  #: data-loader workers (-1: min(8, cpus - 1) on GPU, 0 on CPU)
    checkpoint_every: int = 1000  #: steps between checkpoints
    keep_checkpoints: int = 2  #: complete checkpoints kept per stage
    resume: bool = True  #: continue a stage from its newest complete checkpoint
    compile: bool = False  #: torch.compile the UNet (GPU)
    ema_decay: float = 0.999  #: EMA of the UNet weights; the EMA is what ships
    cfg_dropout: float = 0.1  #: share of empty captions (classifier-free guidance)
    snr_gamma: float = 5.0  #: min-SNR loss weighting (Hang et al. 2023); 0 disables
    # GPU recipe, sized from benchmarks/pretrain_throughput.py on one H100 (UNet: ~7 steps/s at batch 1024).
    vae: StageConfig = field(default_factory=lambda: StageConfig(1500, 256, 4e-4))
    clip: StageConfig = field(default_factory=lambda: StageConfig(1500, 1024, 5e-4))
    judge: StageConfig = field(default_factory=lambda: StageConfig(1500, 512, 2e-3))
    unet: StageConfig = field(default_factory=lambda: StageConfig(3600, 1024, 3e-4, warmup=200))

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stages {bad}; choose from {STAGES}")
        if self.recipe not in ("auto", "gpu", "cpu", "smoke"):
            raise ValueError(f"unknown recipe {self.recipe!r}")
        self.work = self.work or self.out.rstrip("/") + ".work"


def recipe(name: str, **overrides) -> WorldPretrainConfig:
    """The named recipe. gpu: what the shipped weights were trained with. cpu: a smaller one for machines without
    a GPU (hours on 2 cores, weaker). smoke: a few steps of everything, for tests."""
    base = WorldPretrainConfig(out=overrides.pop("out"), recipe=name)
    if name == "cpu":
        base = replace(base, vae=StageConfig(1500, 32, 4e-4), clip=StageConfig(1500, 128, 5e-4),
                       judge=StageConfig(1500, 64, 2e-3), unet=StageConfig(4000, 32, 3e-4, warmup=200))
    elif name == "smoke":
        base = replace(base, vae=StageConfig(3, 4, 1e-4, 1), clip=StageConfig(3, 4, 1e-4, 1),
                       judge=StageConfig(3, 4, 1e-4, 1), unet=StageConfig(3, 4, 1e-4, 1), checkpoint_every=2,
                       workers=0)
    return replace(base, **overrides)
