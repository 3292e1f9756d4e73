"""`boothkit pretrain ...`: train the world model (and, later, encoder-method heads)."""

from __future__ import annotations

import json

import typer

pretrain_app = typer.Typer(help="Pretrain models: the world model, encoder methods.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(pretrain_app, name="pretrain")


@pretrain_app.command("world")
def world(
    out: str = typer.Option("world-model", "--out", "-o", help="Output pipeline folder."),
    work: str = typer.Option("", "--work", help="Checkpoints and logs (default: <out>.work)."),
    recipe: str = typer.Option("auto", "--recipe", help="gpu, cpu, smoke or auto (gpu when CUDA is available)."),
    stages: str = typer.Option("tokenizer,vae,clip,judge,unet,export", "--stages",
                               help="Comma-separated stages to run; finished ones are skipped."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    workers: int = typer.Option(-1, "--workers", help="Data-loader workers (-1: automatic)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the newest checkpoint."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (GPU)."),
):
    """Reproduce every weight of the world model from a fixed seed (tokenizer, VAE, CLIP, judge, UNet)."""
    from dataclasses import replace

    from ..pretrain.world.config import recipe as make_recipe
    from ..pretrain.world.train import pretrain_world

    from ..generate import UsageError

    try:  # every check before anything is written
        base = make_recipe(recipe if recipe != "auto" else "gpu", out=out)
        cfg = replace(base, recipe=recipe, work=work or base.work, stages=tuple(s for s in stages.split(",") if s),
                      seed=seed, device=device, workers=workers if workers >= 0 else base.workers, resume=resume,
                      compile=compile)
    except ValueError as e:
        raise UsageError(str(e)) from e
    typer.echo(json.dumps(pretrain_world(cfg), indent=1))


@pretrain_app.command("instantbooth")
def instantbooth(
    cls: str = typer.Option(..., "--class", help="Class of the train concepts: person, face, animal, plant, food, "
                                                 "vehicle, object, or all (one model for every class)."),
    out: str = typer.Option(..., "--out", "-o", help="Artifact folder (instantbooth.safetensors + .json)."),
    steps: int = typer.Option(2000, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(8, "--batch", help="Scenes per step."),
    lr_heads: float = typer.Option(1e-4, "--lr-heads", help="Learning rate of the concept and patch heads."),
    lr_adapters: float = typer.Option(1e-6, "--lr-adapters", help="Learning rate of the adapters."),
    lr_gamma: float = typer.Option(0.0, "--lr-gamma", help="Learning rate of the adapters' gates (0: --lr-adapters)."),
    object_weight: float = typer.Option(0.0, "--object-weight",
                                        help="Extra loss weight on the subject's pixels, 1 + w * mask (0: paper)."),
    alpha: float = typer.Option(None, "--alpha", help="Inference default stored in the artifact: concept scale "
                                                       "(0.4, the paper's; training uses 1)."),
    beta: float = typer.Option(None, "--beta", help="Inference default stored in the artifact: adapter strength "
                                                     "(0.3, the paper's; training uses 1)."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Checkpoint every N steps."),
    val_every: int = typer.Option(500, "--val-every", help="Held-out-subject loss every N steps (train_log)."),
    val_batches: int = typer.Option(4, "--val-batches", help="Fixed held-out batches for that loss (0: none)."),
    work: str = typer.Option("", "--work", help="Checkpoints and train_log.jsonl (default: <out>.work)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --work "
                                                        "(--steps = its step: only write its artifact)."),
    model: str = typer.Option("world", "--model", "-m", help="Base model (needs an image_encoder)."),
    device: str = typer.Option("auto", "--device", help="cuda, mps, cpu or auto."),
):
    """Pretrain InstantBooth's concept/patch heads and UNet adapters on world scenes of train concepts."""
    from ..generate import UsageError
    from ..inputs import InputError
    from ..methods.instantbooth.config import InstantBoothConfig, PretrainConfig
    from ..methods.instantbooth.pretrain import pretrain_instantbooth

    try:
        cfg = PretrainConfig(cls=cls, steps=steps, batch_size=batch, lr_heads=lr_heads, lr_adapters=lr_adapters,
                             lr_gamma=lr_gamma, object_weight=object_weight, seed=seed,
                             checkpoint_every=checkpoint_every, val_every=val_every, val_batches=val_batches)
        knobs = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
        summary = pretrain_instantbooth(out, cfg, InstantBoothConfig(**knobs), model=model, work=work or None,
                                        resume=resume, device=device)
    except InputError as e:
        raise UsageError(str(e)) from e
    typer.echo(json.dumps(summary, indent=1))


@pretrain_app.command("e4t")
def e4t(
    cls: str = typer.Option(..., "--class", help="The domain: a world class (person, face, animal, plant, food, "
                                                 "vehicle, object)."),
    out: str = typer.Option(..., "--out", "-o", help="Encoder folder (e4t_encoder.safetensors + .json)."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch: int = typer.Option(8, "--batch", help="Scenes per step."),
    lr: float = typer.Option(3e-4, "--lr", help="Learning rate of the encoder head."),
    lr_offsets: float = typer.Option(3e-4, "--lr-offsets", help="Learning rate of the weight offsets."),
    rank: int = typer.Option(4, "--rank", help="Rank of the weight offsets on the UNet's q/k/v projections."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Checkpoint every N steps."),
    val_every: int = typer.Option(250, "--val-every", help="Held-out-subject loss every N steps (train_log)."),
    val_batches: int = typer.Option(2, "--val-batches", help="Fixed held-out batches for that loss (0: none)."),
    frame: bool = typer.Option(False, "--frame", help="Frame the photos the encoder reads (background to white, "
                                                      "subject centred), in pretraining and at tuning."),
    work: str = typer.Option("", "--work", help="Checkpoints and train_log.jsonl (default: <out>.work)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --work."),
    model: str = typer.Option("world", "--model", "-m", help="Base model (needs an image_encoder)."),
    device: str = typer.Option("auto", "--device", help="cuda, mps, cpu or auto."),
):
    """Pretrain an E4T domain encoder and weight offsets on world scenes of one class's train concepts."""
    from ..generate import UsageError
    from ..inputs import InputError
    from ..methods.e4t.config import EncoderConfig, PretrainConfig
    from ..methods.e4t.pretrain import pretrain_e4t

    try:
        cfg = PretrainConfig(cls=cls, steps=steps, batch_size=batch, lr=lr, lr_offsets=lr_offsets, seed=seed,
                             checkpoint_every=checkpoint_every, val_every=val_every, val_batches=val_batches,
                             frame=frame)
        summary = pretrain_e4t(out, cfg, EncoderConfig(rank=rank, alpha=float(rank)), model=model,
                               work=work or None, resume=resume, device=device)
    except InputError as e:
        raise UsageError(str(e)) from e
    typer.echo(json.dumps(summary, indent=1))
