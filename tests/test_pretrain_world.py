"""`boothkit pretrain world`: every stage runs, exports a loadable pipeline, and resumes to the same weights."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from boothkit.pipeline import world_path
from boothkit.pretrain.world import train as T
from boothkit.pretrain.world.config import StageConfig, WorldPretrainConfig, recipe


def _cfg(tmp_path, **kw):
    cfg = recipe("smoke", out=str(tmp_path / "world"), device="cpu", **kw)
    (tmp_path / "world.work").mkdir(parents=True, exist_ok=True)
    # the tokenizer stage downloads CLIP's merges with pip; reuse the shipped result offline
    shutil.copytree(world_path() / "tokenizer", tmp_path / "world.work" / "tokenizer", dirs_exist_ok=True)
    return cfg


def test_all_stages_export_a_standard_pipeline(tmp_path):
    summary = T.pretrain_world(_cfg(tmp_path))
    assert set(summary) >= {"vae", "clip", "judge", "unet", "export"}
    out = tmp_path / "world"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "judge", "world_clip"):
        assert (out / sub).is_dir(), sub
    meta = json.loads((out / "world.json").read_text())
    assert meta["seed"] == 0 and set(meta["stages"]) == {"vae", "clip", "judge", "unet"}
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    img = pipe("a dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (64, 64)
    # finished stages are skipped on a second call
    again = T.pretrain_world(_cfg(tmp_path))
    assert set(again) == {"export"}


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    stage = StageConfig(5, 4, 1e-3, 1)
    ref_cfg = replace(_cfg(tmp_path / "a"), vae=stage, checkpoint_every=2, stages=("vae",))
    T.pretrain_world(ref_cfg)
    reference = load_file(str(tmp_path / "a" / "world.work" / "vae" / "final.safetensors"))

    cfg = replace(_cfg(tmp_path / "b"), vae=stage, checkpoint_every=2, stages=("vae",))
    original = T._Stage.after_step

    def crash(self, step):
        if step == 3:
            raise KeyboardInterrupt("killed after step 3")
        original(self, step)

    monkeypatch.setattr(T._Stage, "after_step", crash)
    with pytest.raises(KeyboardInterrupt):
        T.pretrain_world(cfg)
    assert (tmp_path / "b" / "world.work" / "vae" / "checkpoint-2" / "COMPLETE").exists()
    assert not (tmp_path / "b" / "world.work" / "vae" / "final.safetensors").exists()
    monkeypatch.setattr(T._Stage, "after_step", original)
    T.pretrain_world(cfg)
    resumed = load_file(str(tmp_path / "b" / "world.work" / "vae" / "final.safetensors"))
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k
    # and resuming really trained: the weights moved away from initialisation
    torch.manual_seed(T.hash_seed(0, "vae-init"))
    init = T.models.vae().state_dict()
    assert any(not torch.equal(init[k], resumed[k]) for k in init)


def test_nan_loss_stops_with_the_step(tmp_path, monkeypatch):
    cfg = replace(_cfg(tmp_path), stages=("judge",))
    monkeypatch.setattr(T, "_augment", lambda x, g: x * float("nan"))
    with pytest.raises(FloatingPointError, match="step 0"):
        T.pretrain_world(cfg)


def test_config_validation():
    with pytest.raises(ValueError):
        WorldPretrainConfig(out="x", stages=("vae", "nope"))
    with pytest.raises(ValueError):
        StageConfig(0, 4, 1e-3)
