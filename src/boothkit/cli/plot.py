"""`boothkit plot`: training curves from the JSON-lines logs that tune and pretrain write."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("plot")(plot)


def plot(
    logs: list[str] = typer.Argument(..., help="Logs: a concept folder (its train_log.jsonl), a pretraining work "
                                     "folder, or .jsonl files (several: one colour each, to compare runs)."),
    out: str = typer.Option(..., "--out", "-o", help="PNG file to write."),
    key: list[str] = typer.Option(None, "--key", "-k", help="Series to draw (repeatable; default: all, losses "
                                  "first), e.g. loss, lr, heldout_loss."),
    smooth: float = typer.Option(0.9, "--smooth", help="Moving-average weight for per-step series, 0 to 0.99 "
                                 "(0: raw values only)."),
    label: list[str] = typer.Option(None, "--label", help="Legend name per log (repeatable; default: folder or "
                                    "file names)."),
):
    """Plot training curves (loss, learning rate, held-out losses...) against the step, also while a run is
    still going (a torn last line is skipped)."""
    from pathlib import Path

    from ..training.plots import plot_logs

    target = Path(out)
    if target.suffix.lower() != ".png":
        typer.secho(f"error: --out {out}: give a .png file name", fg="red", err=True)
        raise typer.Exit(2)
    if not target.parent.is_dir():
        typer.secho(f"error: --out {out}: folder {target.parent} does not exist", fg="red", err=True)
        raise typer.Exit(2)
    try:
        path = plot_logs(logs, target, keys=key or None, smooth=smooth, labels=label or None)
    except (ValueError, OSError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"plot written to {path}")
