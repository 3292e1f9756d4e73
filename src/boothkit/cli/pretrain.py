"""`boothkit pretrain ...`: train the world model, and the encoder methods' encoders (boothkit.pretrain.encoders)."""

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


DATA_HELP = ("Training data: 'world' (the shipped emoji world, the default), a folder of photos with captions "
             "(kohya photo.jpg + photo.txt, or an imagefolder with metadata.jsonl: file_name, text, optional "
             "mask/bbox), a `datasets` save_to_disk folder or load_dataset name, or WebDataset .tar shards "
             "(a file, a folder, or shard-{000..099}.tar). Each caption must name the class noun.")


def _settings(config: str | None, set_: list[str] | None, flags: dict) -> dict:
    """--config (a JSON file), then --set key=value, then the explicit options (which win)."""
    from .common import read_settings

    settings = read_settings(config, set_)
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def _encoder_command(method: str, summary: str, class_help: str):
    """`boothkit pretrain instantbooth|e4t`: the same options for both (boothkit.pretrain.encoders)."""

    def command(
        data: str = typer.Option("world", "--data", help=DATA_HELP),
        cls: str = typer.Option(None, "--class", help=class_help),
        out: str = typer.Option(None, "--out", "-o", help="Encoder folder to write."),
        model: str = typer.Option("world", "--model", "-m", help="Base model: 'world', a diffusers SD-1.x/2.x or "
                                  "SDXL folder, or a hub id."),
        image_encoder: str = typer.Option(None, "--image-encoder", help="CLIP vision tower (a "
                                          "CLIPVisionModelWithProjection folder or hub id, e.g. "
                                          "openai/clip-vit-large-patch14; default: the base model's image_encoder)."),
        segmenter: str = typer.Option(None, "--segmenter", help="CLIPSeg folder or hub id that cuts the subject out "
                                      "of records with no alpha, mask or bbox (prompted with the class noun)."),
        resolution: int = typer.Option(None, "--resolution", help="Training image side (default: the model's)."),
        batch: int = typer.Option(None, "--batch", help="Images per process per micro-step."),
        grad_accum: int = typer.Option(None, "--grad-accum", help="Micro-steps per optimizer step."),
        steps: int = typer.Option(None, "--steps", help="Optimizer steps."),
        mixed_precision: str = typer.Option(None, "--mixed-precision", help="auto, no, fp16 or bf16."),
        gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                    help="Recompute the UNet's activations in the backward pass."),
        config: str = typer.Option(None, "--config", help="JSON file of settings (see --show-config)."),
        set_: list[str] = typer.Option(None, "--set", help="One setting: key=value (repeatable; see --show-config)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --work (--steps "
                                    "at its step: only write its encoder)."),
        work: str = typer.Option(None, "--work", help="Checkpoints, validation grids and train_log.jsonl (default: "
                                 "<out>.work)."),
        show_config: bool = typer.Option(False, "--show-config", help="Print every setting and its default, exit."),
    ):
        from ..pretrain.encoders import configs_of, pretrain_encoder

        if show_config:
            _, cfg, shape, dcfg = configs_of(method, {})
            typer.echo(json.dumps({"train": cfg.to_dict(), "encoder": shape.to_dict(), "data": dcfg.to_dict()},
                                  indent=1))
            raise typer.Exit()
        missing = [flag for flag, v in (("--class", cls), ("--out", out)) if not v]
        if missing:
            from ..generate import UsageError

            raise UsageError(f"missing {', '.join(missing)} (needed unless --show-config)")
        flags = {"resolution": resolution, "batch_size": batch, "grad_accum": grad_accum, "steps": steps,
                 "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing}
        result = pretrain_encoder(method, out, data=data, class_noun=cls, model=model, image_encoder=image_encoder,
                                  segmenter=segmenter, settings=_settings(config, set_, flags), resume=resume,
                                  work=work)
        if result.pop("is_main_process"):
            typer.echo(json.dumps(result, indent=1))

    command.__doc__ = summary
    return command


pretrain_app.command("instantbooth")(_encoder_command(
    "instantbooth",
    "Pretrain InstantBooth's concept/patch heads and UNet adapters on a dataset (or the world) for a base model.",
    "The class noun every caption names (the identifier goes in front of it); 'all' with --data world: one "
    "encoder for every world class."))
pretrain_app.command("e4t")(_encoder_command(
    "e4t",
    "Pretrain an E4T domain encoder and weight offsets on a dataset of one class (or the world's) for a base model.",
    "The domain: the class noun every caption names (with --data world: a world class, e.g. person)."))
