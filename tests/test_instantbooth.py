"""InstantBooth: adapters are an exact no-op when fresh, the concept embedding goes exactly where it should, N images
average/concatenate, pretraining writes its files and resumes bit for bit, the artifact round-trips, a plain diffusers
pipeline reproduces boothkit's images, and `generate --instant` works. All on the shipped world model (CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from boothkit.inputs import InputError
from boothkit.methods.instantbooth import InstantBoothConfig, PretrainConfig, generate_instant, install_instantbooth
from boothkit.methods.instantbooth import artifact
from boothkit.methods.instantbooth.modules import InstantBooth, attach, model_dims
from boothkit.pretrain.encoders import pretrain_encoder
from boothkit.training.loop import TrainingError
from boothkit.pipeline import load_pipeline, world_path
from conftest import write_active_instantbooth

PROMPT = "a photo of sks animal on a red background"


@pytest.fixture(scope="module")
def world():
    return load_pipeline("world", device="cpu", dtype="fp32", progress=False)


@pytest.fixture(scope="module")
def refs(subject_photos):
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted(subject_photos.iterdir())]


@pytest.fixture(scope="module")
def active_artifact(tmp_path_factory, world):
    """Untrained heads, but every gamma set to 0.5 and a non-trivial concept head, so the adapters act."""
    return write_active_instantbooth(tmp_path_factory.mktemp("ib") / "active", world, cls="animal")


def _images(pipe, prompt="a photo of a small cat", steps=2, **kw):
    g = torch.Generator("cpu").manual_seed(0)
    return pipe(prompt, num_inference_steps=steps, generator=g, output_type="np", **kw).images


def test_fresh_adapters_are_an_exact_noop_and_detach_restores(world):
    before = _images(world)
    torch.manual_seed(0)
    ib = InstantBooth(InstantBoothConfig(), model_dims(world))
    att = attach(world.unet, ib, beta=1.0)
    try:
        att.set_patches(torch.randn(1, 3 * 65, 128))
        assert np.array_equal(before, _images(world))  # gamma = 0: bit-identical
        with torch.no_grad():
            for a in ib.adapters.values():
                a.gamma.fill_(0.5)
        assert np.abs(before - _images(world)).max() > 1e-3  # the same adapters with gamma != 0 do act
        att.set_patches(None)
        assert np.array_equal(before, _images(world))  # no image conditioning: adapters off
    finally:
        att.detach()
    assert np.array_equal(before, _images(world))
    assert all(type(p).__name__ != "InstantBoothAttnProcessor" for p in world.unet.attn_processors.values())


def test_adapter_sits_between_self_and_cross_attention(world):
    """One block by hand: y = h + attn1(norm1(h)); z = y + beta tanh(gamma) SA([y, p]); then attn2 and ff on z."""
    from boothkit.methods.instantbooth.modules import transformer_blocks

    torch.manual_seed(0)
    ib = InstantBooth(InstantBoothConfig(), model_dims(world))
    name, block = next(iter(transformer_blocks(world.unet).items()))
    adapter = ib.adapters[name.replace(".", "-")]
    with torch.no_grad():
        adapter.gamma.fill_(0.7)
    h = torch.randn(2, 256, block.norm1.normalized_shape[0])
    text = torch.randn(2, 77, 128)
    patches = torch.randn(1, 65, 128)
    with torch.no_grad():
        y = h + block.attn1(block.norm1(h))
        # the adapter written out: softmax attention over [y, proj(patches)], image-token outputs kept
        x = adapter.norm(torch.cat([y, adapter.proj(patches.expand(2, -1, -1))], 1))  # [2, 256 + 65, d]
        heads, d = adapter.heads, y.shape[-1]
        q, k, v = (f(x).view(2, -1, heads, d // heads).transpose(1, 2) for f in (adapter.to_q, adapter.to_k,
                                                                                   adapter.to_v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1) @ v  # [2, heads, 321, d/h]
        sa = adapter.to_out(att.transpose(1, 2).reshape(2, -1, d))[:, :256]
        z = y + 0.3 * torch.tanh(torch.tensor(0.7)) * sa
        z = z + block.attn2(block.norm2(z), encoder_hidden_states=text)
        want = z + block.ff(block.norm3(z))
        att = attach(world.unet, ib, beta=0.3)
        try:
            att.set_patches(patches)
            got = block(h, encoder_hidden_states=text)
        finally:
            att.detach()
    assert torch.allclose(got, want, atol=1e-5) and (got - block(h, encoder_hidden_states=text)).abs().max() > 1e-3


def test_every_transformer_block_gets_an_adapter(world, active_artifact):
    ib = install_instantbooth(world, active_artifact)
    try:
        procs = world.unet.attn_processors
        wrapped = [k for k, p in procs.items() if type(p).__name__ == "InstantBoothAttnProcessor"]
        assert len(wrapped) == len(procs) // 2 == 11 and all(k.endswith("attn1.processor") for k in wrapped)
        with pytest.raises(ValueError, match="already attached"):
            install_instantbooth(world, active_artifact)
    finally:
        ib.remove()


def test_concept_replaces_exactly_the_identifier_output_scaled_by_alpha(world, active_artifact, refs):
    ib = install_instantbooth(world, active_artifact, alpha=0.25)
    try:
        ib.set_images(refs[:2])
        embeds = ib.encode_prompt(PROMPT)  # [1, 77, 128]
        ids = world.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            plain = world.text_encoder(ids)[0]
        pos = (ids[0] == ib.token_id).nonzero().flatten().tolist()
        assert pos == [4]  # <start> a photo of sks
        keep = torch.ones(77, dtype=torch.bool)
        keep[4] = False
        assert torch.equal(embeds[0, keep], plain[0, keep])  # every other position untouched, bit for bit
        assert torch.equal(embeds[0, 4], 0.25 * ib.concept)
        assert not torch.allclose(embeds[0, 4], plain[0, 4])
        assert torch.equal(ib.encode_prompt(PROMPT, alpha=1.0)[0, 4], ib.concept)
        with pytest.raises(InputError, match="identifier"):
            ib.encode_prompt("a photo of a dog")
    finally:
        ib.remove()


def test_n_images_give_the_mean_concept_and_concatenated_patches(world, active_artifact, refs):
    ib = install_instantbooth(world, active_artifact)
    try:
        singles = []
        for im in refs[:3]:
            ib.set_images([im])
            singles.append((ib.concept.clone(), ib.attached.condition.patches.clone()))
        ib.set_images(refs[:3])
        assert ib.attached.condition.patches.shape == (1, 3 * 65, 128)
        assert torch.allclose(ib.attached.condition.patches, torch.cat([p for _, p in singles], 1), atol=1e-5)
        # the concept head sees the mean of the N image embeddings
        with torch.no_grad():
            from boothkit.methods.instantbooth.modules import image_features
            from boothkit.methods.vision import framed_references

            pix = ib.pixel_values(framed_references(refs[:3], "animal"))  # flat backgrounds: cut out and framed
            emb, _ = image_features(world.image_encoder, pix)
            want = ib.model.concept_head(emb.mean(0, keepdim=True))[0]
        assert torch.allclose(ib.concept, want, atol=1e-5)
        assert not torch.allclose(ib.concept, singles[0][0], atol=1e-3)
        # patches="mean": one image's worth of tokens, the mean of the singles (the paper's head is linear)
        concept, mean = ib.encode_images(refs[:3], patches="mean")
        assert mean.shape == (1, 65, 128) and torch.allclose(concept, want, atol=1e-5)
        assert torch.allclose(mean, torch.stack([p for _, p in singles]).mean(0), atol=1e-5)
        with pytest.raises(InputError, match="patches"):
            ib.encode_images(refs[:3], patches="sum")
    finally:
        ib.remove()


def test_save_load_round_trip(tmp_path, active_artifact):
    model, meta = artifact.load(active_artifact)
    out = tmp_path / "copy"
    artifact.save(model, out, meta)
    assert sorted(p.name for p in out.iterdir()) == ["instantbooth.json", "instantbooth.safetensors"]
    a, b = load_file(str(active_artifact / artifact.WEIGHTS)), load_file(str(out / artifact.WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {k.split(".")[0] for k in a} == {"concept_head", "patch_head", "adapters"}
    again, meta2 = artifact.load(out, beta=0.7)
    assert again.cfg.beta == 0.7 and meta2["dims"] == meta["dims"] and meta2["model_hash"] == meta["model_hash"]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not an InstantBooth artifact"):
        artifact.load(junk)
    with pytest.raises(InputError, match="not an InstantBooth artifact"):
        artifact.save(model, junk, meta)
    with pytest.raises(InputError, match="alpha"):
        InstantBoothConfig(alpha=-1)


def test_artifact_for_another_base_model_is_refused(tmp_path, world, active_artifact, refs):
    other = tmp_path / "other"
    shutil.copytree(active_artifact, other)
    meta = json.loads((other / artifact.META).read_text())
    (other / artifact.META).write_text(json.dumps({**meta, "model_hash": "0" * 16}))
    with pytest.raises(InputError, match="base model"):
        generate_instant(world, other, refs, PROMPT)


def test_plain_diffusers_pipeline_matches_boothkit(world, active_artifact, refs):
    from diffusers import StableDiffusionPipeline

    from boothkit.generate import GenerateConfig

    cfg = GenerateConfig(n=1, seed=0, steps=3)
    ours = np.asarray(generate_instant(world, active_artifact, refs, PROMPT, cfg)[0])
    assert all(type(p).__name__ != "InstantBoothAttnProcessor" for p in world.unet.attn_processors.values())

    pipe = StableDiffusionPipeline.from_pretrained(str(world_path()), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ib = install_instantbooth(pipe, active_artifact)
    ib.set_images(refs)
    g = torch.Generator("cpu").manual_seed(0)
    theirs = np.asarray(pipe(prompt_embeds=ib.encode_prompt(PROMPT), num_inference_steps=3, guidance_scale=5.0,
                             generator=g).images[0])
    assert np.array_equal(ours, theirs)
    ib.remove()
    g = torch.Generator("cpu").manual_seed(0)
    base = np.asarray(pipe(PROMPT, num_inference_steps=3, guidance_scale=5.0, generator=g).images[0])
    assert np.abs(base.astype(int) - ours.astype(int)).max() > 0  # the conditioning changed the image


#: a 3-step world pretraining, tiny batches, the loader in the training process
TINY = {"steps": 3, "batch_size": 2, "checkpoint_every": 2, "lr_adapters": 1e-3, "heldout": 2, "workers": 0,
        "validate_every": 0, "validation_images": 0}


def _pretrain(out, settings=TINY, **kw):
    return pretrain_encoder("instantbooth", out, data="world", class_noun="animal", settings=settings, **kw)


def test_pretrain_writes_files_and_resumes_to_identical_weights(tmp_path):
    out, work = tmp_path / "ib", tmp_path / "ib.work"
    summary = _pretrain(out)
    assert summary["steps"] == 3 and summary["first_step"] == 0 and summary["work"] == str(work)
    assert sorted(p.name for p in out.iterdir()) == ["instantbooth.json", "instantbooth.safetensors"]
    assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "train_log.jsonl"]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    meta = json.loads((out / "instantbooth.json").read_text())
    assert meta["class"] == "animal" and meta["trained"] and meta["pretrain"]["steps"] == 3
    assert meta["family"] == "sd" and meta["image_encoder"]["source"] is None and meta["image_encoder"]["hash"]
    full = load_file(str(out / artifact.WEIGHTS))
    fresh = InstantBooth(InstantBoothConfig(), meta["dims"]).state_dict()
    assert any(not torch.equal(full[k], fresh[k]) for k in full if k.endswith("gamma"))  # adapters trained
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if "heldout_loss" in r] == [0, 3]  # held-out subjects: evaluated, never trained
    assert summary["heldout_loss"]["first"] == log[1]["heldout_loss"] and summary["heldout_loss"]["last"] > 0

    # kill after step 2: only checkpoint-2 is left; resuming must give the uninterrupted run's weights exactly
    shutil.rmtree(work / "checkpoints" / "checkpoint-3")
    shutil.rmtree(out)
    summary = _pretrain(out, resume=True)
    assert summary["first_step"] == 2
    resumed = load_file(str(out / artifact.WEIGHTS))
    assert resumed.keys() == full.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    with pytest.raises(TrainingError, match="different run"):
        _pretrain(out, {**TINY, "steps": 4, "lr": 1e-3}, resume=True)
    # a run stopped early: --resume with --steps at its newest checkpoint writes that checkpoint's artifact
    shutil.rmtree(work / "checkpoints" / "checkpoint-3")
    early = tmp_path / "ib-early"
    summary = _pretrain(early, {**TINY, "steps": 2, "alpha": 0.7, "beta": 0.5}, work=work, resume=True)
    assert summary["first_step"] == 2 and summary["final_loss"] is None
    knobs = json.loads((early / "instantbooth.json").read_text())["config"]  # inference defaults: may be set here
    assert (knobs["alpha"], knobs["beta"]) == (0.7, 0.5)
    ck2 = load_file(str(work / "checkpoints" / "checkpoint-2" / "trainable.safetensors"))
    exported = load_file(str(early / artifact.WEIGHTS))
    assert exported.keys() == ck2.keys() and all(torch.equal(ck2[k], exported[k]) for k in ck2)
    with pytest.raises(InputError, match="already at step 2 > --steps 1"):
        _pretrain(tmp_path / "x", {**TINY, "steps": 1}, work=work, resume=True)
    assert not (tmp_path / "x").exists()


def test_references_are_framed_as_pretraining_framed_its_conditions():
    """A small off-centre subject on a flat background is cut out on white, then cropped square around it so that it
    covers 3/4 of the side, centred (pretraining's conditions cover 55-95%, re-centred)."""
    from PIL import Image, ImageDraw

    from boothkit.methods.vision import framed_references

    im = Image.new("RGB", (64, 64), (40, 90, 200))  # a blue background
    ImageDraw.Draw(im).rectangle((40, 6, 51, 17), fill=(220, 30, 30))  # a 12x12 red subject, top right
    (framed,) = framed_references([im], "object")
    out = np.asarray(framed)
    assert out.shape == (16, 16, 3)  # 12 / 0.75
    red = np.nonzero((out[..., 0] > 150) & (out[..., 1] < 100))
    assert (red[0].min(), red[0].max(), red[1].min(), red[1].max()) == (2, 13, 2, 13)  # centred, 12 of 16
    assert (out[0, 0] == 255).all() and (out[15, 15] == 255).all()  # the blue background became white
    # a subject at the edge: the square extends past the image, padded white
    edge = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(edge).rectangle((0, 0, 29, 29), fill=(0, 0, 0))
    e = np.asarray(framed_references([edge], "object")[0])
    assert e.shape == (40, 40, 3) and (e[:5, :5] == 255).all() and (e[5:35, 5:35] == 0).all()


def test_object_weighted_loss_and_gamma_group(world):
    """Beyond the paper, for short runs: the loss can weight the subject's latent pixels (from its mask), and the
    adapters' gates can have their own learning rate. Both are off by default (the paper's loss)."""
    from boothkit.methods.instantbooth.pretrain import InstantBoothPretrain, loss_weights

    m = torch.zeros(3, 1, 64, 64)
    for i, (y, x) in enumerate([(0, 0), (20, 40), (48, 8)]):
        m[i, :, y:y + 12, x:x + 12] = 1.0
    assert loss_weights(m, (16, 16), 0.0) is None
    w = loss_weights(m, (16, 16), 4.0)
    assert w.shape == (3, 1, 16, 16) and float(w.min()) >= 1.0 and float(w.max()) <= 5.0
    for i in range(3):  # heavier exactly where the subject is
        ys, xs = torch.nonzero(m[i, 0] > 0.5, as_tuple=True)
        y, x = divmod(int(w[i, 0].flatten().argmax()), 16)
        assert ys.min() // 4 <= y <= ys.max() // 4 and xs.min() // 4 <= x <= xs.max() // 4
    groups = {}
    for lr_gamma in (0.0, 1e-2):
        cfg = PretrainConfig(lr=1e-4, lr_adapters=1e-5, lr_gamma=lr_gamma, validation_images=0)
        recipe = InstantBoothPretrain(world, cfg, InstantBoothConfig(), class_noun="animal")
        groups[lr_gamma] = (recipe, recipe.trainable_parameters())
        recipe.attached.detach()
    two, (recipe, three) = groups[0.0][1], groups[1e-2]
    assert [g["name"] for g in two] == ["heads", "adapters"] and [g["name"] for g in three] == ["heads", "adapters",
                                                                                                 "gamma"]
    assert [g["lr_scale"] for g in three] == pytest.approx([1.0, 0.1, 100.0]) and three[2]["weight_decay"] == 0.0
    names = {id(p): n for n, p in recipe.ib.named_parameters()}
    assert all(names[id(p)].endswith("gamma") for p in three[2]["params"]) and len(three[2]["params"]) == 11
    ids = [id(p) for g in three for p in g["params"]]  # every trainable parameter in exactly one group
    assert sorted(ids) == sorted(names) and len(set(ids)) == len(ids)
    for bad in ({"lr_gamma": -1.0}, {"object_weight": -0.5}, {"cond_scale": (0.9, 0.5)}):
        with pytest.raises(InputError):
            PretrainConfig(**bad)


def test_cli_generate_instant(tmp_path, active_artifact, subject_photos):
    from boothkit.cli.main import app

    runner = CliRunner()
    out = tmp_path / "gen"
    r = runner.invoke(app, ["generate", PROMPT, "--instant", str(active_artifact), "--images", str(subject_photos),
                            "-n", "2", "--steps", "2", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "image-000.png", "image-001.png"]
    guided = tmp_path / "guided"
    r = runner.invoke(app, ["generate", PROMPT, "--instant", str(active_artifact), "--images", str(subject_photos),
                            "-n", "1", "--steps", "2", "--out", str(guided), "--device", "cpu", "--uncond-beta", "0"])
    assert r.exit_code == 0, r.output
    a, b = (np.asarray(Image.open(d / "image-000.png")).astype(int) for d in (out, guided))
    assert np.abs(a - b).max() > 0  # image guidance changes the picture
    r = runner.invoke(app, ["generate", PROMPT, "--instant", str(active_artifact), "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and not (tmp_path / "no").exists()


def test_install_instantbooth_image_guidance_and_remove(world, active_artifact, refs):
    seen = []
    hook = world.unet.register_forward_hook(lambda m, a, out: seen.append(out[0].detach().clone()))

    def first_unet_output(**kw):
        seen.clear()
        world(num_inference_steps=1, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0), **kw)
        return seen[0]  # [2, 4, h, w]: [negative, positive]

    try:
        plain = first_unet_output(prompt=PROMPT.replace("sks", "a"))
        outs = {}
        for uncond_beta in (None, 0.0):
            ib = install_instantbooth(world, active_artifact, uncond_beta=uncond_beta)
            ib.set_images(refs)
            outs[uncond_beta] = first_unet_output(prompt_embeds=ib.encode_prompt(PROMPT))
            ib.remove()
        assert "encode_prompt" not in vars(world)  # remove() unwrapped it: the class's method again
        torch.testing.assert_close(outs[0.0][1], outs[None][1])  # the positive half: the same adapters
        assert (outs[None][0] - outs[0.0][0]).abs().max() > 1e-3  # the negative half: adapters off with 0 ...
        torch.testing.assert_close(outs[0.0][0], plain[0])  # ... so it is the plain UNet's negative half
    finally:
        hook.remove()
