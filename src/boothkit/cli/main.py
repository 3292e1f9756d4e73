"""Entry point: builds the typer app from the command modules listed below."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(help="boothkit: personalise text-to-image diffusion models from a few photos.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

#: Each module defines `register(app)`. One line per command module.
_COMMAND_MODULES = [
    "boothkit.cli.generate",
    "boothkit.cli.world",
    "boothkit.cli.pretrain",
    "boothkit.cli.eval",
    "boothkit.cli.demo",
    "boothkit.cli.tune",
    "boothkit.cli.merge",
    "boothkit.cli.export",
    "boothkit.cli.plot",
    "boothkit.cli.serve",
    "boothkit.cli.bench",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        from boothkit import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main():
    from boothkit.generate import UsageError
    from boothkit.pipeline import ModelNotFoundError

    try:
        app()
    except (UsageError, ModelNotFoundError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    finally:
        # The process ends here. Freezing the heap spares the interpreter's final garbage collections over the
        # millions of objects torch, diffusers and transformers made: about 1 s of every command's exit on a CPU
        # (issue 18). Nothing is collected after this; exit handlers and file flushes run as before.
        import gc

        gc.freeze()


if __name__ == "__main__":
    main()
