"""`boothkit generate`: text to images, with a grid."""

from __future__ import annotations

import typer

from .common import DEVICE, DTYPE, MODEL, SCHEDULER


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    n: int = typer.Option(4, "-n", help="Number of images (seeds seed..seed+n-1)."),
    seed: int = typer.Option(0, "--seed", help="Base seed: same seed, same pixels."),
    out: str = typer.Option("out", "--out", "-o", help="Output folder (PNG per image + grid.png)."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale."),
    height: int = typer.Option(None, "--height", help="Image height (default: the model's native size)."),
    width: int = typer.Option(None, "--width", help="Image width (default: the model's native size)."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt."),
    concept: list[str] = typer.Option(None, "--concept", help="Concept folder from `boothkit tune` (repeatable)."),
    weight: list[float] = typer.Option(None, "--weight", help="Strength of each --concept, in their order "
                                       "(repeatable; default 1): a LoRA concept's adapter or an E4T concept's "
                                       "weight offsets, as kohya's <lora:name:W>."),
    instant: str = typer.Option(None, "--instant", help="InstantBooth artifact folder (no training: needs --images)."),
    images: str = typer.Option(None, "--images", "--ref", help="Reference photos of the subject, for --instant."),
    alpha: float = typer.Option(None, "--alpha", help="--instant: concept embedding scale (default: artifact's)."),
    beta: float = typer.Option(None, "--beta", help="--instant: adapter strength (default: artifact's)."),
    uncond_beta: float = typer.Option(None, "--uncond-beta", help="--instant: adapter strength in guidance's "
                                      "negative half (default: beta; 0: image guidance, as IP-Adapter)."),
    scheduler: str = SCHEDULER,
    model: str = MODEL,
    device: str = DEVICE,
    dtype: str = DTYPE,
):
    """Generate images from a prompt and print the paths of the files written."""
    from ..generate import GenerateConfig, generate_images, prepare_out, save_images
    from ..pipeline import load_pipeline

    if (instant is None) != (images is None) or (instant and concept):
        from ..generate import UsageError

        raise UsageError("--instant and --images go together (and not with --concept)")
    if weight and len(weight) != len(concept or []):
        from ..generate import UsageError

        raise UsageError(f"{len(weight)} --weight for {len(concept or [])} --concept: give one per concept")
    cfg = GenerateConfig(n=n, seed=seed, steps=steps, guidance=guidance, height=height, width=width,
                         negative_prompt=negative)
    if scheduler:
        from ..generate import UsageError
        from ..inputs import InputError
        from ..pipeline import scheduler_class

        try:
            scheduler_class(scheduler)
        except InputError as e:
            raise UsageError(str(e)) from e
    out_dir = prepare_out(out)
    if instant:  # bad photos or artifact: fail before the model is loaded
        from ..generate import UsageError
        from ..inputs import InputError
        from ..methods.instantbooth.artifact import read_meta
        from ..methods.instantbooth.inference import load_reference_images

        try:
            read_meta(instant)
            images = load_reference_images(images)
        except InputError as e:
            raise UsageError(str(e)) from e
    pipe = load_pipeline(model, device=device, dtype=dtype, scheduler=scheduler)
    if concept:
        from ..generate import UsageError
        from ..inputs import InputError
        from ..methods import apply_concepts

        try:
            apply_concepts(pipe, concept, weights=weight or None)
        except InputError as e:
            raise UsageError(str(e)) from e
    if instant:
        from ..methods.instantbooth import generate_instant

        try:
            pictures = generate_instant(pipe, instant, images, prompt, cfg, alpha=alpha, beta=beta,
                                        uncond_beta=uncond_beta)
        except InputError as e:
            raise UsageError(str(e)) from e
    else:
        pictures = generate_images(pipe, prompt, cfg)
    for p in save_images(pictures, out_dir):
        typer.echo(str(p))
