"""Custom Diffusion: K/V processors + modifier tokens, joint multi-concept training, closed-form merge."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from boothkit.methods import apply_concepts, tune
from boothkit.pipeline import load_pipeline

from conftest import FAST_PRIOR, max_pixel_diff, plain_pipeline, sample, validation_image


@pytest.fixture(scope="module")
def rat(tmp_path_factory, tiny_model, subject_photos):
    return tune("custom", subject_photos, "animal", tmp_path_factory.mktemp("cd") / "rat", model=tiny_model,
                steps=3, config={**FAST_PRIOR, "random_resize": True})  # the augmentation + masked loss path


@pytest.fixture(scope="module")
def food(tmp_path_factory, tiny_model, second_subject_photos):
    return tune("custom", second_subject_photos, "food", tmp_path_factory.mktemp("cd") / "food", model=tiny_model,
                steps=3, config={**FAST_PRIOR, "seed": 1})


def _stock_load(pipe, folder, tokens):
    """Diffusers alone: its own Custom Diffusion parser for the weights, load_textual_inversion for the tokens."""
    procs = dict(pipe.unet.attn_processors)
    procs.update(pipe.unet._process_custom_diffusion(load_file(str(folder /
                                                                    "pytorch_custom_diffusion_weights.safetensors"))))
    pipe.unet.set_attn_processor(procs)
    for t in tokens:
        pipe.load_textual_inversion(str(folder), weight_name=f"{t}.safetensors")
    return pipe


def test_files(rat):
    names = sorted(p.name for p in rat.iterdir())
    assert names == ["<new1>.safetensors", "concept.json", "pytorch_custom_diffusion_weights.safetensors",
                     "train_log.jsonl", "validation"]
    w = load_file(str(rat / "pytorch_custom_diffusion_weights.safetensors"))
    assert w and all(k.endswith(("to_k_custom_diffusion.weight", "to_v_custom_diffusion.weight")) for k in w)
    assert all(".attn2.processor." in k for k in w)
    assert load_file(str(rat / "<new1>.safetensors"))["<new1>"].shape == (1, 32)


def test_diffusers_alone_reproduces_the_trained_model(rat, tiny_model):
    stock = sample(_stock_load(plain_pipeline(tiny_model), rat, ["<new1>"]), "a photo of <new1> animal")
    assert max_pixel_diff(stock, validation_image(rat)) <= 1
    ours = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [rat])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, "a photo of <new1> animal"), stock) <= 1


def test_fresh_processors_are_a_no_op(tiny_model):
    from boothkit.methods.custom.model import install_processors

    pipe = load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = pipe.unet(x, t, c).sample
        install_processors(pipe.unet, train_q_out=True)
        after = pipe.unet(x, t, c).sample
    assert torch.allclose(before, after, atol=1e-6)


def test_joint_training_of_two_concepts(tmp_path, tiny_model, subject_photos, second_subject_photos):
    out = tune("custom", subject_photos, "animal", tmp_path / "both", model=tiny_model, steps=2,
               config=FAST_PRIOR, subjects=[(second_subject_photos, "food")])
    meta = json.loads((out / "concept.json").read_text())
    assert meta["tokens"] == ["<new1>", "<new2>"] and meta["classes"] == ["animal", "food"]
    assert (out / "<new2>.safetensors").is_file()
    pipe = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [out])
    assert sample(pipe, "a photo of <new1> animal and <new2> food").size == (64, 64)


def test_two_separate_concepts_need_a_merge(rat, food, tiny_model):
    with pytest.raises(ValueError, match="boothkit merge"):
        apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [rat, food])


def test_merge_reproduces_each_concept_on_its_own_tokens(rat, food, tiny_model, tmp_path):
    from boothkit.methods.custom.merge import _features, merge_concepts
    from boothkit.methods.custom.model import cross_attention_layers

    out, meta = merge_concepts([rat, food], tmp_path / "merged", model=tiny_model)
    assert meta["tokens"] == ["<new1>", "<new2>"]
    assert sorted(p.name for p in out.iterdir()) == ["<new1>.safetensors", "<new2>.safetensors", "concept.json",
                                                      "pytorch_custom_diffusion_weights.safetensors"]
    merged = load_file(str(out / "pytorch_custom_diffusion_weights.safetensors"))
    pipe = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [out])
    tok, te = pipe.tokenizer, pipe.text_encoder
    name = next(iter(cross_attention_layers(pipe.unet)))
    key = f"{name}.to_k_custom_diffusion.weight"
    for folder, token, cls in ((rat, "<new1>", "animal"), (food, "<new2>", "food")):
        c = _features(tok, te, [f"a photo of {token} {cls}"], from_token=token).float()  # [k, D]
        own = load_file(str(folder / "pytorch_custom_diffusion_weights.safetensors"))[key]
        assert torch.allclose(c @ merged[key].T, c @ own.T, atol=1e-3, rtol=1e-3)
    # ordinary text stays close to the base weights
    base = pipe.unet.get_submodule(name[: -len(".processor")]).to_k.weight.detach()
    c = _features(tok, te, ["a photo of a dog on a red background"]).float()
    assert (c @ (merged[key] - base).T).norm() < (c @ base.T).norm() * 0.5
    assert sample(pipe, "a photo of <new1> animal and <new2> food").size == (64, 64)


def _merge_cli(*args):
    from typer.testing import CliRunner

    from boothkit.cli.main import app

    return CliRunner().invoke(app, ["merge", *map(str, args)])


def test_cli_merge_takes_the_users_regularisation_captions(rat, food, tiny_model, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a dog on the grass\n\n  a red car in the street  \na bowl of soup\n")
    r = _merge_cli(rat, food, "--out", tmp_path / "m", "--model", tiny_model, "--reg-captions", captions)
    assert r.exit_code == 0, r.output
    assert f"regularisation captions: 3 read from {captions}" in r.output and "warning" not in r.output
    reg = json.loads((tmp_path / "m/concept.json").read_text())["config"]["regularisation_captions"]
    assert reg["count"] == 3 and reg["source"] == f"file: {captions}"
    # other captions, other weights: the captions were used
    r = _merge_cli(rat, food, "--out", tmp_path / "t", "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert "warning: merge: no regularisation captions given; using 20 generic templates" in r.output
    assert "about 200 real captions" in r.output
    meta = json.loads((tmp_path / "t/concept.json").read_text())
    assert meta["config"]["regularisation_captions"]["source"] == "templates"
    assert meta["config"]["regularisation_captions"]["count"] == 20
    key = "pytorch_custom_diffusion_weights.safetensors"
    a, b = load_file(str(tmp_path / "m" / key)), load_file(str(tmp_path / "t" / key))
    assert any(not torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("content,words", [(None, "no such file"), ("\n  \n", "no captions in it"),
                                           (b"\xff\xfe caption", "not UTF-8")])
def test_cli_merge_refuses_bad_caption_files_and_writes_nothing(rat, food, tiny_model, tmp_path, content, words):
    captions = tmp_path / "captions.txt"
    if isinstance(content, bytes):
        captions.write_bytes(content)
    elif content is not None:
        captions.write_text(content)
    r = _merge_cli(rat, food, "--out", tmp_path / "m", "--model", tiny_model, "--reg-captions", captions)
    assert r.exit_code == 2 and f"--reg-captions {captions}: {words}" in r.output
    assert not (tmp_path / "m").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_merge_on_the_world_model_defaults_to_the_worlds_captions(tmp_path, subject_photos):
    import shutil

    from boothkit.world.regularisation import regularisation_captions

    one = tune("custom", subject_photos, "animal", tmp_path / "a", model="world", steps=1,
               config={"validation_images": 0, "checkpoint_every": 0, "prior_preservation": False, "batch_size": 1})
    two = shutil.copytree(one, tmp_path / "b")  # a second concept folder (same weights: enough for the plumbing)
    r = _merge_cli(one, two, "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    n = len(regularisation_captions(["animal", "animal"]))
    assert f"regularisation captions: the world model's {n} scene captions" in r.output and "warning" not in r.output
    reg = json.loads((tmp_path / "m/concept.json").read_text())["config"]["regularisation_captions"]
    assert reg["count"] == n and reg["source"] == "world"


def test_custom_diffusion_code_does_not_import_the_world():
    """The world is one data source among others: Custom Diffusion, TI and the export take nothing from it."""
    import ast
    from pathlib import Path

    import boothkit.methods as methods

    root = Path(methods.__file__).parent
    for f in [*(root / "custom").glob("*.py"), *(root / "ti").glob("*.py"), root / "webui.py"]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "world" not in (node.module or ""), f"{f.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any("world" in a.name for a in node.names), f.name
