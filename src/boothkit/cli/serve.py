"""`boothkit serve`: the web page and JSON API (see boothkit.app)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DEVICE, DTYPE, MODEL


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: str = MODEL,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on. Anything but loopback needs "
                                                         "--auth-token."),
    port: int = typer.Option(7860, "--port", help="TCP port."),
    auth_token: str = typer.Option(None, "--auth-token", envvar="BOOTHKIT_AUTH_TOKEN", show_envvar=True,
                                   help="Require this token on every request (header 'Authorization: Bearer T', "
                                        "or open /?token=T once in a browser)."),
    data: Path = typer.Option(None, "--data", help="Folder for the concept library, jobs and images (default: "
                                                   "$BOOTHKIT_DATA or ~/.local/share/boothkit/app)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Concept jobs that run at once."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
):
    """Serve the page and the JSON API (OpenAPI at /openapi.json); jobs and the library persist in --data."""
    try:
        from ..app.limits import RequestError
        from ..app.server import AppConfig, default_data_dir, serve as run
    except ImportError as e:
        typer.secho(f"error: `boothkit serve` needs the app extra ({e.name} is missing): "
                    f"pip install 'boothkit[app]'", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        cfg = AppConfig(model=model, data=data or default_data_dir(), token=auth_token or None, workers=workers,
                        device=None if device == "auto" else device, dtype=None if dtype == "auto" else dtype)
        from ..progress import bars

        with bars(False):  # background jobs' bars would interleave in the server log; the page shows progress
            run(cfg, host=host, port=port, log_level=log_level)
    except (RequestError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
