"""`boothkit export`: a concept as the LoRA / embedding files that AUTOMATIC1111, ComfyUI and SD.Next read."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    concept: str = typer.Argument(..., help="Concept folder (boothkit tune's --out): lora, ti or e4t."),
    out: str = typer.Option(..., "--out", "-o", help="New (or empty) folder for the exported files."),
    name: str = typer.Option(None, "--name", help="File name stem: the webui's LoRA name and embedding trigger "
                             "word (default: the concept folder's name)."),
    fmt: str = typer.Option("webui", "--format", help="webui: kohya-layout LoRA + A1111 embedding safetensors."),
    model: str = typer.Option(None, "--model", help="Base model to load the concept into (default: the one "
                              "concept.json names)."),
):
    """Export a concept for AUTOMATIC1111 / ComfyUI / SD.Next: lora/NAME.safetensors (kohya layout) and/or
    embeddings/NAME.safetensors (A1111 embedding), plus export.json with the prompt to use."""
    from ..inputs import InputError
    from ..methods.webui import export_concept
    from ..pipeline import ModelNotFoundError

    try:
        record = export_concept(concept, out, name=name, model=model, fmt=fmt)
    except (InputError, ModelNotFoundError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    for kind, rel in record["files"].items():
        where = {"lora": "models/Lora (A1111) or models/loras (ComfyUI)",
                 "embeddings": "embeddings (A1111) or models/embeddings (ComfyUI)"}[kind]
        typer.echo(f"{out}/{rel}  -> copy into the webui's {where}")
    typer.echo(f"prompt: {record['prompt']}")
    if "embeddings" in record["files"]:
        typer.echo(f"  (ComfyUI: write embedding:{record['name']} for the trigger word, and load the LoRA with a "
                   "LoraLoader node)" if "lora" in record["files"] else
                   f"  (ComfyUI: write embedding:{record['name']} for the trigger word)")
    elif "lora" in record["files"]:
        typer.echo("  (ComfyUI: load the LoRA with a LoraLoader node instead of the <lora:...> tag)")
