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
from boothkit.methods.e4t import E4TConfig, EncoderConfig
from boothkit.methods.e4t import artifact
from boothkit.methods.e4t.modules import (DomainEncoder, WordInjector, add_weight_offsets, embedding_l2,
                                          encoder_dims, weight_offset_l2)
from boothkit.pipeline import load_pipeline, world_path
from boothkit.pretrain.encoders import pretrain_encoder
from boothkit.training.loop import TrainingError

from conftest import FAST, _reference_folder, max_pixel_diff, plain_pipeline, sample, validation_image

PROMPT = "a photo of sks person"
#: a 3-step world pretraining of the person domain, tiny batches, the loader in the training process
TINY = {"steps": 3, "batch_size": 2, "checkpoint_every": 2, "heldout": 2, "workers": 0, "validate_every": 0,
        "validation_images": 0}


def pretrain_e4t(out, settings=TINY, **kw):
    return pretrain_encoder("e4t", out, data="world", class_noun="person", settings=settings, **kw)


@pytest.fixture(scope="module")
def person_photo(tmp_path_factory):
    """ONE reference render of the first held-out person (E4T tunes from a single image)."""
    return _reference_folder(tmp_path_factory, "e4t-photo", "person", "person", 1)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 3-step pretraining run: (encoder folder, summary)."""
    out = tmp_path_factory.mktemp("e4t") / "enc"
    return out, pretrain_e4t(out)


def shipped():
    from boothkit.encoders import shipped

    return shipped()


@pytest.fixture(scope="module")
def concept(tmp_path_factory, person_photo, pretrained):
    """`tune` with the default steps: the shipped person encoder when there is one, else the 3-step one."""
    cfg = dict(FAST)
    if not any(e.kind == "e4t" and e.classes == "person" for e in shipped()):
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


def test_pretrain_writes_files_and_resumes_to_identical_weights(tmp_path, pretrained):
    first, summary = pretrained
    assert summary["steps"] == 3 and summary["first_step"] == 0 and summary["data"]["kind"] == "world"
    assert sorted(p.name for p in first.iterdir()) == ["e4t_encoder.json", "e4t_encoder.safetensors"]
    full = load_file(str(first / artifact.ENCODER_WEIGHTS))
    assert {k.split(".")[0] for k in full} == {"encoder", "unet"}
    assert any(k.endswith("lora_B.weight") and full[k].abs().max() > 0 for k in full)  # offsets trained
    assert full["encoder.fc2.weight"].abs().max() > 0  # the head left its zero start
    meta = json.loads((first / artifact.ENCODER_META).read_text())
    assert meta["class"] == "person" and meta["trained"] and meta["model_hash"] and meta["pretrain"]["steps"] == 3
    assert meta["dims"]["text_dims"] == [128] and meta["family"] == "sd"
    work = first.parent / "enc.work"
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "train_log.jsonl"]
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if "heldout_loss" in r] == [0, 3]  # held-out subjects: evaluated only
    assert all({"denoise", "offset_sq", "weight_offset_sq"} <= set(r) for r in log if "loss" in r)

    # kill after step 2: resuming from checkpoint-2 gives the uninterrupted run's weights exactly
    out, work2 = tmp_path / "enc", tmp_path / "enc.work"
    shutil.copytree(work, work2)
    shutil.rmtree(work2 / "checkpoints" / "checkpoint-3")
    again = pretrain_e4t(out, resume=True)
    assert again["first_step"] == 2
    resumed = load_file(str(out / artifact.ENCODER_WEIGHTS))
    assert resumed.keys() == full.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(TrainingError, match="different run"):
        pretrain_e4t(out, {**TINY, "steps": 4, "lr": 1.0}, resume=True)


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
                            "--set", "heldout=1", "--set", "workers=0", "--set", "frame=true",
                            "--set", "validation_steps=2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["steps"] == 1 and artifact.is_encoder(out)
    meta = artifact.read_encoder_meta(out)
    assert meta["preprocessing"]["frame"] is True and meta["pretrain"]["config"]["frame"] is True
    assert sorted(p.name for p in (tmp_path / "enc.work" / "validation").iterdir()) == ["step-00001.png",
                                                                                        "step-00001.txt"]
    r = runner.invoke(app, ["pretrain", "e4t", "--class", "dragon", "--out", str(tmp_path / "no")])
    assert r.exit_code == 2 and "no class 'dragon'" in r.output and not (tmp_path / "no").exists()
    r = runner.invoke(app, ["pretrain", "e4t", "--class", "animal", "--out", str(tmp_path / "no"), "--set", "rnk=2"])
    assert r.exit_code == 2 and "--set rnk: unknown setting" in r.output and not (tmp_path / "no").exists()
    assert not (tmp_path / "no.work").exists()


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
    weights = torch.randn(len(prompts), 77, te.config.hidden_size, generator=torch.Generator().manual_seed(0))

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
    # the word's gradient sums 4 x 77 x 128 products of both signs: its float rounding is relative to the
    # largest of its elements, not to each one (an element near 0 is the difference of large terms)
    scale = float(want_grad.abs().max())
    assert scale > 0 and torch.allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5 * scale)


def test_framing_on_tensors_is_frame_subject():
    """Pretraining frames the condition photos on the device (e4t.pretrain.framed) as tuning frames the user's
    photos (boothkit.data.frame_subject): the subject cut out on white, centred at 3/4 of the side."""
    from PIL import Image

    from boothkit.data import frame_subject
    from boothkit.methods.e4t.pretrain import framed
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    images, _ = render_references(heldout_concepts("person")[0], 3)
    photos = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 255
                          for im in images])  # [3, 3, 64, 64]
    masks = torch.stack([(p - p[:, :1, :1]).abs().amax(0, keepdim=True) > 0.1 for p in photos]).float()  # not bg
    out = framed(photos, masks)
    assert out.shape == photos.shape and (out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]] > 0.95).all()  # white corners
    for im, m, f in zip(images, masks, out):
        pil_mask = Image.fromarray((m[0].numpy() * 255).astype(np.uint8), "L")
        want = np.asarray(frame_subject(im.convert("RGB"), pil_mask, size=64), dtype=np.float32) / 255
        assert np.abs(f.permute(1, 2, 0).numpy() - want).mean() < 0.04
    assert torch.equal(framed(photos, masks), out)  # deterministic


def test_an_encoder_pretrained_on_framed_photos_frames_the_tuning_photos(tmp_path, person_photo, monkeypatch):
    import boothkit.methods.e4t.model as e4t_model

    out = tmp_path / "framed"
    pretrain_e4t(out, {"steps": 1, "batch_size": 2, "heldout": 0, "workers": 0, "frame": True, "validate_every": 0,
                       "validation_images": 0})
    assert artifact.read_encoder_meta(out)["preprocessing"]["frame"] is True
    framed_sets = []
    real = e4t_model.framed_pixels
    monkeypatch.setattr(e4t_model, "framed_pixels", lambda photos, *a, **k: framed_sets.append(len(photos)) or
                        real(photos, *a, **k))
    tune("e4t", person_photo, "person", tmp_path / "c", steps=1, config={**FAST, "encoder": str(out)})
    assert framed_sets == [1]  # the one tuning photo went through the same framing


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
