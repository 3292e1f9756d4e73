"""`boothkit export`: concepts as kohya-layout LoRA and A1111 embedding files, read back by diffusers' own loaders
(which accept those layouts, as AUTOMATIC1111 and ComfyUI do)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from boothkit.inputs import InputError
from boothkit.methods import apply_concepts, tune
from boothkit.methods.webui import export_concept
from boothkit.pipeline import load_pipeline

from conftest import FAST, max_pixel_diff, plain_pipeline, sample


@pytest.fixture(scope="module")
def lora_concept(tmp_path_factory, tiny_model, subject_photos):
    """UNet and text-encoder LoRA with alpha != rank, so the export must carry the scale."""
    out = tmp_path_factory.mktemp("export-lora") / "rat"
    return tune("lora", subject_photos, "animal", out, model=tiny_model, steps=3,
                config={**FAST, "rank": 4, "alpha": 2.0, "train_text_encoder": True, "lr": 1e-2})


@pytest.fixture(scope="module")
def ti_concept(tmp_path_factory, tiny_model, subject_photos):
    out = tmp_path_factory.mktemp("export-ti") / "rat"
    return tune("ti", subject_photos, "animal", out, model=tiny_model, steps=3, config={**FAST, "num_vectors": 2})


def _ours(model, concept, prompt):
    pipe = apply_concepts(load_pipeline(model, device="cpu", dtype="fp32", progress=False), [concept])
    pipe.set_progress_bar_config(disable=True)
    return sample(pipe, prompt)


def test_lora_exports_in_kohya_layout_and_diffusers_draws_the_same(lora_concept, tiny_model, tmp_path):
    out = tmp_path / "webui"
    record = export_concept(lora_concept, out, name="ratlora")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "lora"]
    assert record["files"] == ["lora/ratlora.safetensors"]
    assert record["prompt"] == "a photo of sks animal <lora:ratlora:1>"
    assert json.loads((out / "export.json").read_text()) == record
    tensors = load_file(str(out / "lora/ratlora.safetensors"))
    assert any(k.startswith("lora_unet_") for k in tensors)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_") for k in tensors)  # kohya's SD1 names
    assert all(k.startswith(("lora_unet_", "lora_te_")) and "." not in k.split(".")[0][5:]
               and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in tensors)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in tensors
    alphas = {k: float(v) for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas and set(alphas.values()) == {2.0}
    assert len(alphas) * 3 == len(tensors)  # down, up and alpha for every adapted layer
    with safe_open(str(out / "lora/ratlora.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0" and meta["boothkit_method"] == "lora"

    pipe = plain_pipeline(tiny_model)  # diffusers alone, reading the kohya file
    pipe.load_lora_weights(str(out / "lora"), weight_name="ratlora.safetensors")
    theirs = sample(pipe, "a photo of sks animal")
    assert max_pixel_diff(theirs, _ours(tiny_model, lora_concept, "a photo of sks animal")) <= 1
    assert max_pixel_diff(theirs, sample(plain_pipeline(tiny_model), "a photo of sks animal")) > 0


def test_ti_exports_an_a1111_embedding_named_as_its_trigger_word(ti_concept, tiny_model, tmp_path):
    out = tmp_path / "webui"
    record = export_concept(ti_concept, out, name="ratemb")
    assert record["files"] == ["embeddings/ratemb.safetensors"]
    assert record["prompt"] == "a photo of ratemb animal"
    emb = load_file(str(out / "embeddings/ratemb.safetensors"))
    assert list(emb) == ["emb_params"] and emb["emb_params"].shape == (2, 32)
    assert torch.equal(emb["emb_params"], load_file(str(ti_concept / "learned_embeds.safetensors"))["<sks>"])

    pipe = plain_pipeline(tiny_model)
    pipe.load_textual_inversion(str(out / "embeddings/ratemb.safetensors"), token="ratemb")
    assert max_pixel_diff(sample(pipe, record["prompt"]), _ours(tiny_model, ti_concept, "a photo of <sks> animal")) <= 1


def test_default_name_is_the_concept_folder(ti_concept, tmp_path):
    record = export_concept(ti_concept, tmp_path / "w")
    assert record["name"] == "rat" and (tmp_path / "w/embeddings/rat.safetensors").is_file()


@pytest.mark.parametrize("method,words", [("instantbooth", "install_instantbooth")])
def test_methods_without_a_webui_file_are_refused_with_what_to_do(tmp_path, method, words):
    concept = tmp_path / "c"
    concept.mkdir()
    (concept / "concept.json").write_text(json.dumps({"method": method, "tokens": ["sks"]}))
    with pytest.raises(InputError, match=words):
        export_concept(concept, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def custom_concept(tmp_path_factory, tiny_model, subject_photos, second_subject_photos):
    """Two subjects trained jointly (<new1>, <new2>), lr high enough that the change shows in 3 steps."""
    out = tmp_path_factory.mktemp("export-custom") / "pair"
    return tune("custom", subject_photos, "animal", out, model=tiny_model, steps=3,
                subjects=[(second_subject_photos, "food")], config={**FAST, "lr": 1e-2, "prior_preservation": False})


def test_custom_diffusion_exports_its_weight_changes_as_a_lora_and_each_token(custom_concept, tiny_model, tmp_path):
    prompt = "a photo of <new1> animal and <new2> food"
    record = export_concept(custom_concept, tmp_path / "exact", name="pqz")
    assert record["files"] == ["embeddings/pqz-2.safetensors", "embeddings/pqz.safetensors", "lora/pqz.safetensors"]
    assert record["prompt"] == "a photo of pqz animal and pqz-2 food <lora:pqz:1>"
    assert record["lora_relative_error"] < 1e-5  # every non-zero singular value: the change itself
    tensors = load_file(str(tmp_path / "exact/lora/pqz.safetensors"))
    assert tensors and all("_attn2_to_k." in k or "_attn2_to_v." in k for k in tensors)  # what Custom trains

    pipe = plain_pipeline(tiny_model)  # diffusers alone
    pipe.load_lora_weights(str(tmp_path / "exact/lora"), weight_name="pqz.safetensors")
    for name in ("pqz", "pqz-2"):
        pipe.load_textual_inversion(str(tmp_path / f"exact/embeddings/{name}.safetensors"), token=name)
    theirs = sample(pipe, "a photo of pqz animal and pqz-2 food")
    assert max_pixel_diff(theirs, _ours(tiny_model, custom_concept, prompt)) <= 1
    assert max_pixel_diff(theirs, sample(plain_pipeline(tiny_model), prompt)) > 0

    rank1 = export_concept(custom_concept, tmp_path / "r1", name="pqz", rank=1)  # the best rank-1 fit
    assert 0 < rank1["lora_relative_error"] < 1
    down = [v for k, v in load_file(str(tmp_path / "r1/lora/pqz.safetensors")).items() if k.endswith("lora_down.weight")]
    assert down and all(v.shape[0] == 1 for v in down)


def test_full_dreambooth_exports_an_extracted_lora_that_moves_the_base_towards_it(tmp_path, tiny_model,
                                                                                  subject_photos):
    import numpy as np

    concept = tune("dreambooth", subject_photos, "animal", tmp_path / "db", model=tiny_model, steps=3,
                   config={**FAST, "validation_images": 0, "lr": 1e-3, "prior_preservation": False,
                           "train_text_encoder": True})
    record = export_concept(concept, tmp_path / "w", name="dbx", rank=0)
    assert record["files"] == ["lora/dbx.safetensors"] and record["prompt"] == "a photo of sks animal <lora:dbx:1>"
    assert record["lora_relative_error"] < 1e-5 and 0 < record["change_outside_the_lora"] < 1
    keys = load_file(str(tmp_path / "w/lora/dbx.safetensors"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)
    assert any("_ff_net_" in k for k in keys) and not any("resnets" in k for k in keys)

    prompt = "a photo of sks animal"
    pipe = plain_pipeline(tiny_model)
    pipe.load_lora_weights(str(tmp_path / "w/lora"), weight_name="dbx.safetensors")
    extracted = np.asarray(sample(pipe, prompt), dtype=np.float64)
    tuned = np.asarray(_ours(tiny_model, concept, prompt), dtype=np.float64)
    base = np.asarray(sample(plain_pipeline(tiny_model), prompt), dtype=np.float64)
    assert np.abs(extracted - tuned).mean() < np.abs(base - tuned).mean()  # the LoRA carries most of the change
    assert export_concept(concept, tmp_path / "w2", name="dbx", rank=1)["lora_relative_error"] > 1e-3


def test_custom_diffusion_with_a_trained_bias_is_refused(tmp_path, tiny_model, subject_photos):
    concept = tune("custom", subject_photos, "animal", tmp_path / "c", model=tiny_model, steps=1,
                   config={**FAST, "validation_images": 0, "train_q_out": True, "prior_preservation": False})
    with pytest.raises(InputError, match="bias"):
        export_concept(concept, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_arguments_write_nothing(ti_concept, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        export_concept(ti_concept, full)
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]
    with pytest.raises(InputError, match="--name"):
        export_concept(ti_concept, tmp_path / "a", name="../evil")
    with pytest.raises(InputError, match="format"):
        export_concept(ti_concept, tmp_path / "b", fmt="ckpt")
    with pytest.raises(InputError, match="not a concept"):
        export_concept(tmp_path, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_cli_export(ti_concept, tmp_path):
    from typer.testing import CliRunner

    from boothkit.cli.main import app

    r = CliRunner().invoke(app, ["export", str(ti_concept), "--out", str(tmp_path / "w"), "--name", "ratemb"])
    assert r.exit_code == 0, r.output
    assert "embeddings/ratemb.safetensors" in r.output and "prompt: a photo of ratemb animal" in r.output
    r = CliRunner().invoke(app, ["export", str(ti_concept), "--out", str(tmp_path / "w")])
    assert r.exit_code == 2 and "not empty" in r.output


def test_app_serves_the_webui_files_of_a_concept(tmp_path):
    import io
    import zipfile

    from boothkit.app.registry import registered_methods
    from boothkit.app.server import AppConfig
    from test_app_support import ServerThread, http, standin_methods, upload, wait_job, world_photos

    methods = {"ti": registered_methods()["ti"], **standin_methods(0.001)}
    with ServerThread(AppConfig(data=tmp_path / "data", methods=methods, preload=False)) as s:
        r = upload(s.url, {"name": "ratti", "class_noun": "rat", "steps": "2", "method": "ti",
                           "config": '{"validation_images": 0}'}, world_photos(2))
        assert r.status == 202, r
        assert wait_job(s.url, r.json()["job"]["id"], timeout=300)["status"] == "done"
        c = http("GET", s.url + "/api/concepts/ratti").json()
        assert c["webui_url"] == "/api/concepts/ratti/webui"
        z = http("GET", s.url + c["webui_url"])
        assert z.status == 200 and z.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(z.body)) as zf:
            assert sorted(zf.namelist()) == ["ratti-webui/embeddings/ratti.safetensors", "ratti-webui/export.json"]
            record = json.loads(zf.read("ratti-webui/export.json"))
        assert record["method"] == "ti" and record["prompt"].startswith("a photo of ratti ")
        assert c["curves_url"] == "/api/concepts/ratti/curves.png"  # a trained concept has training curves
        png = http("GET", s.url + c["curves_url"])
        assert png.status == 200 and png.headers["content-type"] == "image/png" and png.body[:4] == b"\x89PNG"

        r = upload(s.url, {"name": "stand", "class_noun": "rat", "steps": "2", "method": "standin"}, world_photos(2))
        assert wait_job(s.url, r.json()["job"]["id"])["status"] == "done"
        assert http("GET", s.url + "/api/concepts/stand").json()["webui_url"] is None
        assert http("GET", s.url + "/api/concepts/stand").json()["curves_url"] is None  # the stand-in logs nothing
        assert http("GET", s.url + "/api/concepts/stand/curves.png").status == 404
        r = http("GET", s.url + "/api/concepts/stand/webui")
        assert r.status == 409 and "no webui files" in r.json()["detail"]
        assert not [p for p in (tmp_path / "data" / "trash").iterdir()]  # nothing left behind


def test_app_webui_downloads_at_once_all_succeed_and_leave_nothing(tmp_path, tiny_model, lora_concept, monkeypatch):
    """Each LoRA export loads a base pipeline and applies the concept; loads patch process-wide hooks, so they are
    serialised (pipeline.PIPELINE_LOCK): two at once used to break every later load of the server."""
    import io
    import threading
    import zipfile

    from test_app_support import ServerThread, http, lora_library

    data = tmp_path / "data"
    with ServerThread(lora_library(data, lora_concept, tiny_model)) as s:
        url = s.url + "/api/concepts/ratlora/webui"
        got = []
        threads = [threading.Thread(target=lambda: got.append(http("GET", url))) for _ in range(3)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert [r.status for r in got] == [200, 200, 200], got[0].body[:300]
        with zipfile.ZipFile(io.BytesIO(got[0].body)) as zf:
            record = json.loads(zf.read("ratlora-webui/export.json"))
        assert record["concept"] == "ratlora" and str(data) not in json.dumps(record)  # no server path in the zip
        g = http("POST", s.url + "/api/generate", json_body={"prompt": "a photo of <ratlora>", "steps": 2})
        assert g.status == 200, g.body[:300]  # loads still work afterwards

        def fail(self, *a, **k):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(zipfile.ZipFile, "write", fail)
        assert http("GET", url).status == 500
    assert not [p for p in (data / "trash").iterdir() if p.suffix == ".zip"]  # the failed zip was removed
