"""boothkit bench: the protocol, the metrics (calibrated on exact renders), resumability, outputs, DreamBench path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boothkit.bench import protocol as P


def test_presets_meet_the_protocol():
    full = P.preset("full")
    subs = P.subjects(full)
    assert len(subs) >= 20 and len({s.cls for s in subs}) >= 4
    assert all(s.heldout for s in subs)
    prompts = [P.PROMPTS[k] for k in full.prompts]
    assert len(prompts) >= 12 and {p.group for p in prompts} == set(P.GROUPS)
    assert len(full.seeds) >= 2
    quick = P.preset("quick")
    assert {P.PROMPTS[k].group for k in quick.prompts} == set(P.GROUPS)
    with pytest.raises(ValueError):
        P.preset("full", prompts=["nope"])
    # val: for choosing knobs, on held-out subjects that the reported (full) run never uses
    val = P.subjects(P.preset("val"))
    assert len(val) == 10 and all(s.heldout for s in val) and not {s.id for s in val} & {s.id for s in subs}
    assert {s.cls for s in val} == {s.cls for s in subs}
    assert "subject_offset" not in full.to_dict() and P.preset("val").to_dict()["subject_offset"] == 4
    with pytest.raises(ValueError, match="held-out"):
        P.subjects(P.preset("val", subjects_per_class={"food": 5}))


def test_prompt_texts_and_companions():
    s = P.subjects(P.preset("quick"))[0]
    comp = P.companion(s)
    assert comp.cls != s.cls and not comp.heldout and P.companion(s) == comp  # fixed
    assert P.PROMPTS["bare"].text("sks dog") == "a photo of sks dog"
    assert P.PROMPTS["bg-blue-left"].text("sks dog") == "a photo of a sks dog on the left on a blue background"
    assert P.PROMPTS["outline-purple"].text("sks dog") == "a photo of an outline sks dog on a purple background"
    t = P.PROMPTS["with-companion-below"].text("sks dog", "tree")
    assert t == "a photo of a sks dog at the top and a tree at the bottom"


def _scorer():
    from boothkit.bench.world_metrics import WorldCLIP, WorldScorer
    from boothkit.eval.world import class_prototypes
    from boothkit.judge import Judge
    from boothkit.pipeline import world_path

    judge = Judge.load(world_path() / "judge")
    return WorldScorer(judge, class_prototypes(judge), WorldCLIP(world_path()))


def test_metrics_on_exact_renders_and_on_wrong_ones():
    """The ceiling (exact renders) scores every asked attribute and the companion; a wrong scene fails them."""
    from boothkit.world.references import render_references, renderer
    from boothkit.world.render import SceneBatch, from_pil

    scorer = _scorer()
    subject = P.subjects(P.preset("quick"))[0]
    comp = P.companion(subject)
    refs = scorer.refs(subject, from_pil(render_references(subject, n=4, seed=0)[0]))
    for key in ("bg-blue-left", "large-green", "upside-down", "with-companion-right"):
        prompt = P.PROMPTS[key]
        img = renderer().render(SceneBatch.from_scenes([P.ceiling_scene(prompt, subject, comp)]))
        row = scorer.score(img, prompt, refs, prompt.text(subject.cls, comp.name), comp)[0]
        checks = [row[a] for a in prompt.asked()] + ([row["composition"]] if prompt.group == "composition" else [])
        assert checks and all(checks), (key, row)
        assert row["identity_acc"] == 1.0 and row["judge_i"] > 0.5
    # the same prompts drawn wrongly: another glyph, another background, no companion
    other = P.subjects(P.preset("quick"))[1]
    wrong = renderer().render(SceneBatch.from_scenes([P.ceiling_scene(P.PROMPTS["bg-red"], other)]))
    row = scorer.score(wrong, P.PROMPTS["bg-blue-left"], refs, "x", comp)[0]
    assert row["bg"] is False and row["position"] is False and row["identity_acc"] == 0.0
    row = scorer.score(wrong, P.PROMPTS["with-companion-right"], refs, "x", comp)[0]
    assert row["composition"] is False


def test_half_crops_put_each_half_on_background():
    from boothkit.bench.world_metrics import half_crops

    img = torch.ones(1, 3, 64, 64) * torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1)
    img[:, :, 28:36, 4:12] = 0.0  # a dark square on the left
    left, right = half_crops(img, "right")
    assert (left[0, :, 28:36, 20:28] == 0).all()  # moved by a quarter width, still there
    assert torch.allclose(right, torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1).expand_as(right))


def test_bootstrap_interval():
    from boothkit.bench.report import bootstrap_ci

    lo, hi = bootstrap_ci([0.1, 0.2, 0.3, 0.4, 0.5])
    assert lo < 0.3 < hi and 0.1 <= lo and hi <= 0.5
    lo2, hi2 = bootstrap_ci([0.1, 0.2, 0.3, 0.4, 0.5] * 8)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci([0.7]) == [0.7, 0.7] and bootstrap_ci([]) is None


def test_peak_memory_sees_an_allocation():
    """In a fresh process: memory freed by earlier tests stays resident and can hide a new allocation from RSS."""
    import subprocess
    import sys

    code = """
