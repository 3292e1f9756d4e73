"""`boothkit demo`: the main job on the embedded world, offline."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


DEMO_PROMPTS = [
    "a large dog on a red background",
    "a small cat face on the left on a blue background",
    "a person in the center on a green background",
    "a large grayscale red apple on a yellow background",
    "a medium pizza at the top on a white background",
    "a large upside-down police car on a purple background",
    "a large outline rocket in the center on an orange background",
    "a small bus on the right and a medium tiger on the left on a gray background",
]


def demo(
    out: str = typer.Option("demo-out", "--out", "-o", help="Output folder."),
    n: int = typer.Option(4, "-n", help="Images per prompt."),
    seed: int = typer.Option(0, "--seed"),
):
    """Draw a grid of prompts with the world model, and the reference photos of a held-out subject."""
    from ..generate import GenerateConfig, generate_images, prepare_out, save_images
    from ..pipeline import load_pipeline
    from ..world.concepts import heldout_concepts
    from ..world.references import render_references
    from ..world.render import grid

    out_dir = prepare_out(out)
    pipe = load_pipeline("world", progress=False)
    images = []
    for i, p in enumerate(DEMO_PROMPTS):
        typer.echo(f"[{i + 1}/{len(DEMO_PROMPTS)}] {p}")
        images += generate_images(pipe, p, GenerateConfig(n=n, seed=seed))
    sheet = grid(images, cols=n * 2)
    sheet.save(out_dir / "world-grid.png")
    (out_dir / "world-grid.txt").write_text("\n".join(DEMO_PROMPTS) + "\n")
    subject = heldout_concepts("animal")[0]
    refs, _ = render_references(subject, n=5, seed=seed)
    paths = save_images(refs, prepare_out(out_dir / "subject-references"), stem=subject.slug)
    typer.echo(f"world model grid ({len(DEMO_PROMPTS)} prompts x {n} seeds): {out_dir / 'world-grid.png'}")
    typer.echo(f"held-out subject '{subject.name}' ({subject.cls}), references: {paths[-1].parent}")
    typer.echo("personalisation before/after: pending the method issues (see README)")
