"""Progress bars of boothkit's long loops (training, class images, generation, pretraining, benchmarks, evaluation):
one factory, `bar()`, and one switch.

On a terminal a bar is tqdm's, redrawn in place. Written to a file or a pipe (a log, `make demo > log`, a CI job)
it is plain lines instead of a stream of carriage returns: at most one line every `LINE_EVERY` seconds, and the
last state when the loop ends, so a log holds a few lines per loop rather than megabytes of redrawn bars.

`boothkit bench --no-progress` and `boothkit serve` turn bars off for their process (`bars(False)`), so their logs
hold results only (the app shows job progress on its page). Callers also pass `disable=` for their own reasons
(e.g. the non-main processes of a multi-process launch).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

LINE_EVERY = 5.0  #: seconds between two lines of a bar that is not on a terminal

_enabled = True


def enabled() -> bool:
    return _enabled


def set_enabled(on: bool) -> bool:
    """Turn the bars on or off for this process; -> the previous setting."""
    global _enabled
    before, _enabled = _enabled, bool(on)
    return before


@contextmanager
def bars(on: bool):
    """Bars on or off inside the block, the previous setting after it."""
    before = set_enabled(on)
    try:
        yield
    finally:
        set_enabled(before)


def bar(iterable=None, *, total=None, desc: str | None = None, unit: str = "it", initial: int = 0,
        disable: bool = False, file=None, **kwargs):
    """A progress bar (a tqdm object: `update`, `set_postfix`, iteration and `close` as usual).

    Off when `disable` or when bars are off for the process; on a terminal tqdm's redrawn bar (extra tqdm keyword
    arguments apply there); otherwise one plain line at most every LINE_EVERY seconds, plus the final state.
    """
    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    off = disable or not _enabled
    if off or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=off, file=stream,
                    **kwargs)
    return _line_bar_class()(iterable, total=total, desc=desc, unit=unit, initial=initial, file=_Lines(stream),
                             mininterval=LINE_EVERY, ascii=True, ncols=100)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Lines:
    """A text stream that only passes whole, non-empty lines (tqdm's own carriage returns and clearing are
    dropped)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        if s.strip():
            self.stream.write(s)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


_LINE_BAR = None


def _line_bar_class():
    """tqdm with `display` replaced by a line printer (tqdm's documented way to change how a bar is shown)."""
    global _LINE_BAR
    if _LINE_BAR is None:
        from tqdm.std import tqdm as std_tqdm

        class LineBar(std_tqdm):
            def __init__(self, *args, **kwargs):
                self._line_at = time.monotonic()  # the first line comes LINE_EVERY seconds in (or at the end)
                self._last_line = None
                super().__init__(*args, **kwargs)

            def display(self, msg=None, pos=None):
                if msg == "":  # tqdm clearing the bar: nothing to clear in a log
                    return True
                now = time.monotonic()
                closing = self.disable  # close() sets disable before its final display
                if not closing and now - self._line_at < LINE_EVERY:
                    return True
                if closing and self._last_line is None and self.n == 0:
                    return True  # never started: print nothing
                line = (msg if msg is not None else self.__str__()).strip()
                if line and line != self._last_line:
                    self.fp.write(line + "\n")
                    self.fp.flush()
                    self._last_line, self._line_at = line, now
                return True

        _LINE_BAR = LineBar
    return _LINE_BAR
