"""`boothkit compare`: paired differences between two bench runs on their shared subjects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from boothkit.bench.compare import compare, parse_side
from boothkit.cli.main import app
from boothkit.inputs import InputError

UNITS = Path(__file__).resolve().parents[1] / "results" / "bench-full" / "units" / "e4t"


def _run(root: Path, slugs: list[str], shift: float = 0.0, method: str = "e4t", drop_image: bool = False) -> Path:
    """A bench folder with real unit records of `slugs`, every judge_i moved by `shift`."""
    folder = root / "units" / method
    folder.mkdir(parents=True)
    for slug in slugs:
        record = json.loads((UNITS / f"{slug}.json").read_text())
        for im in record["images"]:
            im["judge_i"] += shift
        if drop_image:
            record["images"] = record["images"][1:]
        (folder / f"{slug}.json").write_text(json.dumps(record))
    return root


def test_paired_difference_interval_and_wins(tmp_path):
    a = _run(tmp_path / "a", ["pear", "snail", "mouse"])
    b = _run(tmp_path / "b", ["pear", "snail", "grapes"], shift=0.1)
    r = compare(parse_side(str(a), "e4t"), parse_side(f"{b}:e4t", None))
    assert r["subjects"] == ["pear", "snail"] and r["only_a"] == ["mouse"] and r["only_b"] == ["grapes"]
    ident = r["metrics"]["identity"]
    assert ident["n"] == 2 and ident["diff"] == pytest.approx(0.1) and ident["b_higher"] == 2
    assert ident["diff_ci95"] == pytest.approx([0.1, 0.1])
    assert r["metrics"]["prompt_fidelity"]["diff"] == pytest.approx(0.0)  # the images' attributes did not move


def test_two_methods_of_one_run_and_cli(tmp_path):
    run = _run(tmp_path / "run", ["pear", "snail"])
    shutil.copytree(run / "units" / "e4t", run / "units" / "other")
    for f in (run / "units" / "other").glob("*.json"):
        record = json.loads(f.read_text())
        record["images"][0]["judge_i"] -= 1.0  # one image of each subject much worse
        f.write_text(json.dumps(record))
    result = CliRunner().invoke(app, ["compare", f"{run}:e4t", f"{run}:other", "--json"])
    assert result.exit_code == 0, result.output
    ident = json.loads(result.output)["metrics"]["identity"]
    n_images = len(json.loads((run / "units" / "e4t" / "pear.json").read_text())["images"])
    assert ident["diff"] == pytest.approx(-1.0 / n_images) and ident["b_higher"] == 0
    table = CliRunner().invoke(app, ["compare", f"{run}:e4t", f"{run}:other"]).output
    assert "| identity |" in table and "(B lower)" in table


def test_refuses_what_cannot_be_paired(tmp_path):
    a = _run(tmp_path / "a", ["pear"])
    with pytest.raises(InputError, match="same prompts and seeds"):
        compare(parse_side(str(a), "e4t"), parse_side(str(_run(tmp_path / "b", ["pear"], drop_image=True)), "e4t"))
    with pytest.raises(InputError, match="share no subject"):
        compare(parse_side(str(a), "e4t"), parse_side(str(_run(tmp_path / "c", ["snail"])), "e4t"))
    with pytest.raises(InputError, match=r"no units for method 'ti' \(this run has: \['e4t'\]\)"):
        compare(parse_side(str(a), "ti"), parse_side(str(a), "e4t"))
    with pytest.raises(InputError, match="name the method"):
        parse_side(str(a), None)
    result = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "nothing"), "--method", "e4t"])
    assert result.exit_code == 2 and "no units for method" in result.output


def test_a_folder_of_other_records_is_refused(tmp_path):
    folder = tmp_path / "db" / "units" / "dreambooth"
    folder.mkdir(parents=True)
    (folder / "dog.json").write_text(json.dumps({"dino": 0.5, "images": [{"clip_i": 0.1}]}))
    with pytest.raises(InputError, match="not a world-protocol unit"):
        compare(parse_side(str(tmp_path / "db"), "dreambooth"), parse_side(str(tmp_path / "db"), "dreambooth"))


def test_per_subject_differences_stay_with_their_subject_when_a_metric_is_missing(tmp_path):
    a = _run(tmp_path / "a", ["pear", "snail", "mouse"])
    b = _run(tmp_path / "b", ["pear", "snail", "mouse"], shift=0.1)
    record = json.loads((a / "units" / "e4t" / "pear.json").read_text())
    for im in record["images"]:
        im["clip_t"] = None  # pear has no CLIP-T under A: it drops out of that metric only
    (a / "units" / "e4t" / "pear.json").write_text(json.dumps(record))
    r = compare(parse_side(str(a), "e4t"), parse_side(str(b), "e4t"))
    assert r["metrics"]["clip_t"]["n"] == 2 and sorted(r["metrics"]["clip_t"]["per_subject"]) == ["mouse", "snail"]
    assert r["metrics"]["identity"]["per_subject"] == pytest.approx({"mouse": 0.1, "pear": 0.1, "snail": 0.1})
