"""E4T: a fresh encoder and fresh weight offsets are an exact identity, the penalties are what the paper says,
pretraining never sees held-out subjects and resumes bit for bit, tuning with the default steps writes a concept
that stock diffusers loaders reproduce, and bad arguments fail before anything is written. World model, CPU."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from boothkit.inputs import InputError
from boothkit.methods import METHODS, apply_concepts, tune
from boothkit.methods.e4t import E4TConfig, EncoderConfig, PretrainConfig
from boothkit.methods.e4t import artifact
from boothkit.methods.e4t.modules import (DomainEncoder, WordInjector, add_weight_offsets, embedding_l2,
                                          encoder_dims, weight_offset_l2)
from boothkit.methods.e4t.pretrain import ScenePairs, pretrain_e4t
from boothkit.pipeline import load_pipeline, world_path

from conftest import FAST, _reference_folder, max_pixel_diff, plain_pipeline, sample, validation_image

PROMPT = "a photo of sks person"
TINY = PretrainConfig(cls="person", steps=3, batch_size=2, checkpoint_every=2, val_batches=1)


@pytest.fixture(scope="module")
def person_photo(tmp_path_factory):
    """ONE reference render of the first held-out person (E4T tunes from a single image)."""
    return _reference_folder(tmp_path_factory, "e4t-photo", "person", "person", 1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 3-step pretraining run: (encoder folder, summary)."""
    out = tmp_path_factory.mktemp("e4t") / "enc"
    return out, pretrain_e4t(out, TINY, progress=False)


@pytest.fixture(scope="module")
def concept(tmp_path_factory, person_photo, pretrained):
    """`tune` with the default steps: the shipped person encoder when there is one, else the 3-step one."""
    cfg = dict(FAST)
    if not artifact.is_encoder(artifact.default_encoder("person")):
        cfg["encoder"] = str(pretrained[0])
    return tune("e4t", person_photo, "person", tmp_path_factory.mktemp("e4t-concept") / "golfer", config=cfg)


def test_fresh_encoder_and_weight_offsets_are_an_exact_identity():
    pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    dims = encoder_dims(pipe)
    enc = DomainEncoder(EncoderConfig(), dims)
    feats = torch.randn(3, dims["vision_embed"] + dims["vision_hidden"])
    assert torch.equal(enc(feats), torch.zeros(3, dims["text_dim"]))  # zero offset: the word is the class word
    # the injected class word gives exactly what "person" in that place gives
    tok, te = pipe.tokenizer, pipe.text_encoder
    tok.add_tokens(["sks"])  # shadows the vocabulary's "sks</w>", as tuning does
    te.resize_token_embeddings(len(tok))
    person = te.get_input_embeddings().weight[tok.encode("person", add_special_tokens=False)[0]].detach()
    inj = WordInjector(te, tok.convert_tokens_to_ids("sks"))
    inj.set(person + enc(feats[:1])[0])
    ids = lambda p: tok([p], padding="max_length", max_length=77, return_tensors="pt").input_ids  # noqa: E731
    with torch.no_grad():
        assert torch.equal(te(ids(PROMPT))[0], te(ids("a photo of person person"))[0])
    inj.remove()
    # weight offsets: B = 0, so the UNet is unchanged bit for bit, and the penalty is zero
    x, t, h = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 128)
    with torch.no_grad():
        before = pipe.unet(x, t, h).sample
        add_weight_offsets(pipe.unet, EncoderConfig(rank=2, alpha=4.0))
        assert torch.equal(pipe.unet(x, t, h).sample, before)
        assert float(weight_offset_l2(pipe.unet)) == 0.0
        # the penalty is sum ||alpha / rank * B A||_F^2 over the adapted q/k/v layers
        want, n = 0.0, 0
        for name, m in pipe.unet.named_modules():
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                m.lora_B["default"].weight.normal_()
                want += float(((4.0 / 2) * m.lora_B["default"].weight @ m.lora_A["default"].weight).pow(2).sum())
                n += 1
                assert name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
        assert n == 3 * 22  # every self- and cross-attention layer
        assert abs(float(weight_offset_l2(pipe.unet)) - want) < 1e-3 * want
        assert not torch.equal(pipe.unet(x, t, h).sample, before)
    off = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert float(embedding_l2(off)) == (25 + 1) / 2  # ||s E(x)||^2, mean over subjects


