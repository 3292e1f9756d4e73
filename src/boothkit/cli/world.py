"""`boothkit world ...`: the shipped emoji world (paths, concepts, reference renders)."""

from __future__ import annotations

import json

import typer

world_app = typer.Typer(help="The emoji world: the shipped model, its concepts and scenes.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(world_app, name="world")


@world_app.command("path")
def path():
    """Print the folder of the shipped world pipeline."""
    from ..pipeline import world_path

    typer.echo(str(world_path()))


@world_app.command("concepts")
def concepts(
    split: str = typer.Option("all", help="all, train or heldout."),
    cls: str = typer.Option(None, "--class", help="Only this class noun."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
):
    """List the world's concepts: id, class, split and name."""
    from ..world.concepts import CLASSES, all_concepts

    if split not in ("all", "train", "heldout"):
        raise typer.BadParameter("split must be all, train or heldout")
    if cls is not None and cls not in CLASSES:
        raise typer.BadParameter(f"class must be one of {', '.join(CLASSES)}")
    for c in all_concepts():
        if (split == "train" and c.heldout) or (split == "heldout" and not c.heldout):
            continue
        if cls and c.cls != cls:
            continue
        if as_json:
            typer.echo(json.dumps({"id": c.id, "name": c.name, "class": c.cls, "heldout": c.heldout,
                                   "slug": c.slug}))
        else:
            typer.echo(f"{c.id:<40} {c.cls:<8} {'heldout' if c.heldout else 'train':<8} {c.name}")


@world_app.command("references")
def references(
    concept: str = typer.Argument(..., help="Concept id, name or slug (see `boothkit world concepts`)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the reference PNGs."),
    n: int = typer.Option(5, "-n", help="How many references."),
    seed: int = typer.Option(0, "--seed"),
    captions: str = typer.Option(None, "--captions", help="Also write each photo's caption as NAME.txt, calling the "
                                 "subject this (e.g. 'sks animal'), for `boothkit tune --captions`."),
):
    """Render n reference photos of a concept in varied backgrounds, sizes and positions (subject photos).

    Only the PNGs are written (and, with --captions, a caption file per photo), so the folder can be given to
    `boothkit tune --images` as it is."""
    from ..generate import UsageError, write_png, prepare_out
    from ..world.references import render_references
    from ..world.concepts import get

    if n < 1:
        raise UsageError("-n must be at least 1")
    if captions is not None and not captions.strip():
        raise UsageError("--captions needs the words that name the subject, e.g. 'sks animal'")
    try:
        c = get(concept)
    except KeyError as e:
        raise UsageError(str(e.args[0])) from None
    out_dir = prepare_out(out)
    images, scenes = render_references(c, n=n, seed=seed, caption_name=captions.strip() if captions else None)
    for i, (im, scene) in enumerate(zip(images, scenes)):
        path = write_png(im, out_dir / f"{c.slug}-{i:03d}.png")
        if captions:
            path.with_suffix(".txt").write_text(scene.caption + "\n", encoding="utf-8")
        typer.echo(f"{path}\t{scene.caption}")


@world_app.command("export-dataset")
def export_dataset(
    out: str = typer.Option(..., "--out", "-o", help="New folder to write (refused if it exists and is not empty)."),
    n: int = typer.Option(3000, "-n", help="How many scenes (records 0..n-1 of `--data world` with this seed)."),
    cls: str = typer.Option("all", "--class", help="A world class noun, or all."),
    seed: int = typer.Option(0, "--seed", help="Which scenes: the world source's seed (pretrain's --set seed)."),
    layout: str = typer.Option("imagefolder", "--layout", help="imagefolder (metadata.jsonl with file_name, text, "
                               "mask) or kohya (NNNNN.png + NNNNN.txt; no masks)."),
):
    """Write world scenes of the train concepts as a captioned dataset with masks, for `--data FOLDER`.

    The same scenes `--data world` trains on (held-out concepts never); captions name the object by its class
    noun, without an identifier (the data layer adds it)."""
    from ..world.dataset import export_dataset as export

    manifest = export(out, n=n, class_noun=cls, seed=seed, layout=layout,
                      progress=lambda done, total: typer.echo(f"{done}/{total}", err=True))
    typer.echo(json.dumps({"out": out, **manifest}))
