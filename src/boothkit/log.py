"""What a person at a terminal reads: boothkit's warnings as one line each, third-party noise off unless -v.

`cli_output(verbose)` is what the `boothkit` command (and so `boothkit serve`) installs for the length of one
command, and undoes after it, so a program that runs the CLI in-process (the tests do) gets its own warnings,
loggers and progress-bar settings back:

- every warning prints as `warning: <message>` on one line (a boothkit warning names the file and the reason),
  instead of Python's `file.py:84: UserWarning: ...` form with the source line;
- without -v, warnings raised inside third-party libraries (`NOISY`) and deprecation notices are not shown,
  transformers and diffusers log errors only (no "requires torchvision" notices, no "No LoRA keys associated to
  CLIPTextModel" when a LoRA concept loads), and the Hugging Face loading bars are off; with -v all of it is
  shown as the libraries would show it, warnings with their category and source location.

Library users are not affected: importing boothkit changes no warnings filter, logger or progress bar.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import ExitStack, contextmanager

#: packages whose own warnings and log messages are noise to a boothkit user (shown with -v)
NOISY = ("transformers", "diffusers", "peft", "accelerate", "huggingface_hub", "torch", "torchvision", "PIL",
         "safetensors", "tqdm", "timm", "bitsandbytes", "xformers", "fastapi", "starlette", "pydantic", "matplotlib")
#: environment read by those libraries when they are first imported (set only when the user has not)
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
_LOGGERS = ("accelerate", "peft", "huggingface_hub", "torch", "PIL", "matplotlib")

_verbose = False


def verbose() -> bool:
    """True inside a `boothkit -v ...` command."""
    return _verbose


def one_line(text) -> str:
    """A message on one line: runs of whitespace and newlines become one space."""
    return " ".join(str(text).split())


def format_warning(message, category=UserWarning, filename: str = "", lineno: int = 0, *, detail: bool = False
                   ) -> str:
    """`warning: <message>` (detail: followed by the category and where it was raised)."""
    line = f"warning: {one_line(message)}"
    if detail and category is not None:
        line += f" ({category.__name__}, {filename}:{lineno})"
    return line


def warn(message: str) -> None:
    """Print a warning the CLI makes itself (not raised by library code), in the same one-line form."""
    _write(format_warning(message), sys.stderr)


def _write(line: str, file) -> None:
    import click

    file = file if file is not None else sys.stderr
    try:
        click.echo(click.style(line, fg="yellow"), file=file, color=None)  # colour only on a terminal
    except (OSError, ValueError):  # a closed or broken stream: a warning must never be what fails a command
        pass


def _show(message, category, filename, lineno, file=None, line=None):
    _write(format_warning(message, category, filename, lineno, detail=_verbose), file)


@contextmanager
def cli_output(verbose: bool = False):
    """One command's output rules (see the module docstring); everything is restored on exit."""
    global _verbose
    with ExitStack() as stack:
        before = _verbose
        stack.callback(_set_verbose, before)
        _verbose = bool(verbose)
        stack.enter_context(warnings.catch_warnings())  # restores filters and showwarning on exit
        warnings.showwarning = _show
        if not verbose:
            for name in NOISY:
                warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
            _quiet_libraries(stack)
        yield


def _set_verbose(value: bool) -> None:
    global _verbose
    _verbose = value


def _quiet_libraries(stack: ExitStack) -> None:
    """Third-party loggers and bars off for the command; the previous state back on exit."""
    for key, value in _QUIET_ENV.items():
        if key not in os.environ:  # the user's own setting wins
            os.environ[key] = value
            stack.callback(os.environ.pop, key, None)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    for lib in ("transformers", "diffusers"):
        # loaded already (an in-process run): their own switches; loaded during the command: the environment above
        # configured them, and their defaults come back after it
        mod = sys.modules.get(f"{lib}.utils.logging")
        if mod is not None:
            level, bars = mod.get_verbosity(), mod.is_progress_bar_enabled()
            mod.set_verbosity_error()
            mod.disable_progress_bar()
            stack.callback(_restore_library, lib, level, bars)
        else:
            stack.callback(_restore_library, lib, logging.WARNING, True)


def _restore_library(lib: str, level: int, bars: bool) -> None:
    mod = sys.modules.get(f"{lib}.utils.logging")
    if mod is None:
        return
    mod.set_verbosity(level)
    (mod.enable_progress_bar if bars else mod.disable_progress_bar)()