def test_pretraining_draws_only_train_concepts_of_the_class():
    from boothkit.world.concepts import all_concepts

    cs = all_concepts()
    data = ScenePairs("person", 8, 0)
    a, b = data.make(5), data.make(5)
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["condition"], b["condition"])
    assert a["captions"] == b["captions"] and all("<e4t> person" in c for c in a["captions"])
    seen = [i for step in range(40) for i in data.make(step)["concepts"]]
    assert all(cs[i].cls == "person" and not cs[i].heldout for i in seen)
    assert len(set(seen)) > 100  # the train pool, not a handful
    assert not torch.equal(a["target"], a["condition"])  # the condition is another photo of the concept
    held = ScenePairs("person", 8, 0, heldout=True).make(0)["concepts"]  # only the validation loss uses these
    assert all(cs[i].heldout for i in held)


def test_pretrain_writes_files_and_resumes_to_identical_weights(tmp_path, pretrained):
    first, summary = pretrained
    assert summary["steps"] == 3 and summary["first_step"] == 0 and summary["n_train_concepts"] > 400
    assert sorted(p.name for p in first.iterdir()) == ["e4t_encoder.json", "e4t_encoder.safetensors"]
    full = load_file(str(first / artifact.ENCODER_WEIGHTS))
    assert {k.split(".")[0] for k in full} == {"encoder", "unet"}
    assert any(k.endswith("lora_B.weight") and full[k].abs().max() > 0 for k in full)  # offsets trained
    assert full["encoder.fc2.weight"].abs().max() > 0  # the head left its zero start
    meta = json.loads((first / artifact.ENCODER_META).read_text())
    assert meta["class"] == "person" and meta["trained"] and meta["model_hash"] and meta["pretrain"]["steps"] == 3
    work = first.parent / "enc.work"
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-2", "checkpoint-3", "train_log.jsonl"]
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if "heldout_loss" in r] == [0, 3]  # held-out subjects: evaluated only

    # kill after step 2: resuming from checkpoint-2 gives the uninterrupted run's weights exactly
    out, work2 = tmp_path / "enc", tmp_path / "enc.work"
    shutil.copytree(work, work2)
    shutil.rmtree(work2 / "checkpoint-3")
    again = pretrain_e4t(out, TINY, resume=True, progress=False)
    assert again["first_step"] == 2
    resumed = load_file(str(out / artifact.ENCODER_WEIGHTS))
    assert resumed.keys() == full.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(InputError, match="other settings"):
        pretrain_e4t(out, PretrainConfig(cls="person", steps=4, batch_size=2, lr=1.0, val_batches=0), resume=True,
                     progress=False)


def test_tune_with_default_steps_writes_a_concept_that_apply_concepts_loads(concept):
    meta = json.loads((concept / "concept.json").read_text())
    assert meta["method"] == "e4t" and meta["tokens"] == ["sks"] and meta["prompt"] == PROMPT
    assert 5 <= meta["training"]["steps"] == E4TConfig().steps <= 15
    assert sorted(p.name for p in concept.iterdir()) == ["concept.json", "learned_embeds.safetensors",
                                                         "pytorch_lora_weights.safetensors", "train_log.jsonl",
                                                         "validation"]
    word = load_file(str(concept / "learned_embeds.safetensors"))
    assert list(word) == ["sks"] and word["sks"].shape == (1, 128)
    assert sum(p.stat().st_size for p in concept.glob("*.safetensors")) < 2_000_000
    base = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    base.set_progress_bar_config(disable=True)
    ours = apply_concepts(load_pipeline("world", device="cpu", dtype="fp32", progress=False), [concept])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, PROMPT), sample(base, "a photo of a person")) > 10
    assert max_pixel_diff(sample(ours, "a photo of a person"), sample(base, "a photo of a person")) > 0  # offsets


