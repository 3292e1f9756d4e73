"""The command line: generate, world, eval, help, and usage errors that write nothing."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from boothkit.cli.main import app

runner = CliRunner()


def _boothkit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "boothkit.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_generate_writes_pngs_and_grid_and_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        r = _boothkit("generate", "a small dog face on a red background", "-n", "2", "--seed", "3", "--steps", "3",
                      "--out", str(out))
        assert r.returncode == 0, r.stderr[-2000:]
    for noise in ("\r", "[transformers]", "Loading", "Warning"):  # stderr is a pipe: bars as lines, no noise
        assert noise not in r.stderr, (noise, r.stderr[-2000:])
    printed = [line for line in r.stdout.splitlines() if line.endswith(".png")]
    assert len(printed) == 3 and all(os.path.exists(p) for p in printed)
    assert sorted(p.name for p in a.iterdir()) == ["grid.png", "image-000.png", "image-001.png"]
    for name in ("image-000.png", "image-001.png"):
        assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name)))
    assert not np.array_equal(np.asarray(Image.open(a / "image-000.png")), np.asarray(Image.open(a / "image-001.png")))


@pytest.mark.parametrize("args,message", [
    (["-n", "0"], "-n must be at least 1"),
    (["--height", "60"], "multiple of 8"),
    (["--steps", "0"], "--steps"),
    (["--scheduler", "nosuch"], "unknown scheduler 'nosuch'; choose from"),
    (["--scheduler", "LMSDiscreteScheduler"], "needs torch and scipy installed"),
    (["--concept", "a", "--weight", "0.5", "--weight", "1"], "2 --weight for 1 --concept"),
    (["--weight", "0.5"], "1 --weight for 0 --concept"),
])
def test_generate_usage_errors_write_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    r = runner.invoke(app, ["generate", "a dog", *args, "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_generate_unwritable_out_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(app, ["generate", "a dog", "-n", "1", "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and "error: " in r.stderr and "not writable" in r.stderr, r.output


def test_generate_unknown_model_is_a_clear_error(tmp_path):
    r = _boothkit("generate", "a dog", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_long_prompt_is_truncated_with_a_warning():
    from boothkit.generate import check_prompt
    from boothkit.pipeline import load_pipeline

    pipe = load_pipeline("world", device="cpu", progress=False)
    with pytest.warns(UserWarning, match="truncated"):
        check_prompt(pipe, "a red dog " * 40)


def _commands(typer_app, prefix=()):
    import typer.main

    click_cmd = typer.main.get_command(typer_app)
    stack = [(prefix, click_cmd)]
    while stack:
        path, cmd = stack.pop()
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append((path + (name,), sub))


def test_every_command_has_help():
    seen = list(_commands(app))
    assert ("generate",) in seen and ("world", "path") in seen and ("eval", "world") in seen
    for path in seen:
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "Usage" in r.output


def test_world_path_and_concepts():
    r = runner.invoke(app, ["world", "path"])
    assert r.exit_code == 0 and os.path.isfile(os.path.join(r.output.strip(), "model_index.json"))
    r = runner.invoke(app, ["world", "concepts", "--split", "heldout", "--class", "animal"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 0 and len(lines) >= 10 and all("heldout" in x and "animal" in x for x in lines)


def test_world_references(tmp_path):
    r = runner.invoke(app, ["world", "references", "dog face", "--out", str(tmp_path), "-n", "3"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"dog-face-{i:03d}.png" for i in range(3)]
    assert "background" in r.output


def test_world_references_with_captions_then_tune_with_them(tmp_path, tiny_model):
    r = runner.invoke(app, ["world", "references", "dog face", "--out", str(tmp_path / "p"), "-n", "2",
                            "--captions", "sks face"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "dog-face-000.png", "dog-face-000.txt", "dog-face-001.png", "dog-face-001.txt"]
    texts = [(tmp_path / "p" / f"dog-face-00{i}.txt").read_text().strip() for i in range(2)]
    assert all(" sks face " in t and "background" in t and "dog" not in t for t in texts)
    r = runner.invoke(app, ["tune", "--method", "lora", "--images", str(tmp_path / "p"), "--class", "face",
                            "--out", str(tmp_path / "c"), "--steps", "2", "--captions", "--model", tiny_model,
                            "--set", "validation_images=0", "--set", "checkpoint_every=0"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "concept.json").read_text())["captions"] == [texts]
    r = runner.invoke(app, ["world", "references", "dog face", "--out", str(tmp_path / "q"), "--captions", " "])
    assert r.exit_code != 0 and not (tmp_path / "q").exists()


def test_tune_show_config_needs_no_photos_and_a_tune_without_them_is_a_usage_error():
    r = runner.invoke(app, ["tune", "--method", "lora", "--show-config"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)
    assert cfg["optimizer"] == "adamw" and cfg["crop"] == "center" and cfg["save_every"] == 0
    r = runner.invoke(app, ["tune", "--method", "lora", "--class", "dog"])
    assert r.exit_code == 2 and "missing --images, --out" in r.output


@pytest.mark.parametrize("args, words", [
    (["tune", "--method", "lora", "--images", "{tmp}/nope", "--class", "dog"], "nope: no such file or folder"),
    (["tune", "--method", "lora", "--images", "{tmp}/notes.txt", "--class", "dog"],
     "notes.txt: a caption file (.txt), not a photo"),
    (["tune", "--method", "lora", "--images", "{photos}", "--class", "dog", "--model", "{tmp}/nomodel"], "nomodel"),
    (["tune", "--method", "lora", "--images", "{photos}", "--class", "dog", "--set", "rank=0"], "rank must be"),
    # refused by the method once the model is loaded: still before any folder
    (["tune", "--method", "e4t", "--images", "{photos}", "--class", "plant"], "no pretrained encoder ships"),
    (["generate", "x", "--instant", "--images", "{tmp}/nope"], "nope: no such file or folder"),
    (["generate", "x", "--instant", "{tmp}/folder", "--images", "{photos}"], "not an InstantBooth artifact"),
    (["generate", "x", "--concept", "{tmp}/folder"], "not a concept folder"),
    (["generate", "x", "--model", "{tmp}/nomodel"], "nomodel"),
    (["merge", "{tmp}/folder", "{tmp}/folder"], "not a concept folder"),
    (["export", "{tmp}/folder"], "not a concept folder"),
    (["bench", "--methods", "nope"], "unknown method(s)"),
    (["bench", "--methods", "floor", "--model", "{tmp}/nomodel"], "nomodel"),
    (["pretrain", "world", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["pretrain", "instantbooth", "--class", "nope", "--steps", "1"], "the world has no class 'nope'"),
    (["pretrain", "instantbooth", "--class", "dog", "--data", "{tmp}/nope"], "nope: no such file or folder"),
    (["pretrain", "e4t", "--class", "dog", "--data", "{tmp}/folder"], "the folder is empty"),
    (["pretrain", "e4t", "--class", "animal", "--model", "{tmp}/nomodel", "--steps", "1"], "nomodel"),
    (["eval", "world", "--model", "{tmp}/nomodel", "-n", "1"], "nomodel"),
    (["world", "references", "no such thing"], "no world concept named"),
])
def test_bad_input_creates_nothing_in_any_command(tmp_path, subject_photos, args, words):
    """Every command checks its inputs before it creates anything: --out (and its parents) never appear."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("sks dog")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "new" / "deep" / "out"
    args = [a.format(tmp=tmp_path, photos=subject_photos) for a in args]
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and words in r.stderr, r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before and list((tmp_path / "folder").iterdir()) == []


def test_plot_bad_input_creates_nothing(tmp_path):
    r = runner.invoke(app, ["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "curves.png")])
    assert r.exit_code == 2 and "nope" in r.stderr and list(tmp_path.iterdir()) == []
