"""Experiment logging through accelerate's trackers: always a JSON-lines file, tensorboard when installed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from accelerate.tracking import GeneralTracker


class JsonlTracker(GeneralTracker):
    """Appends one JSON object per `log` call to <dir>/train_log.jsonl (no extra dependency)."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, directory: str | Path):
        super().__init__()
        self.path = Path(directory) / "train_log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        self._write({"config": values})

    def log(self, values: dict, step: int | None = None, **kwargs):
        self._write({"step": step, **values})

    def _write(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")


def make_trackers(work_dir: str | Path) -> list:
    trackers: list = [JsonlTracker(work_dir)]
    try:
        import tensorboard  # noqa: F401

        trackers.append("tensorboard")
    except ImportError:
        pass
    return trackers
