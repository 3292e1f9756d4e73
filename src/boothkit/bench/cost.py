"""Cost measurement: wall seconds and peak memory of a phase, artifact bytes of a folder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch


class PeakMemory:
    """Peak resident set size of this process while the block runs (sampled every `every` seconds), and on CUDA
    the peak of torch's allocated GPU memory. Use as `with PeakMemory() as m: ...; m.peak_rss, m.peak_cuda`."""

    def __init__(self, every: float = 0.01, device: str | torch.device = "cpu"):
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.rss_before = self.peak_rss = self.proc.memory_info().rss
        self.peak_cuda: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss_before = self.peak_rss = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_cuda = int(torch.cuda.max_memory_allocated())
        return False

    @property
    def peak_bytes(self) -> int:
        """What the results call peak memory: GPU peak on CUDA, else the process's peak RSS."""
        return self.peak_cuda if self.peak_cuda is not None else int(self.peak_rss)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def folder_bytes(folder: str | Path | None) -> int:
    """Bytes of every file under a folder (0 for None)."""
    if folder is None:
        return 0
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
