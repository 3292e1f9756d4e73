"""`boothkit encoders`: the pretrained encoders of the encoder methods, shipped and trained."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    app.command("encoders")(encoders)


def encoders(
    folders: list[str] = typer.Argument(None, help="Folders to search for trained encoders (what `boothkit pretrain "
                                        "instantbooth|e4t --out` wrote), besides the shipped ones."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per encoder, one per line."),
):
    """List InstantBooth and E4T encoders: kind, class, the base model each was trained for, steps, folder."""
    from ..encoders import USE, find, shipped

    found = shipped() + find(folders or [])
    if as_json:
        for e in found:
            typer.echo(json.dumps(e.to_dict()))
        return
    rows = [("kind", "class", "base model", "model hash", "steps", "folder")]
    rows += [(e.kind, e.classes, str(e.base_model), str(e.model_hash), str(e.steps or "-"),
              e.path + (" (shipped)" if e.shipped else "")) for e in found]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    if folders and not any(not e.shipped for e in found):
        typer.secho(f"no trained encoder in {', '.join(folders)}", fg="yellow", err=True)
    typer.echo("")
    for kind, use in USE.items():
        typer.echo(f"{kind}: {use}")
