"""Shared helpers for the app tests (no tests here): a real server on a free loopback port, HTTP over urllib, a
multipart encoder, world reference photos, and a stand-in method.

The stand-in method is for testing the app's job machinery (queue, progress, persistence, resume), not for
testing personalisation: it trains nothing, sleeps per step, writes a checkpoint file per step, and its concept
applies as a no-op. Tests that exercise a real method use boothkit.methods when it registers one.

Run as a script it starts a server (for the kill-and-restart test):
    python tests/test_app_support.py --data DIR --port PORT [--delay S] [--workers N] [--real]
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# -- stand-in method ---------------------------------------------------------------------------------------------
def standin_methods(delay: float = 0.01) -> dict:
    """{'standin': resumable, 'standin-noresume': cannot resume} MethodSpecs for the app."""
    from boothkit.app.registry import MethodSpec

    def tune(images, class_noun, out, *, model, steps=None, resume=False, progress=None, identifier=None,
             config=None):
        out = Path(out)
        total = steps or 10
        ckpt = out.parent / "standin-checkpoint.json"
        start = 0
        if resume and ckpt.exists():
            start = json.loads(ckpt.read_text())["step"]
        elif ckpt.exists():
            ckpt.unlink()
        for step in range(start + 1, total + 1):
            time.sleep(delay)
            # atomic, as the real checkpoints are: a SIGKILL between write_text's truncate and its write would
            # leave an empty file for the resumed run to read
            part = ckpt.with_name(ckpt.name + ".part")
            part.write_text(json.dumps({"step": step}))
            os.replace(part, ckpt)
            if progress:
                progress(step, total)
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        meta = {"method": "standin", "class_noun": class_noun, "identifier": identifier or "sks", "steps": total,
                "resumed_from": start, "n_images": len(list(images)), "model": model, "config": config}
        (tmp / "concept.json").write_text(json.dumps(meta))
        tmp.rename(out)
        return out

    def apply(pipe, dirs):
        return pipe

    return {"standin": MethodSpec("standin", tune, apply, supports_resume=True),
            "standin-noresume": MethodSpec("standin-noresume", tune, apply, supports_resume=False)}


def lora_library(data: Path, concept: Path, model: str, name: str = "ratlora"):
    """An AppConfig whose library (at `data`) holds a copy of the LoRA concept folder `concept` as `name`, as a
    finished job leaves it, served with the real LoRA method on `model`."""
    import shutil

    from boothkit.app.registry import registered_methods
    from boothkit.app.server import AppConfig
    from boothkit.app.storage import Store

    store = Store(data)
    job = store.add_job(store.new_job_id(), concept=name, method="lora", class_noun="animal", model=model,
                        steps=3, n_images=5)
    copy = data.parent / f"{name}-copy"
    shutil.copytree(concept, copy)
    store.finish_job(job, copy)
    return AppConfig(data=data, model=model, methods={"lora": registered_methods()["lora"]}, preload=False)


# -- server ------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving create_app(cfg) in a thread on 127.0.0.1:<free port>; `with` starts and stops it."""

    def __init__(self, cfg):
        import uvicorn

        from boothkit.app.server import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(cfg)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


# -- HTTP --------------------------------------------------------------------------------------------------------
class Reply:
    def __init__(self, status, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Reply {self.status} {self.body[:300]!r}>"


def http(method: str, url: str, *, json_body=None, data: bytes | None = None, headers: dict | None = None,
         timeout: float = 120) -> Reply:
    headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.headers, e.read())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def multipart(fields: dict, files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """-> (body, content type) for form `fields` and `files` as (filename, bytes, mime), all under 'files'."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for name, data, mime in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                  f'Content-Type: {mime}\r\n\r\n'.encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def upload(base: str, fields: dict, files, headers: dict | None = None) -> Reply:
    body, ctype = multipart(fields, files)
    return http("POST", base + "/api/concepts", data=body, headers={"Content-Type": ctype, **(headers or {})})


def wait_job(base: str, job_id: str, until=("done", "failed"), timeout: float = 120, headers=None) -> dict:
    deadline = time.time() + timeout
    while True:
        job = http("GET", f"{base}/api/jobs/{job_id}", headers=headers).json()
        if job["status"] in until if isinstance(until, tuple) else until(job):
            return job
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} ({job['progress']}) after {timeout}s")
        time.sleep(0.1)


# -- photos ------------------------------------------------------------------------------------------------------
def world_photos(n: int = 3) -> list[tuple[str, bytes, str]]:
    """n reference photos of a held-out world animal, as PNG uploads."""
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    images, _ = render_references(heldout_concepts("animal")[0], n=n, seed=0)
    out = []
    for i, im in enumerate(images):
        b = io.BytesIO()
        im.save(b, format="PNG")
        out.append((f"ref-{i}.png", b.getvalue(), "image/png"))
    return out


def main(argv=None):
    import argparse

    import uvicorn

    from boothkit.app.server import AppConfig, create_app

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--real", action="store_true", help="the methods boothkit.methods registers, not the stand-in")
    a = p.parse_args(argv)
    cfg = AppConfig(data=a.data, methods=None if a.real else standin_methods(a.delay), workers=a.workers)
    uvicorn.run(create_app(cfg), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
