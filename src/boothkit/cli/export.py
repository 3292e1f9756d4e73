"""`boothkit export`: a concept as the LoRA / embedding files that AUTOMATIC1111, ComfyUI and SD.Next read."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    concept: str = typer.Argument(..., help="Concept folder (boothkit tune's --out): lora, ti, e4t, custom or "
                                  "dreambooth."),
    out: str = typer.Option(..., "--out", "-o", help="New (or empty) folder for the exported files."),
    name: str = typer.Option(None, "--name", help="File name stem: the webui's LoRA name and embedding trigger "
                             "word (default: the concept folder's name)."),
    fmt: str = typer.Option("webui", "--format", help="webui: kohya-layout LoRA + A1111 embedding safetensors (SD "
                            "1.x/2.x or SDXL layout: the concept's base-model family)."),
    model: str = typer.Option(None, "--model", help="Base model to load the concept into (default: the one "
                              "concept.json names)."),
    rank: int = typer.Option(None, "--rank", help="Custom Diffusion and full DreamBooth: LoRA rank of the fit of "
                             "their weight changes (0: exact; default: exact for Custom Diffusion, 64 for "
                             "DreamBooth)."),
):
    """Export a concept for AUTOMATIC1111 / ComfyUI / SD.Next: lora/NAME.safetensors (kohya layout) and/or
    embeddings/NAME.safetensors (A1111 embedding), plus export.json with the prompt to use."""
    from ..inputs import InputError
    from ..methods.webui import export_concept
    from ..pipeline import ModelNotFoundError

    try:
        record = export_concept(concept, out, name=name, model=model, fmt=fmt, rank=rank)
    except (InputError, ModelNotFoundError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    kinds = {rel.split("/")[0] for rel in record["files"]}
    for rel in record["files"]:
        where = {"lora": "models/Lora (A1111) or models/loras (ComfyUI)",
                 "embeddings": "embeddings (A1111) or models/embeddings (ComfyUI)"}[rel.split("/")[0]]
        typer.echo(f"{out}/{rel}  -> copy into the webui's {where}")
    typer.echo(f"prompt: {record['prompt']}")
    if "lora_relative_error" in record:
        typer.echo(f"  (LoRA fit of the weight changes: relative error {record['lora_relative_error']:.2g})")
    if "change_outside_the_lora" in record:
        typer.echo(f"  (share of the weight change a LoRA cannot carry: {record['change_outside_the_lora']:.2g})")
    if "embeddings" in kinds:
        typer.echo("  (ComfyUI: write embedding:NAME for each trigger word" +
                   (", and load the LoRA with a LoraLoader node)" if "lora" in kinds else ")"))
    elif "lora" in kinds:
        typer.echo("  (ComfyUI: load the LoRA with a LoraLoader node instead of the <lora:...> tag)")
