"""Entry point: builds the typer app from the command modules listed below."""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

#: errors that are the user's to fix: printed as `error: <message>` (exit code 2), never as a traceback
_USER_ERRORS = (("boothkit.inputs", "InputError"), ("boothkit.generate", "UsageError"),
                ("boothkit.pipeline", "ModelNotFoundError"), ("boothkit.training.loop", "TrainingError"))


def _is_user_error(e: BaseException) -> bool:
    for module, name in _USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)  # a class never imported was never raised
        if cls is not None and isinstance(e, cls):
            return True
    return False


#: options whose value may be left out, and what they mean then (typer has no optional-value options)
_BARE = {("generate", "--instant"): "shipped"}


class _Commands(TyperGroup):
    """The root group: a user error from any command is one red line and exit code 2, the same whether the
    command runs from a shell or in-process (typer's CliRunner). Also gives `_BARE` options their bare meaning."""

    def parse_args(self, ctx, args):
        args = list(args)
        command = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
        if command is not None:
            for i in range(len(args) - 1, command, -1):
                bare = _BARE.get((args[command], args[i]))
                if bare and (i + 1 == len(args) or args[i + 1].startswith("-")):
                    args.insert(i + 1, bare)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if not _is_user_error(e):
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(help="boothkit: personalise text-to-image diffusion models from a few photos.", cls=_Commands,
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
    "boothkit.cli.encoders",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", help="Print the version and exit."),
          verbose: bool = typer.Option(False, "--verbose", "-v",
                                       help="Show third-party libraries' warnings, log messages and loading bars, "
                                            "and where each warning was raised.")):
    if version:
        from boothkit import __version__

        typer.echo(__version__)
        raise typer.Exit()
    from contextlib import ExitStack

    from ..log import cli_output

    stack = ExitStack()
    stack.enter_context(cli_output(verbose))
    ctx.call_on_close(stack.close)  # after the command: the process's own settings back (in-process runs)


def main():
    try:
        app()
    finally:
        # The process ends here. Freezing the heap spares the interpreter's final garbage collections over the
        # millions of objects torch, diffusers and transformers made: about 1 s of every command's exit on a CPU
        # (issue 18). Nothing is collected after this; exit handlers and file flushes run as before.
        import gc

        gc.freeze()


if __name__ == "__main__":
    main()
