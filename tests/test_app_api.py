"""The JSON API over real HTTP on 127.0.0.1: the happy path, every bad input, and a bounded load test.

Concept jobs here use the stand-in method of test_app_support (it trains nothing; the job machinery is what is
tested). Generation is real: the shipped world model, 2-4 denoising steps.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import pytest
from PIL import Image

from boothkit.app.limits import Limits
from boothkit.app.server import AppConfig
from test_app_support import ServerThread, http, standin_methods, upload, wait_job, world_photos
from test_app_limits import png, png_claiming

LIMITS = Limits(max_upload_bytes=200_000, max_upload_pixels=512 * 512, max_steps=30, max_images_per_request=4,
                max_size=256, max_tune_steps=50)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = AppConfig(data=tmp_path_factory.mktemp("app-data"), methods=standin_methods(0.005), limits=LIMITS)
    with ServerThread(cfg) as s:
        yield s


@pytest.fixture(scope="module")
def photos():
    return world_photos(3)


@pytest.fixture(scope="module")
def concept(server, photos):
    """A finished concept 'bruno' (stand-in method, class 'rat')."""
    r = upload(server.url, {"name": "bruno", "class_noun": "rat", "steps": "5"}, photos)
    assert r.status == 202, r
    job = wait_job(server.url, r.json()["job"]["id"])
    assert job["status"] == "done", job
    return "bruno"


def gen(server, timeout: float = 120, **body):
    return http("POST", server.url + "/api/generate", json_body={"steps": 2, **body}, timeout=timeout)


# -- happy paths -------------------------------------------------------------------------------------------------
def test_openapi_documents_the_endpoints(server):
    spec = http("GET", server.url + "/openapi.json").json()
    paths = spec["paths"]
    assert {"/api/concepts", "/api/concepts/{name}", "/api/concepts/{name}/artifact", "/api/jobs/{job_id}",
            "/api/generate", "/api/images/{image_id}", "/api/methods"} <= set(paths)
    assert {"post", "get"} <= set(paths["/api/concepts"]) and {"get", "patch", "delete"} <= set(
        paths["/api/concepts/{name}"])
    assert "GenerateRequest" in spec["components"]["schemas"]


def test_page_is_served(server):
    r = http("GET", server.url + "/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    page = r.body.decode()
    for testid in ("photos", "concept-name", "class-noun", "method", "create", "prompt", "generate", "library"):
        assert f'data-testid="{testid}"' in page


def test_methods_lists_what_is_registered_with_a_default(server):
    r = http("GET", server.url + "/api/methods").json()
    assert r == {"methods": ["standin", "standin-noresume"], "default": "standin"}


def test_concept_lifecycle(server, photos):
    r = upload(server.url, {"name": "life", "class_noun": "rat", "steps": "6", "config": '{"rank": 4}'}, photos)
    assert r.status == 202, r
    body = r.json()
    assert body["concept"] == "life" and body["job"]["status"] in ("queued", "running", "done")
    assert body["job"]["method"] == "standin"  # the default
    job = wait_job(server.url, body["job"]["id"])
    assert job["status"] == "done" and job["progress"] == {"step": 6, "total": 6, "fraction": 1.0}
    assert job["n_images"] == 3 and job["error"] is None and job["config"] == {"rank": 4}

    names = [c["name"] for c in http("GET", server.url + "/api/concepts").json()]
    assert "life" in names
    c = http("GET", server.url + "/api/concepts/life").json()
    assert c["class_noun"] == "rat" and c["prompt_token"] == "<life>" and c["job_id"] == job["id"]

    z = http("GET", server.url + c["artifact_url"])
    assert z.status == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.body)) as zf:
        meta = json.loads(zf.read("life/concept.json"))
    assert meta["class_noun"] == "rat" and meta["n_images"] == 3 and meta["steps"] == 6

    r = http("PATCH", server.url + "/api/concepts/life", json_body={"name": "life2"})
    assert r.status == 200 and r.json()["name"] == "life2"
    assert http("GET", server.url + "/api/concepts/life").status == 404
    assert http("GET", server.url + "/api/concepts/life2/artifact").status == 200
    assert http("DELETE", server.url + "/api/concepts/life2").status == 204
    assert http("GET", server.url + "/api/concepts/life2").status == 404
    assert "life2" not in [c["name"] for c in http("GET", server.url + "/api/concepts").json()]
    assert not (server.app.state.store.concept_dir("life2")).exists()


def test_generate_images_are_stored_and_deterministic(server):
    r = gen(server, prompt="a photo of a rat", n=2, seed=7)
    assert r.status == 200, r
    ims = r.json()["images"]
    assert [i["seed"] for i in ims] == [7, 8] and r.json()["seed"] == 7
    assert ims[0]["steps"] == 2 and ims[0]["width"] == ims[0]["height"] == 64 and ims[0]["concepts"] == []
    first = http("GET", server.url + ims[0]["url"])
    assert first.status == 200 and first.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(first.body)).size == (64, 64)
    again = gen(server, prompt="a photo of a rat", n=1, seed=7, response="base64").json()["images"][0]
    assert base64.b64decode(again["base64_png"]) == first.body  # same seed and settings, same pixels
    listed = {i["id"] for i in http("GET", server.url + "/api/images").json()}
    assert {ims[0]["id"], ims[1]["id"], again["id"]} <= listed


def test_generate_with_a_named_scheduler(server):
    assert "euler_a" in http("GET", server.url + "/api/health").json()["schedulers"]
    own = gen(server, prompt="a photo of a rat", seed=3).json()["images"][0]
    r = gen(server, prompt="a photo of a rat", seed=3, scheduler="euler_a")
    assert r.status == 200, r
    im = r.json()["images"][0]
    assert im["scheduler"] == "euler_a" and own["scheduler"] is None
    assert http("GET", server.url + im["url"]).body != http("GET", server.url + own["url"]).body
    stored = {i["id"]: i for i in http("GET", server.url + "/api/images").json()}
    assert stored[im["id"]]["scheduler"] == "euler_a"  # persisted with the image's settings


def test_generate_random_seed_is_reported(server):
    r = gen(server, prompt="a rat").json()
    assert r["seed"] == r["images"][0]["seed"] and isinstance(r["seed"], int)


def test_generate_with_a_concept_substitutes_its_token(server, concept):
    r = gen(server, prompt=f"a <{concept}> on grass", seed=1)
    assert r.status == 200, r
    im = r.json()["images"][0]
    assert im["concepts"] == [concept] and im["model_prompt"] == "a sks rat on grass"
    assert im["prompt"] == f"a <{concept}> on grass"


def test_generate_with_several_concepts_in_one_prompt(server, photos, concept):
    r = upload(server.url, {"name": "second", "class_noun": "teddy bear", "steps": "2", "identifier": "zwx"},
               photos[:1])
    assert r.json()["job"]["identifier"] == "zwx"
    assert wait_job(server.url, r.json()["job"]["id"])["status"] == "done"
    r = gen(server, prompt=f"<{concept}> next to <second>", seed=2)
    assert r.status == 200, r
    im = r.json()["images"][0]
    assert im["concepts"] == [concept, "second"] and im["model_prompt"] == "sks rat next to zwx teddy bear"
    assert http("DELETE", server.url + "/api/concepts/second").status == 204
    _err(gen(server, prompt=f"<{concept}> next to <second>"), 404, "no concept named 'second'")


def test_each_request_gets_its_own_scheduler(server, monkeypatch):
    import boothkit.generate as g

    seen = []
    real = g.generate_images

    def spy(pipe, prompt, cfg, **kw):
        seen.append((pipe, pipe.scheduler))
        return real(pipe, prompt, cfg, **kw)

    monkeypatch.setattr(g, "generate_images", spy)
    assert gen(server, prompt="a rat", seed=1).status == 200
    assert gen(server, prompt="a rat", seed=1).status == 200
    base = server.app.state.engine.base()
    (p1, s1), (p2, s2) = seen
    assert s1 is not s2 and base.scheduler not in (s1, s2)
    assert p1 is not base and p1.unet is base.unet  # a shallow copy: same weights, own scheduler
    assert type(s1) is type(base.scheduler)


def test_out_of_memory_is_a_503_and_the_server_keeps_serving(server, monkeypatch):
    import torch

    import boothkit.generate as g

    real = g.generate_images
    calls = []

    def oom_once(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(g, "generate_images", oom_once)
    r = gen(server, prompt="a rat", seed=1)
    assert r.status == 503 and "out of memory" in r.json()["detail"] and "memory was freed" in r.json()["detail"]
    assert gen(server, prompt="a rat", seed=1).status == 200


# -- bad input: concepts ----------------------------------------------------------------------------------------
def _err(r, status, words):
    assert r.status == status, r
    detail = r.json()["detail"]
    assert words in detail, detail


def test_upload_count_limits(server, photos):
    r = http("POST", server.url + "/api/concepts", data=b"name=x&class_noun=dog",
             headers={"Content-Type": "application/x-www-form-urlencoded"})
    _err(r, 422, "files")
    _err(upload(server.url, {"name": "many", "class_noun": "rat"}, photos * 4), 400, "send 1-10 photos (got 12)")


@pytest.mark.parametrize("file, status, words", [
    (("big.png", b"\x89PNG" + b"\x00" * 200_001, "image/png"), 413,
     "'big.png': larger than the limit of 200000 bytes"),
    (("wide.png", png(600, 600), "image/png"), 413, "'wide.png': 600x600 pixels (0.36 MP) is over the 0.262 MP limit"),
    (("bomb.png", png_claiming(100_000, 100_000), "image/png"), 413, "'bomb.png'"),
    (("notes.txt", b"just some text", "text/plain"), 400, "'notes.txt': not a JPEG, PNG or WebP image (it is text)"),
    (("cut.png", png(128, 128)[:60], "image/png"), 400, "'cut.png'"),
    (("empty.png", b"", "image/png"), 400, "'empty.png': the file is empty (0 bytes)"),
    (("tiny.png", png(32, 32), "image/png"), 400, "'tiny.png': 32x32 is too small (the shorter side must be at least 64 px)"),
])
def test_upload_bad_photo(server, photos, file, status, words):
    r = upload(server.url, {"name": "badphoto", "class_noun": "rat"}, photos[:1] + [file])
    _err(r, status, words)
    assert server.app.state.store.name_taken("badphoto") is None  # nothing was queued


@pytest.mark.parametrize("fields, status, words", [
    ({"name": "../evil", "class_noun": "rat"}, 400, "concept name '../evil' is not allowed"),
    ({"name": "a/b", "class_noun": "rat"}, 400, "is not allowed"),
    ({"name": "My Dog", "class_noun": "rat"}, 400, "is not allowed"),
    ({"name": "ok", "class_noun": "rat; rm -rf /"}, 400, "class_noun"),
    ({"name": "ok"}, 422, "class_noun"),
    ({"class_noun": "rat"}, 422, "name"),
    ({"name": "ok", "class_noun": "rat", "method": "nope"}, 400, "unknown method 'nope'; this server offers"),
    ({"name": "ok", "class_noun": "rat", "steps": "0"}, 400, "steps must be between 1 and 50"),
    ({"name": "ok", "class_noun": "rat", "steps": "51"}, 400, "steps must be between 1 and 50"),
    ({"name": "ok", "class_noun": "rat", "steps": "ten"}, 422, "steps"),
    ({"name": "ok", "class_noun": "rat", "config": "{rank: 4}"}, 400, "config is not valid JSON"),
    ({"name": "ok", "class_noun": "rat", "config": "[1, 2]"}, 400, "config must be a JSON object"),
    ({"name": "ok", "class_noun": "rat", "config": "{}" + " " * 4000}, 400, "the limit is 4000"),
    ({"name": "ok", "class_noun": "rat", "identifier": "two words"}, 400, "identifier 'two words' is not allowed"),
    ({"name": "ok", "class_noun": "rat", "identifier": "<a/b>"}, 400, "is not allowed"),
])
def test_upload_bad_fields(server, photos, fields, status, words):
    _err(upload(server.url, fields, photos[:1]), status, words)


def test_upload_name_taken(server, photos, concept):
    _err(upload(server.url, {"name": concept, "class_noun": "rat"}, photos[:1]), 409, "already exists")


def test_body_limits(server):
    # the declared length alone is refused, before any of the body is read
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/concepts")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(LIMITS.max_body_bytes + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and f"the limit is {LIMITS.max_body_bytes}".encode() in resp.read()
    conn.close()
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/api/generate", body=iter([b'{"prompt": "a rat"}']),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 411 and b"Content-Length" in resp.read()
    conn.close()


def test_concept_endpoints_bad_names(server, concept):
    _err(http("GET", server.url + "/api/concepts/nosuch"), 404, "no concept named 'nosuch'")
    _err(http("DELETE", server.url + "/api/concepts/nosuch"), 404, "no concept named")
    _err(http("GET", server.url + "/api/concepts/nosuch/artifact"), 404, "no concept named")
    r = http("GET", server.url + "/api/concepts/..%2F..%2Fboothkit.db")  # the router sees a/b/c: no such path
    assert r.status == 404 and b"SQLite" not in r.body
    _err(http("GET", server.url + "/api/concepts/%2E%2E/artifact"), 400, "is not allowed")
    _err(http("PATCH", server.url + f"/api/concepts/{concept}", json_body={"name": "../x"}), 400, "is not allowed")
    _err(http("PATCH", server.url + "/api/concepts/nosuch", json_body={"name": "x"}), 404, "no concept named")
    _err(http("PATCH", server.url + f"/api/concepts/{concept}", json_body={}), 422, "name")


def test_rename_onto_an_existing_name_is_refused(server, photos, concept):
    r = upload(server.url, {"name": "other", "class_noun": "rat", "steps": "2"}, photos[:1])
    assert wait_job(server.url, r.json()["job"]["id"])["status"] == "done"
    _err(http("PATCH", server.url + "/api/concepts/other", json_body={"name": concept}), 409, "already exists")
    assert http("GET", server.url + "/api/concepts/other").status == 200


def test_jobs_and_images_bad_ids(server):
    _err(http("GET", server.url + "/api/jobs/0123456789abcdef"), 404, "no job")
    _err(http("GET", server.url + "/api/jobs/..etc"), 404, "no job")
    _err(http("GET", server.url + "/api/images/" + "0" * 32), 404, "no image")
    _err(http("GET", server.url + "/api/images/..boothkit.db"), 404, "no image")
    r = http("GET", server.url + "/api/images/..%2Fboothkit.db")
    assert r.status == 404 and b"SQLite" not in r.body


# -- bad input: generate -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "a" * 1001}, 400, "prompt is 1001 characters; the limit is 1000"),
    ({"prompt": "  "}, 400, "prompt is empty"),
    ({"prompt": "a rat", "negative_prompt": "b" * 1001}, 400, "negative_prompt is 1001 characters"),
    ({"prompt": "a rat", "n": 0}, 400, "n must be between 1 and 4 (got 0)"),
    ({"prompt": "a rat", "n": 5}, 400, "n must be between 1 and 4 (got 5)"),
    ({"prompt": "a rat", "steps": 0}, 400, "steps must be between 1 and 30 (got 0)"),
    ({"prompt": "a rat", "steps": 31}, 400, "steps must be between 1 and 30 (got 31)"),
    ({"prompt": "a rat", "width": 65}, 400, "width must be a multiple of 8 between 8 and 256 (got 65)"),
    ({"prompt": "a rat", "height": 512}, 400, "height must be a multiple of 8 between 8 and 256 (got 512)"),
    ({"prompt": "a rat", "guidance": 100}, 422, "guidance"),
    ({"prompt": "a rat", "seed": -1}, 422, "seed"),
    ({"prompt": "a rat", "response": "zip"}, 422, "response"),
    ({"steps": 2}, 422, "prompt"),
    ({"prompt": "a <nosuch> rat"}, 404, "no concept named 'nosuch'"),
    ({"prompt": "a rat", "concepts": ["../x"]}, 400, "is not allowed"),
    ({"prompt": "a rat", "scheduler": "DDIMScheduler"}, 400, "unknown scheduler 'DDIMScheduler'; choose from"),
])
def test_generate_bad_input(server, body, status, words):
    _err(http("POST", server.url + "/api/generate", json_body={"steps": 2, **body}), status, words)


def test_generate_selected_concept_must_be_in_prompt(server, concept):
    _err(gen(server, prompt="a rat", concepts=[concept]), 400, f"does not mention <{concept}>")


def test_generate_malformed_json(server):
    r = http("POST", server.url + "/api/generate", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 422


# -- load ----------------------------------------------------------------------------------------------------------
def test_twenty_concurrent_generate_requests(server, photos):
    """20 generate requests at once (and a concept job running meanwhile): all succeed, every image is kept."""
    before = {i["id"] for i in http("GET", server.url + "/api/images?limit=500").json()}
    job = upload(server.url, {"name": "during-load", "class_noun": "rat", "steps": "20"}, photos).json()["job"]
    start = threading.Barrier(20)

    def one(i):
        start.wait()
        # generations run one at a time: the last waits for 19 others and a training job (a hang guard, sized for a
        # loaded 2-core machine)
        return gen(server, timeout=900, prompt=f"a rat number {i}", seed=1000 + i)

    with ThreadPoolExecutor(20) as ex:
        replies = list(ex.map(one, range(20)))
    assert [r.status for r in replies] == [200] * 20, [r for r in replies if r.status != 200][:3]
    made = [r.json()["images"][0] for r in replies]
    assert sorted(m["seed"] for m in made) == list(range(1000, 1020))
    ids = {m["id"] for m in made}
    assert len(ids) == 20
    after = {i["id"] for i in http("GET", server.url + "/api/images?limit=500").json()}
    assert ids <= after and len(after - before) == 20
    for m in made[:: 5]:
        assert http("GET", server.url + m["url"]).status == 200
    assert wait_job(server.url, job["id"])["status"] == "done"
