"""One switch for the progress bars of boothkit's long loops (training, class images, generation). `boothkit bench
--no-progress` and `boothkit serve` turn them off for their process, so their logs hold results rather than
thousands of bar redraws (the app shows job progress on its page). Bars are also off on non-main processes of a
multi-process launch, as before."""

from __future__ import annotations

from contextlib import contextmanager

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
