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
    reg_captions: str = typer.Option(None, "--reg-captions", help="Text file of regularisation captions, one per "
                                     "line: ordinary captions like the concepts' (the paper uses about 200 real "
                                     "ones). Default: the world's scene captions on the world model; generic "
                                     "class-noun templates on any other model, with a warning."),
):
    """Constrained least-squares merge of Custom Diffusion concepts (Kumari et al. 2023, §3.3)."""
    import warnings

    from ..inputs import InputError
    from ..methods.custom.merge import concept_classes, merge_concepts, read_reg_captions

    try:
        if reg_captions is not None:
            captions, source = read_reg_captions(reg_captions), f"file: {reg_captions}"
            typer.echo(f"regularisation captions: {len(captions)} read from {reg_captions}")
        elif _is_world(model):
            from ..world.regularisation import regularisation_captions

            captions, source = regularisation_captions(concept_classes(concepts)), "world"
            typer.echo(f"regularisation captions: the world model's {len(captions)} scene captions")
        else:
            captions, source = None, None  # the method's templates, with a warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path, meta = merge_concepts(concepts, out, model=model, reg_captions=captions, reg_source=source)
    except InputError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    for w in caught:  # the method's warnings as one line each; others as Python shows them
        if type(w.message) is UserWarning:
            typer.secho(f"warning: {w.message}", fg="yellow", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    typer.echo(f"merged concept written to {path}: tokens {', '.join(meta['tokens'])}")
    for p in meta["prompts"]:
        typer.echo(f"  {p}")


def _is_world(model: str) -> bool:
    """Whether --model is the shipped world model (by name or by its folder)."""
    from pathlib import Path

    from ..pipeline import WORLD, resolve_model, world_path

    return model == WORLD or Path(resolve_model(model)).resolve() == world_path().resolve()
