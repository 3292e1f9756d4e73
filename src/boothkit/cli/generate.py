"""`boothkit generate`: text to images, with a grid."""

from __future__ import annotations

import typer

from .common import DEVICE, DTYPE, MODEL


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
    model: str = MODEL,
    device: str = DEVICE,
    dtype: str = DTYPE,
):
    """Generate images from a prompt and print the paths of the files written."""
    from ..generate import GenerateConfig, generate_images, prepare_out, save_images
    from ..pipeline import load_pipeline

    cfg = GenerateConfig(n=n, seed=seed, steps=steps, guidance=guidance, height=height, width=width,
                         negative_prompt=negative)
    out_dir = prepare_out(out)
    pipe = load_pipeline(model, device=device, dtype=dtype)
    images = generate_images(pipe, prompt, cfg)
    for p in save_images(images, out_dir):
        typer.echo(str(p))