import time, torch
from boothkit.bench.cost import PeakMemory
with PeakMemory(every=0.001) as m:
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB
    x += 1
    time.sleep(0.1)  # the sampler runs every millisecond
    del x
print(m.peak_bytes - m.rss_before)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) >= 48 * 2**20


BENCH = ["bench", "--methods", "floor,ceiling,lora", "--subjects", "animal=1", "--prompts", "bare,bg-red",
         "--seeds", "0", "--sample-steps", "2", "--steps", "2", "--set", "lora.checkpoint_every=0", "--threads", "1",
         "--no-progress"]


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    from boothkit.cli.main import app

    out = tmp_path_factory.mktemp("bench") / "run"
    r = CliRunner().invoke(app, BENCH + ["--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "training:" not in r.output and "bench:" not in r.output  # --no-progress: not even the training loop's bar
    return out


def test_world_bench_outputs(world_run):
    res = json.loads((world_run / "results.json").read_text())
    assert res["schema_version"] == 1 and res["complete"]
    assert set(res["methods"]) == {"floor", "ceiling", "lora"}
    for name in ("floor", "lora"):
        m = res["methods"][name]
        for k in ("identity", "identity_acc", "prompt_fidelity", "time_to_first_image_s", "seconds_per_image",
                  "peak_memory_bytes", "artifact_bytes"):
            assert m[k] is not None, (name, k)
        assert m["identity_ci95"][0] <= m["identity"] <= m["identity_ci95"][1]
    assert res["methods"]["lora"]["artifact_bytes"] > 0 and res["methods"]["lora"]["personalise_s"] > 0
    assert res["methods"]["ceiling"]["identity_acc"] == 1.0 and res["methods"]["ceiling"]["prompt_fidelity"] == 1.0
    md = (world_run / "results.md").read_text()
    assert "| lora |" in md and "Command: `boothkit bench" in md
    for f in ("identity_vs_fidelity.png", "time_to_first_image.png", "grids/rat.png"):
        assert (world_run / f).stat().st_size > 1000, f
    rec = json.loads((world_run / "units" / "lora" / "rat.json").read_text())
    assert [r["text"] for r in rec["images"]] == ["a photo of sks animal", "a photo of a sks animal on a red background"]
    assert not (world_run / "work" / "concepts" / "lora" / "rat").exists()  # concept folders are not kept


def test_world_bench_resumes_and_refuses_another_protocol(world_run, monkeypatch):
    from boothkit.bench import run as run_mod
    from boothkit.cli.main import app

    floor = world_run / "units" / "floor" / "rat.json"
    before = floor.read_text()
    stamp = floor.stat().st_mtime_ns
    (world_run / "units" / "lora" / "rat.json").unlink()  # as if killed while lora ran
    calls = []
    real = run_mod.run_unit
    monkeypatch.setattr(run_mod, "run_unit", lambda method, *a, **k: (calls.append(method), real(method, *a, **k))[1])
    r = CliRunner().invoke(app, BENCH + ["--out", str(world_run)])
    assert r.exit_code == 0, r.output
    assert calls == ["lora"] and floor.stat().st_mtime_ns == stamp and floor.read_text() == before
    r = CliRunner().invoke(app, [x if x != "0" else "1" for x in BENCH] + ["--out", str(world_run)])
    assert r.exit_code == 2 and "another protocol" in r.output
    r = CliRunner().invoke(app, BENCH + ["--set", "lora.rank=2", "--out", str(world_run)])
    assert r.exit_code == 2 and "another recipe" in r.output
    state = (world_run / "bench.json").read_text()
    (world_run / "units" / "lora").rename(world_run / "lora.bak")  # no unit of the old recipe left: accepted
    try:
        r = CliRunner().invoke(app, BENCH + ["--set", "lora.rank=2", "--report-only", "--out", str(world_run)])
        assert r.exit_code == 0, r.output
        assert json.loads((world_run / "bench.json").read_text())["recipes"]["lora"]["rank"] == 2
    finally:
        shutil.rmtree(world_run / "units" / "lora", ignore_errors=True)
        (world_run / "lora.bak").rename(world_run / "units" / "lora")
        (world_run / "bench.json").write_text(state)
    (world_run / "results.md").unlink()
    monkeypatch.setattr(run_mod, "run_unit", lambda *a, **k: pytest.fail("--report-only ran a unit"))
    (world_run / "units" / "floor" / "rat.json").rename(world_run / "rat.json.bak")  # a missing unit is not run
    try:
        r = CliRunner().invoke(app, BENCH + ["--report-only", "--out", str(world_run)])
    finally:
        (world_run / "rat.json.bak").rename(world_run / "units" / "floor" / "rat.json")
    assert r.exit_code == 0, r.output
    assert "| lora |" in (world_run / "results.md").read_text() and "| floor" not in (world_run / "results.md").read_text()
    bench = json.loads((world_run / "bench.json").read_text())
    assert len(bench["commands"]) == 1  # --report-only adds no command


def test_floor_is_deterministic(world_run, tmp_path):
    from boothkit.cli.main import app

    args = [x if x != "floor,ceiling,lora" else "floor" for x in BENCH]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    a = json.loads((world_run / "units" / "floor" / "rat.json").read_text())["images"]
    b = json.loads((tmp_path / "again" / "units" / "floor" / "rat.json").read_text())["images"]
    assert a == b


def test_bench_bad_arguments(tmp_path):
    from boothkit.cli.main import app

    r = CliRunner().invoke(app, ["bench", "--methods", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown method" in r.output
    r = CliRunner().invoke(app, ["bench", "--quick", "--full", "--out", str(tmp_path / "y")])
    assert r.exit_code != 0
    r = CliRunner().invoke(app, ["bench", "--dreambench", str(tmp_path), "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--clip" in r.output


# ---- the real-model path, with tiny random models -------------------------------------------------------------

def _tiny_metric_models(folder: Path) -> tuple[str, str]:
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer, ViTConfig,
                              ViTImageProcessor, ViTModel)

    from boothkit.pipeline import world_path

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16))
    clip.save_pretrained(folder / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))).save_pretrained(folder / "clip")
    dino = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=37), add_pooling_layer=False)
    dino.save_pretrained(folder / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "dino")
    return str(folder / "clip"), str(folder / "dino")


