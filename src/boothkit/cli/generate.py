"""`boothkit generate`: text to images, with a grid."""

from __future__ import annotations

import typer

from .common import DEVICE, DTYPE, IMAGES_HELP, MODEL, SCHEDULER, images_arg, warn_subject

#: what a bare `--instant` stands for: the InstantBooth encoder shipped for the base model
SHIPPED = "shipped"


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    n: int = typer.Option(4, "-n", help="Number of images (seeds seed..seed+n-1)."),
    seed: int = typer.Option(0, "--seed", help="Base seed: same seed, same pixels."),
    out: str = typer.Option("out", "--out", "-o", help="Output folder (PNG per image + grid.png); created only when "
                            "the images are made."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale."),
    height: int = typer.Option(None, "--height", help="Image height (default: the model's native size)."),
    width: int = typer.Option(None, "--width", help="Image width (default: the model's native size)."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt."),
    concept: list[str] = typer.Option(None, "--concept", help="Concept folder from `boothkit tune` (repeatable)."),
    weight: list[float] = typer.Option(None, "--weight", help="Strength of each --concept, in their order "
                                       "(repeatable; default 1): a LoRA concept's adapter or an E4T concept's "
                                       "weight offsets, as kohya's <lora:name:W>."),
    instant: str = typer.Option(None, "--instant", metavar="[DIR]",  # bare: SHIPPED (cli.main._BARE)
                                help="InstantBooth, no training (needs --images): an encoder folder, or no folder "
                                     "for the one shipped for the base model (`boothkit encoders` lists them)."),
    images: list[str] = typer.Option(None, "--images", "--ref", help=IMAGES_HELP + " For --instant."),
    alpha: float = typer.Option(None, "--alpha", help="--instant: concept embedding scale (default: artifact's)."),
    beta: float = typer.Option(None, "--beta", help="--instant: adapter strength (default: artifact's)."),
    uncond_beta: float = typer.Option(None, "--uncond-beta", help="--instant: adapter strength in guidance's "
                                      "negative half (default: beta; 0: image guidance, as IP-Adapter)."),
    image_encoder: str = typer.Option(None, "--image-encoder", help="--instant: the CLIP vision tower (folder or "
                                      "hub id; default: the one the encoder was trained with)."),
    segmenter: str = typer.Option(None, "--segmenter", help="--instant: a CLIPSeg folder or hub id that cuts the "
                                  "subject out of photos without transparency (default: a flat background is cut "
                                  "away, any other photo is used whole)."),
    scheduler: str = SCHEDULER,
    model: str = MODEL,
    device: str = DEVICE,
    dtype: str = DTYPE,
):
    """Generate images from a prompt and print the paths of the files written.

    Every input is checked before anything is loaded or written: the output folder appears only with the images."""
    from ..generate import GenerateConfig, UsageError, generate_images, prepare_out, save_images
    from ..inputs import InputError, check_creatable, read_concept
    from ..log import verbose
    from ..pipeline import load_pipeline, resolve_model

    if (instant is None) != (not images) or (instant and concept):
        raise UsageError("--instant and --images go together (and not with --concept)")
    if (image_encoder or segmenter) and not instant:
        raise UsageError("--image-encoder and --segmenter are for --instant")
    if weight and len(weight) != len(concept or []):
        raise UsageError(f"{len(weight)} --weight for {len(concept or [])} --concept: give one per concept")
    cfg = GenerateConfig(n=n, seed=seed, steps=steps, guidance=guidance, height=height, width=width,
                         negative_prompt=negative)
    try:
        if scheduler:
            from ..pipeline import scheduler_class

            scheduler_class(scheduler)
        check_creatable(out)
        resolve_model(model)  # an unknown model fails here, before anything is loaded
        for c in concept or []:
            read_concept(c)
        photos = None
        if instant:  # bad photos or artifact: fail before the model is loaded
            from ..methods.instantbooth.artifact import read_meta
            from ..methods.instantbooth.inference import load_reference_images

            if instant == SHIPPED:
                from ..encoders import shipped_instantbooth

                instant = shipped_instantbooth(model).path
            from ..methods.vision import tower_source

            image_encoder = image_encoder or tower_source(read_meta(instant))  # real base models ship none
            photos = load_reference_images(images_arg(images))
            warn_subject(None, None, model, photos=photos)
    except InputError as e:
        raise UsageError(str(e)) from e
    pipe = load_pipeline(model, device=device, dtype=dtype, scheduler=scheduler, progress=verbose(),
                         image_encoder=image_encoder)
    try:
        if concept:
            from ..methods import apply_concepts

            apply_concepts(pipe, concept, weights=weight or None)
        if instant:
            from ..methods.instantbooth import generate_instant

            pictures = generate_instant(pipe, instant, photos, prompt, cfg, alpha=alpha, beta=beta,
                                        uncond_beta=uncond_beta, segmenter=segmenter or "")
        else:
            pictures = generate_images(pipe, prompt, cfg)
    except InputError as e:
        raise UsageError(str(e)) from e
    for p in save_images(pictures, prepare_out(out)):
        typer.echo(str(p))
