"""`boothkit tune`: personalise a base model on a folder of subject photos (one concept folder out)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import IMAGES_HELP, MODEL, images_arg, read_settings, warn_subject


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)


def tune(
    method: str = typer.Option(..., "--method", help="dreambooth, lora, ti, custom, e4t or instantbooth."),
    images: list[str] = typer.Option(None, "--images", help=IMAGES_HELP + " Required, as --class and --out are, "
                                     "unless --show-config."),
    class_noun: str = typer.Option(None, "--class", help="The subject's class noun, e.g. dog."),
    out: str = typer.Option(None, "--out", "-o", help="Concept folder to write (e.g. concepts/NAME)."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps (overrides the recipe's default)."),
    config: str = typer.Option(None, "--config", help="JSON file of method config fields (see --show-config)."),
    set_: list[str] = typer.Option(None, "--set", help="Override one config field: key=value (repeatable)."),
    identifier: str = typer.Option(None, "--identifier",
                                   help="Token naming the subject (default: sks; <sks> for ti; <new1> for custom)."),
    concept: list[str] = typer.Option(None, "--concept",
                                      help="More subjects trained jointly (custom only): IMAGES=CLASS (a folder or a "
                                           "photo), repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint of this run."),
    captions: bool = typer.Option(False, "--captions", help="Train each photo with the caption file beside it "
                                  "(photo.txt, naming the subject by its identifier, kohya's way) instead of "
                                  "'a photo of <identifier> <class>'."),
    image_encoder: str = typer.Option(None, "--image-encoder", help="e4t, instantbooth: the CLIP vision tower "
                                      "(folder or hub id; default: the one the method's encoder was trained with)."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the method's default config and exit."),
    model: str = MODEL,
):
    """Personalise a model on subject photos; writes concept.json + weights in diffusers formats to --out."""
    from ..inputs import InputError, check_out
    from ..methods import METHODS, tune as run_tune
    from ..training.loop import TrainingError

    if method not in METHODS:
        typer.secho(f"error: unknown --method {method!r}; choose from {sorted(METHODS)}", fg="red", err=True)
        raise typer.Exit(2)
    if show_config:
        typer.echo(json.dumps(METHODS[method].config().to_dict(), indent=1))
        raise typer.Exit()
    missing = [flag for flag, v in (("--images", images), ("--class", class_noun), ("--out", out)) if not v]
    if missing:
        typer.secho(f"error: missing {', '.join(missing)} (needed unless --show-config)", fg="red", err=True)
        raise typer.Exit(2)
    try:
        cfg = read_settings(config, set_)
        subjects = []
        for c in concept or []:
            if "=" not in c:
                raise InputError(f"--concept {c!r}: expected IMAGES=CLASS (a folder or a photo, then its class noun)")
            d, cls = c.rsplit("=", 1)
            subjects.append((d, cls))
        checked = METHODS[method].config.from_dict(cfg)  # the quick checks first (tune repeats them), so that a
        if steps is not None:  # typo is not reported after the photos were looked at
            checked.steps = steps
        checked.validate()
        check_out(out)
        for imgs, cls in [(images_arg(images), class_noun)] + subjects:
            warn_subject(imgs, cls, model)  # the world model: a class noun it never read, photos unlike its scenes
        path = run_tune(method, images_arg(images), class_noun, out, model=model, steps=steps,
                        identifier=identifier, config=cfg, resume=resume, subjects=subjects or None,
                        captions=captions, image_encoder=image_encoder)
    except (InputError, TrainingError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    meta = json.loads((Path(path) / "concept.json").read_text())
    typer.echo(f"concept written to {path}")
    snaps = sorted(p for p in (Path(path) / "snapshots").glob("*") if p.is_dir())
    if snaps:
        typer.echo(f"{len(snaps)} earlier snapshot(s), each a concept folder: {', '.join(str(p) for p in snaps)}")
    _plot_training(Path(path))
    typer.echo(f"try: boothkit generate --concept {path} --model {model} \"{meta['prompt']}\"")


def _plot_training(concept: Path) -> None:
    """train_log.png beside the concept's train_log.jsonl (main process only). A plot that fails is a warning: the
    concept is already written."""
    from accelerate import PartialState

    log = concept / "train_log.jsonl"
    if not log.is_file() or not PartialState().is_main_process:
        return
    from ..training.plots import plot_logs

    try:
        plot_logs([log], concept / "train_log.png", title=f"{concept.name}: training")
    except (ValueError, OSError) as e:
        typer.secho(f"warning: no training plot ({e})", fg="yellow", err=True)
        return
    typer.echo(f"training curves: {concept / 'train_log.png'}")
