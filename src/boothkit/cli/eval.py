"""`boothkit eval ...`: measure models."""

from __future__ import annotations

import json

import typer

from .common import SCHEDULER

eval_app = typer.Typer(help="Evaluate models.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("world")
def world(
    model: str = typer.Option("world", "--model", "-m", help="A world-shaped pipeline (default: the shipped one)."),
    n: int = typer.Option(240, "-n", help="Images (fixed captions and seeds; at least 200 for the published figure)."),
    steps: int = typer.Option(20, "--steps"),
    guidance: float = typer.Option(5.0, "--guidance"),
    batch: int = typer.Option(16, "--batch"),
    out: str = typer.Option(None, "--out", help="Also write the JSON and a sample grid here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    device: str = typer.Option("auto", "--device"),
    scheduler: str = SCHEDULER,
):
    """World fidelity over train concepts: background, size, position, style accuracy and judge identity top-5."""
    from ..eval.world import evaluate_world
    from ..generate import UsageError
    from ..inputs import InputError

    try:
        result = evaluate_world(model=model, n=n, steps=steps, guidance=guidance, batch=batch, out=out,
                                device=device, progress=not as_json, scheduler=scheduler)
    except InputError as e:
        raise UsageError(str(e)) from e
    typer.echo(json.dumps(result, indent=1))
