"""Loading base models: the world model with diffusers alone, local folders, hub ids, devices and dtypes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from boothkit.pipeline import ModelNotFoundError, load_pipeline, model_hash, pick_dtype, resolve_model, world_path


def test_world_folder_is_a_standard_pipeline():
    p = world_path()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "image_encoder", "judge", "world_clip"):
        assert (p / sub).is_dir(), sub
    assert (p / "model_index.json").is_file()
    assert not list(p.rglob("*.bin")) and not list(p.rglob("*.pt")) and not list(p.rglob("*.pkl"))
    total = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    assert total < 80 * 2**20, f"shipped weights are {total / 2**20:.1f} MiB"


def test_diffusers_alone_loads_and_draws_the_world_model(tmp_path):
    # A fresh interpreter that never imports boothkit.
    code = f"""
import sys, torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained({str(world_path())!r})
assert 'boothkit' not in sys.modules
assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
img = pipe("a large dog face on a red background", num_inference_steps=2, height=64, width=64,
           generator=torch.Generator().manual_seed(0)).images[0]
img.save({str(tmp_path / 'x.png')!r})
print(type(pipe.image_encoder).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CLIPVisionModelWithProjection" in out.stdout
    from PIL import Image

    assert Image.open(tmp_path / "x.png").size == (64, 64)


def test_load_pipeline_world_on_cpu():
    pipe = load_pipeline("world", device="cpu", progress=False)
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_unknown_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does-not-exist"):
        load_pipeline(str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        resolve_model(str(tmp_path / "empty"))


def test_unreachable_hub_id_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="someone/not-a-real-model"):
        load_pipeline("someone/not-a-real-model")


def test_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError):
        pick_dtype(torch.device("cpu"), "fp8")


def test_model_hash_is_stable_and_content_based():
    h = model_hash("world")
    assert h == model_hash(str(world_path())) and len(h) == 16
    assert model_hash("someone/else").startswith("id:")



def test_model_hash_is_remembered_by_file_stamp_and_recomputed_when_a_file_changes(tmp_path, tiny_model, monkeypatch):
    import shutil
    import time

    from boothkit import pipeline

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    files = sorted((model / "unet").glob("*.safetensors")) + sorted((model / "text_encoder").glob("*.safetensors"))
    first = model_hash(str(model))
    assert first == pipeline.hash_files(files)  # the cache returns what hashing the bytes gives

    def no_reading(files):
        raise AssertionError("hashed again although no file changed")

    monkeypatch.setattr(pipeline, "hash_files", no_reading)
    assert model_hash(str(model)) == first  # from the SQLite cache: no byte read
    monkeypatch.undo()

    weights = files[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other content, a later mtime
    time.sleep(0.01)
    weights.write_bytes(bytes(data))
    changed = model_hash(str(model))
    assert changed != first and changed == pipeline.hash_files(files)


def test_model_hash_sees_a_replacement_with_the_same_size_and_mtime(tmp_path, tiny_model):
    """What `cp -p`, `rsync -a` or `tar x` leave: another file with the old size and modification time."""
    import shutil

    from boothkit import pipeline

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    f = sorted((model / "unet").glob("*.safetensors"))[0]
    files = sorted((model / "unet").glob("*.safetensors")) + sorted((model / "text_encoder").glob("*.safetensors"))
    first = model_hash(str(model))
    st = os.stat(f)
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    new = f.with_suffix(".new")
    new.write_bytes(bytes(data))
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, f)
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert model_hash(str(model)) == pipeline.hash_files(files) != first


def test_model_hash_works_without_a_writable_cache(tmp_path, tiny_model, monkeypatch):
    from boothkit import pipeline

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("BOOTHKIT_CACHE", str(blocked))
    files = sorted((Path(tiny_model) / "unet").glob("*.safetensors")) + \
        sorted((Path(tiny_model) / "text_encoder").glob("*.safetensors"))
    assert model_hash(tiny_model) == pipeline.hash_files(files)

def test_schedulers_are_built_from_the_models_config_and_change_the_sampling():
    from diffusers import DDIMScheduler

    from boothkit.inputs import InputError
    from boothkit.pipeline import SCHEDULERS, make_scheduler, scheduler_class

    pipe = load_pipeline("world", device="cpu", progress=False)
    own = pipe.scheduler.config
    for name, (cls_name, overrides) in SCHEDULERS.items():
        s = make_scheduler(own, name)
        assert type(s).__name__ == cls_name, name
        assert s.config.beta_start == own.beta_start and s.config.beta_schedule == own.beta_schedule
        assert s.config.prediction_type == own.prediction_type
        assert all(s.config[k] == v for k, v in overrides.items())
        one = load_pipeline("world", device="cpu", progress=False, scheduler=name)
        for steps in (1, 3):  # few steps too (PNDM's PRK warm-up needs many unless skipped, as SD ships it)
            im = one("a cat", num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(0),
                     output_type="pt").images
            assert im.shape == (1, 3, 64, 64) and torch.isfinite(im).all(), (name, steps)
    assert scheduler_class("DDIMScheduler")[0] is DDIMScheduler  # a diffusers class name works too
    for bad in ("nosuch", "AutoencoderKL", "StableDiffusionPipeline"):
        with pytest.raises(InputError, match="unknown scheduler"):
            scheduler_class(bad)

    def draw(p):
        g = torch.Generator("cpu").manual_seed(0)
        return p("a cat on a red background", num_inference_steps=4, generator=g, output_type="pt").images

    ddim = load_pipeline("world", device="cpu", progress=False, scheduler="ddim")
    assert isinstance(ddim.scheduler, DDIMScheduler)
    torch.testing.assert_close(draw(ddim), draw(ddim))  # same seed, same pixels
    assert (draw(ddim) - draw(pipe)).abs().max() > 1e-2  # another sampler, another image
