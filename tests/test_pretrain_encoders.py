"""Encoders that train on real data (issue 15) and on SDXL (issue 16's E4T): InstantBooth and E4T pretrain on a small
real-photo dataset (DreamBench dogs and cats with captions, a mask file, a bbox row and hostile files:
tests/test_data_support.py) for the tiny random SD / SDXL pipelines of conftest with the world's vision tower as a
separate --image-encoder, through boothkit.pretrain.encoders and the shared training loop.

Shown: the CLI run and what it counts; the fixed held-out loss falls; a resumed run is bit-identical (0 or 2 loader
workers); the artifact loads in `generate --instant` and the app, and refuses another base model, family or vision
tower with the reason; E4T pretrains on the same data and its encoder tunes in 5 steps; both on SDXL, where E4T's
concept (two embedding files + a LoRA) draws the same pixels through diffusers' stock loaders; 2 processes on gloo
end with the same weights having seen disjoint records; bad data fails before any model loads; masks for reference
photos (alpha, segmenter, flat background, else the whole photo); and no method imports the world."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from boothkit.cli.main import app
from boothkit.inputs import InputError
from boothkit.pipeline import load_pipeline, world_path
from boothkit.pretrain.encoders import pretrain_encoder
from conftest import FAST, max_pixel_diff, plain_sdxl, sample, validation_image
from test_data_support import GOOD, build_tiny_clipseg, items, write_imagefolder, write_kohya

CLASS = "pet"
TOWER = str(world_path() / "image_encoder")  #: a real CLIPVisionModelWithProjection folder, separate from the models
#: a few steps that move the tiny models: the heads, adapters and gates at 1e-2; the loader in the training process
QUICK = {"steps": 4, "batch_size": 2, "heldout": 3, "workers": 0, "resolution": 64, "lr": 1e-2, "lr_adapters": 1e-2,
         "checkpoint_every": 2, "validate_every": 0, "validation_images": 0}
E4T_QUICK = {k: v for k, v in QUICK.items() if k != "lr_adapters"}  #: E4T has no adapters


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """The real-photo dataset in the kohya layout (no masks) and the imagefolder layout (a mask file, a bbox)."""
    base = tmp_path_factory.mktemp("real-data")
    return {"kohya": str(write_kohya(base / "kohya")), "imagefolder": str(write_imagefolder(base / "imagefolder"))}


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ib_artifact(data, tiny_model, tmp_path_factory):
    """`boothkit pretrain instantbooth` on the kohya folder: (artifact folder, the printed summary, stderr)."""
    out = tmp_path_factory.mktemp("ib-real") / "ib-pet"
    r = _cli("pretrain", "instantbooth", "--data", data["kohya"], "--class", CLASS, "--model", tiny_model,
             "--image-encoder", TOWER, "--out", out, "--steps", 3, "--batch", 2, "--resolution", 64,
             "--set", "workers=0", "--set", "heldout=3", "--set", "lr=1e-2", "--set", "lr_adapters=1e-2",
             "--set", "save_every=2", "--set", "validation_steps=2")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout[r.stdout.index("{"):]), r.stderr


def test_instantbooth_pretrains_on_a_real_photo_folder(ib_artifact, tiny_model):
    from boothkit.pipeline import image_encoder_hash, model_hash

    out, summary, stderr = ib_artifact
    assert sorted(p.name for p in out.iterdir()) == ["instantbooth.json", "instantbooth.safetensors"]
    d = summary["data"]
    assert (d["kind"], d["read"], d["usable"]) == ("folder", 14, 12)
    assert d["skipped_at_scan"] == {"no_caption": 1, "no_class_noun": 1}  # counted, never fatal
    assert set(d["skipped_in_training"]) <= {"unreadable", "blank"} and d["skipped_in_training"]  # hostile files
    for name in ("truncated.jpg", "empty.jpg", "notimage.png"):  # each named once, on one line
        lines = [x for x in stderr.splitlines() if name in x]
        assert len(lines) <= 1 and all(x.startswith("warning: skipped (unreadable)") for x in lines)
    meta = json.loads((out / "instantbooth.json").read_text())
    assert meta["base_model"] == tiny_model and meta["model_hash"] == model_hash(tiny_model)
    assert meta["family"] == "sd" and meta["class"] == CLASS and meta["trained"]
    assert meta["image_encoder"] == {"source": str(Path(TOWER).resolve()), "hash": image_encoder_hash(TOWER),
                                     "class": "CLIPVisionModelWithProjection"}
    assert meta["preprocessing"]["image_size"] == 64 and meta["pretrain"]["config"]["steps"] == 3
    log = [json.loads(x) for x in (out.parent / "ib-pet.work" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3] and "skipped_records" in log[-2]
    from boothkit.methods.instantbooth import artifact  # save_every: the encoder as it was after step 2

    grids = sorted(p.name for p in (out.parent / "ib-pet.work" / "validation").iterdir())
    assert grids == ["step-00003.png", "step-00003.txt"]  # the held-out records: references and drawings
    snap = out.parent / "ib-pet.work" / "snapshots" / "ib-pet-step-000002"
    assert artifact.read_meta(snap)["pretrain"]["steps"] == 2 and artifact.load(snap)[0] is not None


def test_the_held_out_loss_falls_and_a_resumed_run_is_bit_identical(data, tiny_model, tmp_path):
    """8 steps at once (loader in the training process) against 4 steps, killed, resumed to 8 (2 loader workers):
    the same weights bit for bit; the held-out loss (fixed records, fixed noise) is lower at the end."""
    settings = {**QUICK, "steps": 8}

    def run(out, **kw):
        return pretrain_encoder("instantbooth", out, data=data["kohya"], class_noun=CLASS, model=tiny_model,
                                image_encoder=TOWER, settings=settings, **kw)

    full = run(tmp_path / "full")
    first, last = full["heldout_loss"]["first"], full["heldout_loss"]["last"]
    assert full["heldout_loss"]["records"] >= 2 and last < first - 1e-3, (first, last)

    class Stop(Exception):
        pass

    def stop_at_4(step, loss):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path / "again", on_step=stop_at_4)
    assert not (tmp_path / "again").exists()  # nothing written by a run that failed
    settings = {**settings, "workers": 2, "timeout": 60.0}
    resumed = run(tmp_path / "again", resume=True)
    assert resumed["first_step"] == 4 and not multiprocessing.active_children(), "loader workers still running"
    a, b = (load_file(str(tmp_path / n / "instantbooth.safetensors")) for n in ("full", "again"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_keeps_the_weights_and_bf16_trains(data, tiny_model, tmp_path):
    """The training core's memory options on the pretraining recipes: recomputing the UNet's activations (with the
    adapters' hooks inside the recomputed blocks) gives the same weights up to float rounding; bf16 autocast runs."""
    from accelerate.state import AcceleratorState

    weights = {}
    for name, extra in (("plain", {}), ("gc", {"gradient_checkpointing": True}), ("bf16", {"mixed_precision": "bf16"})):
        AcceleratorState._reset_state()  # one process keeps one precision: as a new run would start
        try:
            summary = pretrain_encoder("instantbooth", tmp_path / name, data=data["kohya"], class_noun=CLASS,
                                       model=tiny_model, image_encoder=TOWER, settings={**QUICK, "steps": 2, **extra})
        finally:
            AcceleratorState._reset_state()
        assert np.isfinite(summary["final_loss"])
        weights[name] = load_file(str(tmp_path / name / "instantbooth.safetensors"))
    for k, v in weights["plain"].items():
        assert torch.allclose(weights["gc"][k], v, atol=1e-5), k
        assert weights["bf16"][k].dtype == torch.float32  # trained in fp32, computed in bf16
    assert any(not torch.equal(weights["bf16"][k], v) for k, v in weights["plain"].items())


def _other_tower(folder: Path) -> str:
    """A random CLIPVisionModelWithProjection with the world tower's shapes (so only its weights differ)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(TOWER)).save_pretrained(str(folder))
    return str(folder)


def test_generate_instant_loads_the_artifact_and_refuses_other_bases(ib_artifact, tiny_model, other_tiny_model,
                                                                       tiny_sdxl, real_photos, tmp_path):
    out = ib_artifact[0]
    seg = build_tiny_clipseg(tmp_path / "clipseg", bias=5.0)  # finds the subject everywhere: the whole photo
    gen = tmp_path / "gen"
    # the tiny model has no image_encoder: the one the artifact names is loaded beside it
    r = _cli("generate", f"a photo of sks {CLASS}", "--instant", out, "--images", real_photos / "dog", "--model",
             tiny_model, "-n", 1, "--steps", 2, "--out", gen, "--segmenter", seg)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in gen.iterdir()) == ["grid.png", "image-000.png"]
    refusals = [(("--model", other_tiny_model), "was trained on base model .* but this pipeline's base model has"),
                (("--model", tiny_model, "--image-encoder", _other_tower(tmp_path / "tower")),
                 "was trained with the image encoder .* pass --image-encoder"),
                (("--model", tiny_sdxl, "--image-encoder", TOWER), "trained for a Stable Diffusion 1.x/2.x base model")]
    for args, why in refusals:
        no = tmp_path / "no"
        r = _cli("generate", f"a photo of sks {CLASS}", "--instant", out, "--images", real_photos / "dog", "-n", 1,
                 "--steps", 2, "--out", no, *args)
        assert r.exit_code == 2 and re.search(why, " ".join(r.output.split())), r.output
        assert not no.exists()


def test_the_artifact_works_in_the_app(ib_artifact, tiny_model, real_photos, tmp_path):
    """An app on the tiny model (no image_encoder): a concept made with the pretrained artifact, then drawn."""
    from boothkit.app.registry import registered_methods
    from boothkit.app.server import AppConfig
    from test_app_support import ServerThread, http, upload, wait_job

    photos = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted((real_photos / "dog").iterdir())[:2]]
    cfg = AppConfig(data=tmp_path / "data", model=tiny_model, preload=False,
                    methods={"instantbooth": registered_methods()["instantbooth"]})
    with ServerThread(cfg) as s:
        r = upload(s.url, {"name": "rex", "class_noun": CLASS, "method": "instantbooth",
                           "config": json.dumps({"encoder": str(ib_artifact[0])})}, photos)
        assert r.status == 202, r
        job = wait_job(s.url, r.json()["job"]["id"], timeout=300)
        assert job["status"] == "done", job
        g = http("POST", s.url + "/api/generate", json_body={"prompt": "a photo of <rex>", "steps": 2, "seed": 0})
        assert g.status == 200, g
        assert g.json()["images"][0]["model_prompt"] == f"a photo of sks {CLASS}"


def test_e4t_pretrains_on_the_same_photos_and_its_encoder_tunes_in_5_steps(data, tiny_model, other_tiny_model,
                                                                          real_photos, tmp_path):
    from boothkit.methods import METHODS, apply_concepts, tune

    enc = tmp_path / "e4t-pet"
    summary = pretrain_encoder("e4t", enc, data=data["imagefolder"], class_noun=CLASS, model=tiny_model,
                               image_encoder=TOWER, settings={**E4T_QUICK, "steps": 3, "frame": True})
    assert summary["data"]["kind"] == "imagefolder" and summary["data"]["usable"] == 12
    meta = json.loads((enc / "e4t_encoder.json").read_text())
    assert meta["class"] == CLASS and meta["preprocessing"]["frame"] and meta["image_encoder"]["hash"]
    concept = tune("e4t", real_photos / "dog", CLASS, tmp_path / "rex", model=tiny_model,
                   config={**FAST, "encoder": str(enc)})  # the tower: the one the encoder names
    info = json.loads((concept / "concept.json").read_text())
    assert info["training"]["steps"] == METHODS["e4t"].config().steps == 5 and info["e4t"]["encoder_class"] == CLASS
    assert sorted(p.name for p in concept.glob("*.safetensors")) == ["learned_embeds.safetensors",
                                                                    "pytorch_lora_weights.safetensors"]
    pipe = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [concept])
    pipe.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(pipe, f"a photo of sks {CLASS}"), validation_image(concept)) <= 1
    with pytest.raises(InputError, match="was trained on base model"):
        tune("e4t", real_photos / "dog", CLASS, tmp_path / "no", model=other_tiny_model,
             config={**FAST, "encoder": str(enc)})
    assert not (tmp_path / "no").exists()


def test_instantbooth_pretrains_on_sdxl_and_draws(data, tiny_sdxl, real_photos, tmp_path):
    from boothkit.generate import GenerateConfig
    from boothkit.methods.instantbooth import generate_instant

    out = tmp_path / "ib-xl"
    summary = pretrain_encoder("instantbooth", out, data=data["kohya"], class_noun=CLASS, model=tiny_sdxl,
                               image_encoder=TOWER, settings={**QUICK, "steps": 2})
    assert summary["family"] == "sdxl"
    meta = json.loads((out / "instantbooth.json").read_text())
    assert meta["family"] == "sdxl" and meta["dims"]["text_dim"] == 64  # both encoders' widths
    prompt = f"a photo of sks {CLASS}"
    pipe = load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False, image_encoder=TOWER)
    pipe.set_progress_bar_config(disable=True)
    ours = generate_instant(pipe, out, real_photos / "dog", prompt, GenerateConfig(n=1, steps=2))[0]
    # diffusers alone (+ install_instantbooth): the same pixels
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPVisionModelWithProjection

    from boothkit.inputs import load_subject_images
    from boothkit.methods.instantbooth import install_instantbooth

    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl,
                                                      image_encoder=CLIPVisionModelWithProjection.from_pretrained(TOWER))
    plain.set_progress_bar_config(disable=True)
    ib = install_instantbooth(plain, out)
    ib.set_images(load_subject_images(real_photos / "dog"), class_noun=CLASS)
    theirs = plain(**ib.pipe_kwargs(prompt), num_inference_steps=2, guidance_scale=5.0,
                   generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert max_pixel_diff(ours, theirs) == 0
    ib.remove()
    assert max_pixel_diff(ours, plain(prompt, num_inference_steps=2, guidance_scale=5.0,
                                      generator=torch.Generator("cpu").manual_seed(0)).images[0]) > 0


@pytest.fixture(scope="module")
def e4t_xl(data, tiny_sdxl, real_photos, tmp_path_factory):
    """E4T pretrained on the tiny SDXL (2 steps), then a concept tuned with it (5 steps, one validation image)."""
    from boothkit.methods import tune

    base = tmp_path_factory.mktemp("e4t-xl")
    pretrain_encoder("e4t", base / "enc", data=data["kohya"], class_noun=CLASS, model=tiny_sdxl, image_encoder=TOWER,
                     settings={**E4T_QUICK, "steps": 2})
    return tune("e4t", real_photos / "dog", CLASS, base / "rex", model=tiny_sdxl,
                config={**FAST, "encoder": str(base / "enc"), "lr": 1e-2})


def test_e4t_on_sdxl_the_word_in_both_encoders_and_the_stock_loaders_draw_the_same(e4t_xl, tiny_sdxl):
    from boothkit.methods import apply_concepts

    meta = json.loads((e4t_xl / "concept.json").read_text())
    assert meta["family"] == "sdxl" and meta["training"]["steps"] == 5
    one, two = (load_file(str(e4t_xl / f)) for f in ("learned_embeds.safetensors", "learned_embeds_2.safetensors"))
    assert list(one) == list(two) == ["sks"] and one["sks"].shape == two["sks"].shape == (1, 32)
    enc = json.loads((Path(meta["e4t"]["encoder"]) / "e4t_encoder.json").read_text())
    assert enc["dims"]["text_dims"] == [32, 32] and enc["dims"]["text_dim"] == 64  # one head, both words
    pipe = plain_sdxl(tiny_sdxl)  # diffusers alone
    for enc_name, tok, f in (("text_encoder", "tokenizer", "learned_embeds.safetensors"),
                             ("text_encoder_2", "tokenizer_2", "learned_embeds_2.safetensors")):
        pipe.load_textual_inversion(str(e4t_xl), weight_name=f, token="sks", text_encoder=getattr(pipe, enc_name),
                                    tokenizer=getattr(pipe, tok))
    pipe.load_lora_weights(str(e4t_xl), weight_name="pytorch_lora_weights.safetensors")
    stock = sample(pipe, f"a photo of sks {CLASS}")
    assert max_pixel_diff(stock, validation_image(e4t_xl)) <= 1  # what the in-memory tuned model drew
    ours = apply_concepts(load_pipeline(tiny_sdxl, device="cpu", dtype="fp32", progress=False), [e4t_xl])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, f"a photo of sks {CLASS}"), stock) == 0
    assert max_pixel_diff(sample(plain_sdxl(tiny_sdxl), f"a photo of sks {CLASS}"), stock) > 0


def test_e4t_on_sdxl_exports_for_the_webuis(e4t_xl, tmp_path):
    from boothkit.methods.webui import export_concept

    record = export_concept(e4t_xl, tmp_path / "webui", name="rex")
    assert record["files"] == ["embeddings/rex.safetensors", "lora/rex.safetensors"]
    emb = load_file(str(tmp_path / "webui/embeddings/rex.safetensors"))
    assert sorted(emb) == ["clip_g", "clip_l"] and emb["clip_l"].shape == emb["clip_g"].shape == (1, 32)


LAUNCHED = textwrap.dedent("""
    import hashlib, json, os, sys, torch
    torch.set_num_threads(1)
    import torch.distributed as dist
    import boothkit.training.loop as loop
    from boothkit.methods.instantbooth.pretrain import InstantBoothPretrain
    from boothkit.pretrain.encoders import pretrain_encoder

    seen, recipes, group = [], [], []
    loss, train = InstantBoothPretrain.loss, loop.train

    def spy(self, g, batch=None):
        seen.extend(batch["keys"])
        group.append((dist.get_world_size(), dist.get_backend()))
        return loss(self, g, batch)

    InstantBoothPretrain.loss = spy
    loop.train = lambda recipe, *a, **k: recipes.append(recipe) or train(recipe, *a, **k)
    data, out, model, tower, report = sys.argv[1:6]
    pretrain_encoder("instantbooth", out, data=data, class_noun="pet", model=model, image_encoder=tower,
                     settings={"steps": 2, "batch_size": 2, "heldout": 0, "workers": 0, "resolution": 64,
                               "lr": 1e-2, "lr_adapters": 1e-2, "validate_every": 0, "validation_images": 0})
    state = recipes[0].state_tensors()
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    with open(f"{report}-{os.environ['RANK']}.json", "w") as f:  # the process group ends with the run
        json.dump({"keys": seen, "digest": digest, "group": sorted(set(group))}, f)
""")


def test_two_processes_on_gloo_see_disjoint_records_and_end_with_the_same_weights(tmp_path, tiny_model):
    from test_training_launch import _free_port

    folder = tmp_path / "clean"
    folder.mkdir()
    for it in items():  # the good photos only: a record stood in for a bad one may be another rank's
        if it.name in GOOD:
            (folder / f"{it.name}.{it.ext}").write_bytes(it.data)
            (folder / f"{it.name}.txt").write_text(it.caption)
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    script = tmp_path / "run.py"
    script.write_text(LAUNCHED)
    out = tmp_path / "ib"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BOOTHKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                           str(script), str(folder), str(out), tiny_model, TOWER, str(tmp_path / "rank")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert a["group"] == b["group"] == [[2, "gloo"]]
    assert a["digest"] == b["digest"]  # DDP kept the ranks' weights identical
    assert len(a["keys"]) == len(b["keys"]) == 4 and not set(a["keys"]) & set(b["keys"])  # 2 steps x 2, disjoint
    assert sorted(p.name for p in out.iterdir()) == ["instantbooth.json", "instantbooth.safetensors"]
    steps = [json.loads(x).get("step") for x in (tmp_path / "ib.work" / "train_log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2]  # one log, the main process's


def test_bad_data_is_refused_before_any_model_loads(tmp_path, tiny_model, data, monkeypatch):
    import boothkit.pipeline

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(boothkit.pipeline, "load_pipeline", no_loading)
    cases = [((tmp_path / "nowhere",), CLASS, "no such file or folder"),
             ((data["kohya"],), "giraffe", "the class noun 'giraffe' is in none of the 13 captions read"),
             ((tmp_path / "empty",), CLASS, "the folder is empty")]
    (tmp_path / "empty").mkdir()
    for (spec,), noun, why in cases:
        for method in ("instantbooth", "e4t"):
            r = _cli("pretrain", method, "--data", spec, "--class", noun, "--model", tiny_model, "--out",
                     tmp_path / "out")
            assert r.exit_code == 2 and why in " ".join(r.output.split()), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no --out, no work folder
    r = _cli("pretrain", "e4t", "--class", "all", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "E4T pretrains one domain" in r.output
    r = _cli("pretrain", "instantbooth", "--class", "all", "--out", tmp_path / "out", "--set", "heldout=0")
    assert r.exit_code == 2 and "validation_images=2 draws held-out records" in r.output


def test_reference_masks_alpha_then_segmenter_then_flat_background_else_the_whole_photo(real_photos, tmp_path,
                                                                                      subject_photos):
    from boothkit.data import Segmenter
    from boothkit.data.masks import flat_background, reference_masks
    from boothkit.inputs import load_subject_images

    world = load_subject_images(subject_photos)[:2]  # renders on one flat colour
    real = load_subject_images(real_photos / "dog") + load_subject_images(real_photos / "cat")
    assert all(flat_background(p) is not None for p in world)
    assert all(flat_background(p) is None for p in real), "a real photo's background is not flat"
    m = np.asarray(flat_background(world[0]))
    px = np.asarray(world[0]).astype(int)
    bg = px[0, 0]
    assert ((np.abs(px - bg).sum(-1) > 24) <= (m > 0)).all() and 0 < (m > 0).mean() < 0.6  # the glyph, not the bg
    # a cut-out keeps its alpha through the loader: that is its mask
    cut = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    cut.paste(Image.open(real_photos / "dog" / "00.jpg").convert("RGB").resize((40, 40)), (20, 30))
    cut.save(tmp_path / "cut.png")
    (photo,) = load_subject_images(tmp_path / "cut.png")
    with pytest.warns(UserWarning, match="2 of 3 photo"):  # one warning for the photos used whole
        masks = reference_masks([photo, *real[:2]], CLASS)
    assert np.asarray(masks[0]).astype(bool).sum() == 40 * 40 and all(np.asarray(x).min() == 255 for x in masks[1:])
    # a segmenter comes before the flat-background fill (this one finds the subject everywhere)
    seg = Segmenter(build_tiny_clipseg(tmp_path / "seg", bias=5.0))
    masks = reference_masks([photo, world[0]], CLASS, seg)
    assert np.asarray(masks[0]).astype(bool).sum() == 40 * 40 and np.asarray(masks[1]).min() == 255


def test_no_method_imports_the_world():
    root = Path(__file__).resolve().parents[1] / "src" / "boothkit" / "methods"
    pattern = re.compile(r"^\s*(?:(?:from|import)\s+(?:boothkit\.|\.+)world\b|from\s+(?:boothkit|\.+)\s+import\s+[^#\n]*"
                         r"\bworld\b)", re.M)  # from ...world.x, import boothkit.world, from .. import world
    found = [f"{p.relative_to(root)}: {m.group(0).strip()}" for p in sorted(root.rglob("*.py"))
             for m in pattern.finditer(p.read_text())]
    assert not found, found
    assert "world_path" not in "".join(p.read_text() for p in root.rglob("*.py"))  # nor the world's folder
