"""Training-curve plots (boothkit.training.plots and `boothkit plot`): what is read from a log, the smoothing, and
the PNG drawn from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from boothkit.training.plots import find_log, plot_logs, read_log, smoothed

C0, C1 = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def write_log(path, records, torn_tail=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if torn_tail:
        text += '{"step": 99, "loss": 0.'  # a run killed mid-write
    path.write_text(text)
    return path


def has_colour(png, rgb, tol=12, min_pixels=30) -> bool:
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(-1) <= tol).sum()) >= min_pixels


def test_read_log_keeps_numeric_series_by_step(tmp_path):
    log = write_log(tmp_path / "train_log.jsonl", [
        {"config": {"lr": 1e-4}},  # no step: not a point
        {"step": 0, "heldout_loss": 0.5},
        {"step": 1, "loss": 0.9, "lr": 1e-4, "t": 0.3, "note": "text", "done": True},
        {"step": 2, "loss": float("nan"), "lr": 1e-4},
        {"step": 3, "loss": 0.7, "lr": 5e-5},
        {"step": 3, "heldout_loss": 0.45},
        {"step": 3, "heldout_loss": 0.4},  # a resumed run logs its first step's held-out loss again: the last wins
        [1, 2],
    ], torn_tail=True)
    s = read_log(log)
    assert sorted(s) == ["heldout_loss", "loss", "lr"]  # not t, config, strings or booleans
    assert s["loss"] == ([1, 3], [0.9, 0.7])  # the nan point and the torn last line are skipped
    assert s["heldout_loss"] == ([0, 3], [0.5, 0.4])
    assert find_log(tmp_path) == log  # a folder means its train_log.jsonl


def test_smoothing_is_debiased_and_reduces_noise():
    assert smoothed([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # not pulled toward 0 at the start
    assert smoothed([1.0, 3.0], 0.0) == [1.0, 3.0]
    rng = np.random.default_rng(0)
    noisy = list(1.0 + rng.normal(0, 0.2, 500))
    s = smoothed(noisy, 0.9)
    assert np.std(s[50:]) < np.std(noisy[50:]) / 2 and math.isclose(np.mean(s[50:]), 1.0, abs_tol=0.05)


def test_plot_draws_each_log_in_its_own_colour(tmp_path):
    a = write_log(tmp_path / "a" / "train_log.jsonl",
                  [{"step": i, "loss": 1 / (i + 1), "lr": 1e-4} for i in range(1, 60)])
    b = write_log(tmp_path / "b" / "train_log.jsonl", [{"step": i, "loss": 0.5} for i in range(1, 60)])
    one = plot_logs([a], tmp_path / "one.png")
    assert Image.open(one).size[1] > Image.open(one).size[0] / 2  # two panels (loss, lr)
    assert has_colour(one, C0) and not has_colour(one, C1)
    two = plot_logs([a, b], tmp_path / "two.png", keys=["loss"])
    assert has_colour(two, C0) and has_colour(two, C1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "one.png", "two.png"]  # no temporary left


def test_plot_refuses_what_it_cannot_draw(tmp_path):
    a = write_log(tmp_path / "train_log.jsonl", [{"step": 1, "loss": 0.3}])
    with pytest.raises(ValueError, match="no series \\['lr'\\].*they have: loss"):
        plot_logs([a], tmp_path / "x.png", keys=["lr"])
    empty = write_log(tmp_path / "empty.jsonl", [{"config": {}}])
    with pytest.raises(ValueError, match="no numeric series"):
        plot_logs([empty], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no such log"):
        plot_logs([tmp_path / "missing.jsonl"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_plot(tmp_path):
    from boothkit.cli.main import app

    concept = tmp_path / "concept"
    write_log(concept / "train_log.jsonl", [{"step": i, "loss": 1 / i} for i in range(1, 30)])
    runner = CliRunner()
    r = runner.invoke(app, ["plot", str(concept), "--out", str(tmp_path / "curves.png")])
    assert r.exit_code == 0, r.output
    assert has_colour(tmp_path / "curves.png", C0)
    for args, message in ((["--out", str(tmp_path / "curves.jpg")], "give a .png"),
                          (["--out", str(tmp_path / "no" / "c.png")], "does not exist"),
                          (["--out", str(tmp_path / "c.png"), "-k", "lr"], "no series")):
        r = runner.invoke(app, ["plot", str(concept), *args])
        assert r.exit_code == 2 and message in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concept", "curves.png"]
