"""InstantBooth as a registered method: tune encodes (no training) into a concept folder; apply_concepts reproduces
generate_instant exactly; two subjects with their own identifiers; clear errors and nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from boothkit.inputs import InputError
from boothkit.methods import METHODS, apply_concepts, tune
from boothkit.methods.instantbooth import artifact, generate_instant
from boothkit.pipeline import load_pipeline
from conftest import write_active_instantbooth

PROMPT = "a photo of sks animal on a red background"


def _world():
    pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """Untrained heads with every gamma at 0.5, so the adapters act."""
    return write_active_instantbooth(tmp_path_factory.mktemp("ib-enc") / "enc", _world(), cls="all")


@pytest.fixture(scope="module")
def concept(tmp_path_factory, encoder, subject_photos):
    return tune("instantbooth", subject_photos, "animal", tmp_path_factory.mktemp("ib-c") / "rat",
                config={"encoder": str(encoder)})


def test_registered_and_tune_writes_a_concept_without_training(concept, subject_photos):
    assert "instantbooth" in METHODS and METHODS["instantbooth"].recipe is None
    meta = json.loads((concept / "concept.json").read_text())
    assert meta["method"] == "instantbooth" and meta["tokens"] == ["sks"] and meta["training"]["steps"] == 0
    assert (concept / "instantbooth_concept.safetensors").is_file() and artifact.is_artifact(concept / "encoder")
    from safetensors.torch import load_file

    t = load_file(str(concept / "instantbooth_concept.safetensors"))
    n = len(list(subject_photos.iterdir()))
    assert tuple(t["concept"].shape) == (128,) and t["patches"].shape[0] == n * 65  # photos x (CLS + 64 patches)


def test_apply_concepts_reproduces_generate_instant(concept, encoder, subject_photos):
    pipe = apply_concepts(_world(), [concept])
    g = torch.Generator("cpu").manual_seed(0)
    via_concept = np.asarray(pipe(PROMPT, num_inference_steps=3, guidance_scale=5.0, generator=g).images[0])
    from boothkit.generate import GenerateConfig

    direct = np.asarray(generate_instant(_world(), encoder, subject_photos, PROMPT,
                                         GenerateConfig(n=1, steps=3))[0])
    assert np.abs(via_concept.astype(int) - direct.astype(int)).max() <= 1
    plain = np.asarray(_world()(PROMPT, num_inference_steps=3, guidance_scale=5.0,
                                generator=torch.Generator("cpu").manual_seed(0)).images[0])
    assert np.abs(via_concept.astype(int) - plain.astype(int)).max() > 10  # the concept does act


def test_two_subjects_each_with_its_identifier(concept, encoder, subject_photos, second_subject_photos, tmp_path):
    other = tune("instantbooth", second_subject_photos, "food", tmp_path / "food", identifier="olis",
                 config={"encoder": str(encoder)})
    pipe = apply_concepts(_world(), [concept, other])
    state = pipe._boothkit_instantbooth
    assert len(state.concepts) == 2 and state.attached.condition.patches.shape[1] == sum(
        len(list(p.iterdir())) * 65 for p in (subject_photos, second_subject_photos))
    img = pipe("a photo of sks animal on the left and olis food on the right", num_inference_steps=2,
               generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert img.size == (64, 64)
    with pytest.raises(InputError, match="same identifier"):
        apply_concepts(_world(), [concept, concept])


def test_bad_encoder_is_a_clear_error_and_nothing_is_written(subject_photos, encoder, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(InputError, match="instantbooth"):
        tune("instantbooth", subject_photos, "animal", out, config={"encoder": str(tmp_path / "missing")})
    assert not out.exists() and not list(tmp_path.glob(".x*"))
    with pytest.raises(InputError, match="one token"):
        tune("instantbooth", subject_photos, "animal", out, identifier="zjq", config={"encoder": str(encoder)})
    assert not out.exists()


def test_app_offers_instantbooth_only_with_an_encoder_and_then_defaults_to_it(encoder, monkeypatch):
    from boothkit import encoders
    from boothkit.app.registry import default_method, registered_methods

    shipped = encoders.shipped()
    monkeypatch.setattr(encoders, "shipped", lambda: [e for e in shipped if e.kind != "instantbooth"])
    assert METHODS["instantbooth"].unavailable_reason() and "instantbooth" not in registered_methods()
    monkeypatch.setattr(encoders, "shipped", lambda: shipped + [encoders.read(encoder, shipped=True)])
    assert default_method(registered_methods()) == "instantbooth"


def _first_unet_call(pipe, guidance: float) -> torch.Tensor:
    """The UNet's output of the first denoising step of `pipe(PROMPT)` (its CFG batch: [negative, positive])."""
    seen = []
    h = pipe.unet.register_forward_hook(lambda m, a, out: seen.append(out[0].detach().clone()))
    try:
        pipe(PROMPT, num_inference_steps=1, guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(0))
    finally:
        h.remove()
    return seen[0]


def test_uncond_beta_switches_the_adapters_off_in_the_unconditional_half_only(concept, encoder, subject_photos,
                                                                              tmp_path):
    guided = tune("instantbooth", subject_photos, "animal", tmp_path / "guided",
                  config={"encoder": str(encoder), "uncond_beta": 0.0})
    assert json.loads((guided / "concept.json").read_text())["instantbooth"]["uncond_beta"] == 0.0
    plain = _first_unet_call(_world(), 5.0)  # [2, 4, h, w]: no adapters anywhere
    paper = _first_unet_call(apply_concepts(_world(), [concept]), 5.0)  # adapters in both halves
    pipe = apply_concepts(_world(), [guided])
    image_guided = _first_unet_call(pipe, 5.0)
    assert pipe._boothkit_instantbooth.attached.condition.uncond_rows == 1
    assert (paper[0] - plain[0]).abs().max() > 1e-3  # the paper's way: the adapters act on the negative half too
    torch.testing.assert_close(image_guided[0], plain[0])  # here they do not ...
    torch.testing.assert_close(image_guided[1], paper[1])  # ... and the conditional half is the paper's
    # without guidance there is no negative half: every row gets beta, as the paper's
    torch.testing.assert_close(_first_unet_call(pipe, 1.0), _first_unet_call(apply_concepts(_world(), [concept]), 1.0))
    assert pipe._boothkit_instantbooth.attached.condition.uncond_rows == 0
