"""The real-photo path: DreamBench photos (large JPEGs) through a tiny random SD-shaped model, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import FAST

DREAMBENCH = Path("/work/shared/dreambench")
if not DREAMBENCH.is_dir():  # the checkout's shared folder, wherever it is
    DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"


@pytest.mark.skipif(not (DREAMBENCH / "dog").is_dir(), reason="DreamBench photos not available")
def test_dreambench_dog_with_tiny_sd(tmp_path, tiny_model):
    from boothkit.methods import tune

    out = tune("lora", DREAMBENCH / "dog", "dog", tmp_path / "dog", model=tiny_model, steps=2,
               config={**FAST, "validation_images": 0})
    meta = json.loads((out / "concept.json").read_text())
    assert meta["resolution"] == 64 and meta["class"] == "dog"
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_cli_tune_then_generate_and_refusal(tmp_path, tiny_model, other_tiny_model, subject_photos):
    from boothkit.cli.main import app

    runner = CliRunner()
    for cmd in (["tune", "--help"], ["merge", "--help"], ["generate", "--help"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 0 and "Usage" in r.output
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**FAST, "validation_images": 0}))
    concept = tmp_path / "concepts" / "rat"
    r = runner.invoke(app, ["tune", "--method", "ti", "--images", str(subject_photos), "--class", "animal",
                            "--out", str(concept), "--steps", "2", "--config", str(cfg), "--model", tiny_model,
                            "--set", "num_vectors=2"])
    assert r.exit_code == 0, r.output
    assert json.loads((concept / "concept.json").read_text())["config"]["num_vectors"] == 2
    assert (concept / "train_log.png").is_file() and "training curves" in r.output  # the CLI plots the run
    r = runner.invoke(app, ["generate", "a photo of <sks> animal", "--concept", str(concept), "--model",
                            tiny_model, "-n", "1", "--steps", "2", "--out", str(tmp_path / "imgs")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "imgs" / "image-000.png").is_file()
    from boothkit.cli.main import main  # the real entry point turns usage errors into exit code 2
    import sys

    argv = sys.argv
    sys.argv = ["boothkit", "generate", "x", "--concept", str(concept), "--model", other_tiny_model, "-n", "1",
                "--steps", "1", "--out", str(tmp_path / "imgs2")]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    assert e.value.code == 2


def test_cli_bad_input_is_a_clear_error(tmp_path, subject_photos):
    from boothkit.cli.main import app

    out = tmp_path / "taken"
    out.mkdir()
    (out / "file.txt").write_text("x")
    r = CliRunner().invoke(app, ["tune", "--method", "lora", "--images", str(subject_photos), "--class", "animal",
                                 "--out", str(out)])
    assert r.exit_code == 2 and "not a boothkit concept folder" in r.output
    r = CliRunner().invoke(app, ["tune", "--method", "lora", "--images", str(tmp_path / "none"), "--class", "x",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "none: no such file or folder" in r.output