def test_two_e4t_concepts_stay_active_together(tmp_path, concept):
    """Loading a LoRA deactivates the others; E4T's loader keeps both, each at 1/2 (one shared domain part)."""
    from safetensors.torch import save_file

    twin = tmp_path / "twin"
    shutil.copytree(concept, twin)
    word = load_file(str(twin / "learned_embeds.safetensors"))["sks"]
    save_file({"zwx": word}, str(twin / "learned_embeds.safetensors"))
    meta = json.loads((twin / "concept.json").read_text())
    (twin / "concept.json").write_text(json.dumps({**meta, "tokens": ["zwx"]}))
    pipe = apply_concepts(load_pipeline("world", device="cpu", dtype="fp32", progress=False), [concept, twin])
    assert sorted(pipe.get_active_adapters()) == sorted([concept.name, "twin"])
    assert pipe.tokenizer.tokenize("sks and zwx") == ["sks", "and</w>", "zwx"]


def test_e4t_and_lora_concepts_stay_active_together_in_any_order(tmp_path, concept, person_photo):
    """Loading a LoRA leaves only itself active; apply_concepts re-activates every adapter it loaded."""
    lora = tune("lora", person_photo, "person", tmp_path / "lora", model="world", steps=2, identifier="olis",
                config={**FAST, "checkpoint_every": 0})
    for order in ([concept, lora], [lora, concept]):
        pipe = apply_concepts(load_pipeline("world", device="cpu", dtype="fp32", progress=False), order)
        assert sorted(pipe.get_active_adapters()) == sorted([concept.name, "lora"]), order


def test_diffusers_alone_reproduces_the_tuned_model(concept):
    pipe = plain_pipeline(str(world_path()))
    pipe.load_textual_inversion(str(concept), weight_name="learned_embeds.safetensors")
    pipe.load_lora_weights(str(concept), weight_name="pytorch_lora_weights.safetensors")
    stock = sample(pipe, PROMPT)
    assert max_pixel_diff(stock, validation_image(concept)) <= 1  # what the in-memory tuned model drew
    ours = apply_concepts(load_pipeline("world", device="cpu", dtype="fp32", progress=False), [concept])
    ours.set_progress_bar_config(disable=True)
    assert max_pixel_diff(sample(ours, PROMPT), stock) == 0


def test_webui_export_is_an_embedding_and_a_kohya_lora_that_diffusers_draws_the_same(concept, tmp_path):
    from boothkit.methods.webui import export_concept

    record = export_concept(concept, tmp_path / "webui", name="golfer")
    assert record["files"] == ["embeddings/golfer.safetensors", "lora/golfer.safetensors"]
    assert record["prompt"] == PROMPT.replace("sks", "golfer") + " <lora:golfer:1>"
    pipe = plain_pipeline(str(world_path()))  # diffusers alone, reading the webui files
    pipe.load_textual_inversion(str(tmp_path / "webui/embeddings/golfer.safetensors"), token="golfer")
    pipe.load_lora_weights(str(tmp_path / "webui/lora"), weight_name="golfer.safetensors")
    assert max_pixel_diff(sample(pipe, PROMPT.replace("sks", "golfer")), validation_image(concept)) <= 1


