"""`boothkit merge`: combine separately trained Custom Diffusion concepts in closed form."""

from __future__ import annotations

import typer

from .common import MODEL


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)


def merge(
    concepts: list[str] = typer.Argument(..., help="Custom Diffusion concept folders (two or more)."),
    out: str = typer.Option(..., "--out", "-o", help="Merged concept folder to write."),
    model: str = MODEL,
):
    """Constrained least-squares merge of Custom Diffusion concepts (Kumari et al. 2023, §3.3)."""
    from ..inputs import InputError
    from ..methods.custom.merge import merge_concepts

    try:
        path, meta = merge_concepts(concepts, out, model=model)
    except InputError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"merged concept written to {path}: tokens {', '.join(meta['tokens'])}")
    for p in meta["prompts"]:
        typer.echo(f"  {p}")
