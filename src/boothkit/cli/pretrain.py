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

    base = make_recipe(recipe if recipe != "auto" else "gpu", out=out)
    cfg = replace(base, recipe=recipe, work=work or base.work, stages=tuple(s for s in stages.split(",") if s),
                  seed=seed, device=device, workers=workers if workers >= 0 else base.workers, resume=resume,
                  compile=compile)
    typer.echo(json.dumps(pretrain_world(cfg), indent=1))
