"""The app with the real methods of boothkit.methods (slow: real training on the CPU, a few steps).

Skipped, with the reason, while boothkit.methods registers no method.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from boothkit.app.registry import default_method, registered_methods
from boothkit.methods import METHODS
from boothkit.app.server import AppConfig
from test_app_support import ServerThread, http, upload, wait_job, world_photos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def methods():
    m = registered_methods()
    if not m:
        pytest.skip("boothkit.methods registers no method yet")
    return m


def _config(method: str) -> str:
    """No validation grids for methods that train; encoder methods take none of the training settings."""
    return json.dumps({"validation_images": 0} if METHODS[method].recipe is not None else {})


def test_default_method_concept_via_api(methods, tmp_path):
    """Create a concept with the default method (4 steps, no validation grids), then generate with it."""
    default = default_method(methods)
    with ServerThread(AppConfig(data=tmp_path / "data", methods=methods)) as s:
        assert http("GET", s.url + "/api/methods").json()["default"] == default
        r = upload(s.url, {"name": "rat1", "class_noun": "rat", "steps": "4",
                           "config": _config(default)}, world_photos(3))
        assert r.status == 202, r
        job = wait_job(s.url, r.json()["job"]["id"], timeout=1200)
        assert job["status"] == "done", job
        trains = METHODS[default].recipe is not None  # encoder methods (InstantBooth) take no training step
        assert job["progress"]["step"] == job["progress"]["total"] == (4 if trains else 1)
        z = http("GET", s.url + "/api/concepts/rat1/artifact")
        names = zipfile.ZipFile(io.BytesIO(z.body)).namelist()
        meta = json.loads(zipfile.ZipFile(io.BytesIO(z.body)).read("rat1/concept.json"))
        assert meta["method"] == default and any(n.endswith(".safetensors") for n in names)
        g = http("POST", s.url + "/api/generate", json_body={"prompt": "a photo of <rat1>", "steps": 4, "seed": 0})
        assert g.status == 200, g
        im = g.json()["images"][0]
        assert im["model_prompt"] == f"a photo of {meta['tokens'][0]} rat" and im["concepts"] == ["rat1"]
        base = http("POST", s.url + "/api/generate",
                    json_body={"prompt": f"a photo of {meta['tokens'][0]} rat", "steps": 4, "seed": 0}).json()
        # same prompt text and seed, with and without the concept's weights: different pixels
        assert http("GET", s.url + im["url"]).body != http("GET", s.url + base["images"][0]["url"]).body


def test_two_concepts_in_one_prompt(methods, tmp_path):
    """Two concepts made with the default method, used together in one prompt."""
    default = default_method(methods)
    with ServerThread(AppConfig(data=tmp_path / "data", methods=methods)) as s:
        photos = world_photos(2)
        for name, token in (("first", "sks"), ("second", "olis")):  # both one token (InstantBooth needs that)
            r = upload(s.url, {"name": name, "class_noun": "rat", "steps": "2", "identifier": token,
                               "config": _config(default)}, photos)
            assert wait_job(s.url, r.json()["job"]["id"], timeout=1200)["status"] == "done"
        g = http("POST", s.url + "/api/generate", json_body={"prompt": "<first> and <second>", "steps": 4})
        assert g.status == 200, g
        assert g.json()["images"][0]["concepts"] == ["first", "second"]
        assert g.json()["images"][0]["model_prompt"] == "sks rat and olis rat"