def test_bad_arguments_fail_before_anything_is_written(tmp_path, person_photo, pretrained):
    assert "e4t" in METHODS and METHODS["e4t"].unavailable_reason() is None  # encoders ship for person, animal, face, food, object
    out = tmp_path / "out"
    with pytest.raises(InputError, match="not a pretrained E4T encoder"):
        tune("e4t", person_photo, "person", out, config={"encoder": str(tmp_path / "nowhere")})
    with pytest.raises(InputError, match="steps"):
        tune("e4t", person_photo, "person", out, steps=0)
    assert list(tmp_path.iterdir()) == []  # refused while validating: nothing at all was written
    with pytest.raises(InputError, match="boothkit pretrain e4t --class plant"):
        tune("e4t", person_photo, "plant", out)  # no encoder ships for plant
    with pytest.raises(InputError, match="pretrained for class 'person'"):
        tune("e4t", person_photo, "animal", out, config={"encoder": str(pretrained[0])})
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_pretrain_e4t(tmp_path):
    from boothkit.cli.main import app

    runner = CliRunner()
    out = tmp_path / "enc"
    r = runner.invoke(app, ["pretrain", "e4t", "--class", "animal", "--out", str(out), "--steps", "1", "--batch", "1",
                            "--val-batches", "0", "--device", "cpu", "--frame"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{"):])["steps"] == 1 and artifact.is_encoder(out)
    meta = artifact.read_encoder_meta(out)
    assert meta["preprocessing"]["frame"] is True and meta["pretrain"]["config"]["frame"] is True
    r = runner.invoke(app, ["pretrain", "e4t", "--class", "dragon", "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and not (tmp_path / "no").exists()


def test_tuning_encodes_each_distinct_prompt_once_with_the_same_values_and_gradient():
    from types import SimpleNamespace

    from boothkit.families import family_of
    from boothkit.methods.e4t.model import E4TRecipe

    pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    tok, te = pipe.tokenizer, pipe.text_encoder
    tok.add_tokens(["sks"])
    te.resize_token_embeddings(len(tok))
    word = torch.zeros(te.config.hidden_size, requires_grad=True)
    inj = WordInjector(te, tok.convert_tokens_to_ids("sks"))
    calls = []
    hook = te.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    prompts = [PROMPT, "sks person on a red background", PROMPT, PROMPT]
    recipe = SimpleNamespace(pipe=pipe, family=family_of(pipe))
    weights = torch.randn(len(prompts), 77, te.config.hidden_size)

    def grad_of(encode):
        word.grad = None
        inj.set(word + 0.0)  # a fresh graph from the word each time
        out = encode(prompts)
        (out * weights).sum().backward()
        return out.detach(), word.grad.clone()

    got, got_grad = grad_of(lambda p: E4TRecipe.encode_prompts(recipe, p).hidden)
    assert calls == [2]  # one text-encoder pass over the 2 distinct prompts
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    want, want_grad = grad_of(lambda p: te(ids)[0])
    hook.remove()
    inj.remove()
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert float(want_grad.abs().sum()) > 0


def test_frame_photos_whitens_the_background_and_centres_the_subject():
    from boothkit.methods.e4t.modules import frame_photos
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    images, _ = render_references(heldout_concepts("person")[0], 3)
    photos = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
                          for im in images])  # [3, 3, 64, 64]
    framed = frame_photos(photos)
    assert framed.shape == photos.shape
    corners = framed[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 0.95).all()  # each photo's own background colour is gone
    ink = (1 - framed).amax(1) > 0.1  # [3, 64, 64] the subject's pixels
    for m in ink:
        ys, xs = m.nonzero(as_tuple=True)
        side = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert 0.6 * 64 <= side <= 0.85 * 64  # framed at about 3/4 of the side ...
        assert abs((ys.max() + ys.min()) / 2 - 31.5) <= 3 and abs((xs.max() + xs.min()) / 2 - 31.5) <= 3  # centred
    assert torch.equal(frame_photos(photos), framed)  # deterministic: pretraining and tuning frame alike


def test_an_encoder_pretrained_on_framed_photos_frames_the_tuning_photos(tmp_path, person_photo, monkeypatch):
    import boothkit.methods.e4t.model as e4t_model

    out = tmp_path / "framed"
    pretrain_e4t(out, PretrainConfig(cls="person", steps=1, batch_size=2, val_batches=0, frame=True), progress=False)
    assert artifact.read_encoder_meta(out)["preprocessing"]["frame"] is True
    framed_batches = []
    real = e4t_model.frame_photos
    monkeypatch.setattr(e4t_model, "frame_photos", lambda x: framed_batches.append(x.shape) or real(x))
    tune("e4t", person_photo, "person", tmp_path / "c", steps=1, config={**FAST, "encoder": str(out)})
    assert framed_batches == [(1, 3, 64, 64)]  # the one tuning photo went through the same framing


def test_lr_encoder_gives_the_head_its_own_learning_rate(tmp_path, person_photo, pretrained, monkeypatch):
    import boothkit.training.loop as loop

    made = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    cfg = {**FAST, "encoder": str(pretrained[0]), "lr": 2e-3, "lr_encoder": 5e-3}
    tune("e4t", person_photo, "person", tmp_path / "c", steps=1, config=cfg)
    (opt,) = made
    offsets, head = opt.param_groups
    assert offsets["lr"] == pytest.approx(2e-3) and head["lr"] == pytest.approx(5e-3)  # as the loop set them
    assert len(head["params"]) == 6 and len(offsets["params"]) > 6  # the head: norm + 2 linear layers; the offsets
    with pytest.raises(InputError, match="lr_encoder must be positive"):
        tune("e4t", person_photo, "person", tmp_path / "d", steps=1, config={**cfg, "lr_encoder": 0})
