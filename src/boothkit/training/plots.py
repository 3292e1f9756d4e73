"""Plots of training logs: a concept's `train_log.jsonl`, a pretraining run's `train_log.jsonl` or a world stage's
`<stage>.log.jsonl`. Every numeric series with a step is drawn against the step, one panel per series; series with
many noisy points (the per-step loss) get an exponential moving average drawn over them (TensorBoard's
debiased smoothing), sparse ones (held-out losses every N steps) are drawn as points. Several logs share the
panels, one colour each, for comparing runs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

#: record keys that are not series
NOT_SERIES = {"step", "time", "t", "config"}
#: a series with more points than this is drawn raw (faint) plus its moving average
SMOOTH_ABOVE = 20


def find_log(path: str | Path) -> Path:
    """A log file, or the log inside a concept or work folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "train_log.jsonl").is_file():
            return path / "train_log.jsonl"
        found = sorted(path.glob("*.jsonl"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"{path}: no train_log.jsonl here" +
                                (f" (and {len(found)} other .jsonl files: name one)" if found else ""))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such log file")
    return path


def read_log(path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """{series: (steps, values)} from a JSON-lines log. Lines that are not JSON objects (the torn last line of a run
    killed mid-write) and non-finite values are skipped; a step logged twice (a resumed run repeats the held-out
    loss of the step it resumed at) keeps its last value."""
    series: dict[str, dict[float, float]] = {}
    with open(find_log(path)) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            step = rec.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                continue
            for key, value in rec.items():
                if key in NOT_SERIES or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    series.setdefault(key, {})[step] = float(value)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in series.items()}


def smoothed(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled toward 0)."""
    out, ema = [], 0.0
    for i, v in enumerate(values, start=1):
        ema = weight * ema + (1 - weight) * v
        out.append(ema / (1 - weight ** i))
    return out


def plot_logs(logs: list[str | Path], out: str | Path, *, keys: list[str] | None = None, smooth: float = 0.9,
              labels: list[str] | None = None, title: str | None = None) -> Path:
    """Draw `logs` into the PNG `out` (written atomically) and return its path. keys: the series to draw, in order
    (default: every series any log has, losses first). Raises ValueError when there is nothing to draw or a key
    is in no log."""
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1) (got {smooth})")
    paths = [find_log(p) for p in logs]
    if not paths:
        raise ValueError("no log to plot")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} logs")
    runs = [read_log(p) for p in paths]
    available = list(dict.fromkeys(k for run in runs for k in run))
    if not available:
        raise ValueError(f"{', '.join(map(str, paths))}: no numeric series with a step to plot")
    if keys:
        missing = [k for k in keys if k not in available]
        if missing:
            raise ValueError(f"no series {missing} in the log(s); they have: {', '.join(available)}")
    else:
        keys = sorted(available, key=lambda k: ("loss" not in k, available.index(k)))
    labels = labels or _labels(paths)

    from matplotlib.figure import Figure  # not pyplot: no global state, so the app's threads can draw at once

    fig = Figure(figsize=(7, 1.2 + 1.9 * len(keys)))
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for i, (label, run) in enumerate(zip(labels, runs)):
            if key not in run:
                continue
            xs, ys = run[key]
            colour = f"C{i}"
            if len(xs) > SMOOTH_ABOVE and smooth > 0:
                ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(xs, smoothed(ys, smooth), color=colour, linewidth=1.5, label=label)
            else:
                ax.plot(xs, ys, color=colour, marker="o", markersize=3, linewidth=1, label=label)
        ax.set_ylabel(key, fontsize=9)
        ax.grid(alpha=0.3)
        if key == "lr" or key.startswith("lr_"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axes[-1, 0].set_xlabel("step")
    if len(runs) > 1:
        axes[0, 0].legend(fontsize=8)
    note = f" (lines: moving average, weight {smooth}; faint: every step)" if smooth > 0 else ""
    fig.suptitle((title or (labels[0] if len(runs) == 1 else "training logs")) + note, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _labels(paths: list[Path]) -> list[str]:
    """Short names that tell the logs apart: the log's folder (a concept's name), or its file name."""
    names = [p.parent.name if p.name == "train_log.jsonl" and p.parent.name else p.stem for p in paths]
    names = [n[: -len(".work")] if n.endswith(".work") else n for n in names]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names