def test_dreambench_prompts_file_parses():
    from boothkit.bench.dreambench import parse_prompts_file

    shared = Path("/work/shared/dreambench/prompts_and_classes.txt")
    if not shared.exists():
        shared = Path(__file__).resolve().parents[2] / "shared" / "dreambench" / "prompts_and_classes.txt"
    if not shared.exists():
        pytest.skip("DreamBench prompt list not available")
    classes, objs, live = parse_prompts_file(shared)
    assert len(classes) == 30 and classes["dog"] == "dog" and classes["bear_plushie"] == "stuffed animal"
    assert len(objs) == 25 and len(live) == 25
    assert objs[0].format("sks", "backpack") == "a sks backpack in the jungle"


@pytest.mark.parametrize("base", ["tiny_model", "tiny_sdxl"])
def test_dreambench_with_tiny_models(tmp_path, base, request, subject_photos, second_subject_photos):
    """The real-model protocol on an SD-shaped and an SDXL-shaped base model."""
    from boothkit.cli.main import app

    tiny_model = request.getfixturevalue(base)

    data = tmp_path / "db"
    shutil.copytree(subject_photos, data / "dog")
    shutil.copytree(second_subject_photos, data / "teapot")
    lines = ["Classes", "", "subject_name,class", "dog,dog", "teapot,teapot", "", "Object Prompts", "prompt_list = ["]
    lines += [f"'a {{0}} {{1}} {w}'.format(unique_token, class_token)," for w in ("in the jungle", "in the snow")]
    lines += ["]", "", "Live Subject Prompts", "prompt_list = ["]
    lines += [f"'a {{0}} {{1}} {w}'.format(unique_token, class_token)," for w in ("on the beach", "wearing a hat")]
    lines += ["]"]
    (data / "prompts_and_classes.txt").write_text("\n".join(lines))
    clip, dino = _tiny_metric_models(tmp_path / "metrics")
    out = tmp_path / "out"
    args = ["bench", "--dreambench", str(data), "--clip", clip, "--dino", dino, "--model", tiny_model,
            "--methods", "floor,lora", "--steps", "2", "--sample-steps", "2", "--set", "lora.checkpoint_every=0",
            "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["clip"]["model"] == clip and res["protocol"]["clip"]["hash"]
    assert res["protocol"]["family"] == ("sdxl" if base == "tiny_sdxl" else "sd")
    assert set(res["methods"]) == {"ceiling", "floor", "lora"} and res["methods"]["lora"]["n_subjects"] == 2
    for m in ("floor", "lora"):
        for k in ("dino", "clip_i", "clip_t", "time_to_first_image_s", "seconds_per_image"):
            assert res["methods"][m][k] is not None, (m, k)
    assert -1 <= res["methods"]["lora"]["dino"] <= 1
    rec = json.loads((out / "units" / "lora" / "dog.json").read_text())
    assert [r["prompt"] for r in rec["images"]] == ["a sks dog on the beach", "a sks dog wearing a hat"]  # live list
    rec = json.loads((out / "units" / "floor" / "teapot.json").read_text())
    assert rec["images"][0]["prompt"] == "a teapot in the jungle"
    assert "| lora |" in (out / "results.md").read_text()


def test_units_are_claimed_by_one_process(tmp_path):
    import subprocess
    import sys

    from boothkit.bench.run import claim

    unit = tmp_path / "units" / "lora" / "rat.json"
    lock = claim(unit)
    assert lock is not None and lock.read_text() == str(os.getpid())
    other = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(other.stdout.strip())  # a process that has exited: a stale lock is taken over
    assert claim(unit) is not None
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(live.pid))
        assert claim(unit) is None  # a live process holds it
    finally:
        live.kill()
        live.wait()


def test_world_bench_with_captions_trains_on_the_scene_captions(tmp_path):
    from boothkit.cli.main import app

    out = tmp_path / "cap"
    args = [a for a in BENCH if a not in ("floor,ceiling,lora",)]
    args[args.index("--methods") + 1:args.index("--methods") + 1] = ["floor,lora"]
    r = CliRunner().invoke(app, args + ["--captions", "--keep-concepts", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "bench.json").read_text())["protocol"]["captions"] is True
    meta = json.loads((out / "work" / "concepts" / "lora" / "rat" / "concept.json").read_text())
    caps = meta["captions"][0]
    assert len(caps) == 4 and all(" sks animal " in c and "background" in c for c in caps) and len(set(caps)) > 1
    photos = out / "work" / "photos-captioned" / "lora" / "rat"
    assert sorted(p.read_text().strip() for p in photos.glob("*.txt")) == sorted(caps)
    r = CliRunner().invoke(app, args + ["--out", str(out)])  # the same run without captions: another protocol
    assert r.exit_code == 2 and "another protocol" in r.output
