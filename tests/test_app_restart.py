"""A server killed (SIGKILL) mid-job and restarted: every finished concept and image is still there, the interrupted
resumable job continues from its last checkpoint, and the one that cannot resume is failed with the reason."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from test_app_support import free_port, http, upload, wait_job, world_photos

SUPPORT = Path(__file__).with_name("test_app_support.py")


def start(data: Path, log: Path, *extra: str):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(SUPPORT), "--data", str(data), "--port", str(port), "--delay",
                             "0.05", "--workers", "2", *extra], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if http("GET", url + "/api/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not come up in 180 s")


def test_kill_mid_job_and_restart(tmp_path):
    data, log = tmp_path / "data", tmp_path / "server.log"
    photos = world_photos(2)
    proc, url = start(data, log)
    try:
        r = upload(url, {"name": "finished", "class_noun": "rat", "steps": "3"}, photos)
        assert wait_job(url, r.json()["job"]["id"])["status"] == "done"
        image = http("POST", url + "/api/generate", json_body={"prompt": "a <finished>", "steps": 2, "seed": 3})
        assert image.status == 200, image
        image = image.json()["images"][0]
        png = http("GET", url + image["url"]).body

        slow = upload(url, {"name": "slow", "class_noun": "rat", "steps": "200"}, photos).json()["job"]
        fragile = upload(url, {"name": "fragile", "class_noun": "rat", "steps": "200", "method": "standin-noresume"},
                         photos).json()["job"]
        at = wait_job(url, slow["id"], until=lambda j: j["progress"]["step"] >= 20, timeout=60)
        assert at["status"] == "running"
        assert wait_job(url, fragile["id"], until=lambda j: j["status"] == "running", timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    proc, url = start(data, log)
    try:
        names = [c["name"] for c in http("GET", url + "/api/concepts").json()]
        assert names == ["finished"]  # the finished concept survived; nothing half-made appeared
        assert http("GET", url + image["url"]).body == png  # so did the image, byte for byte

        failed = http("GET", url + f"/api/jobs/{fragile['id']}").json()
        assert failed["status"] == "failed"
        assert "interrupted at step" in failed["error"] and "cannot resume" in failed["error"]

        job = http("GET", url + f"/api/jobs/{slow['id']}").json()
        assert job["note"].startswith("interrupted at step") and "resumed" in job["note"]
        interrupted_at = int(job["note"].split("step ")[1].split("/")[0])
        assert interrupted_at >= 20
        job = wait_job(url, slow["id"], timeout=120)
        assert job["status"] == "done" and job["attempts"] == 2, (job, log.read_text()[-3000:])
        z = http("GET", url + "/api/concepts/slow/artifact")
        meta = json.loads(zipfile.ZipFile(io.BytesIO(z.body)).read("slow/concept.json"))
        # the stand-in checkpoints every step; the reported step lags it by at most the progress throttle
        assert meta["resumed_from"] >= interrupted_at
        assert sorted(c["name"] for c in http("GET", url + "/api/concepts").json()) == ["finished", "slow"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.slow
def test_kill_mid_training_and_resume_with_a_real_method(tmp_path):
    """The same with a real method: the fastest offered method that trains (the default, unless the default is
    InstantBooth, which has no training to interrupt). Training continues from its checkpoint."""
    from boothkit.app.registry import ordered, registered_methods
    from boothkit.methods import METHODS

    methods = registered_methods()
    trainers = [m for m in ordered(methods) if METHODS[m].recipe is not None]
    if not trainers:
        pytest.skip("boothkit.methods offers no method that trains")
    default = trainers[0]
    data, log = tmp_path / "data", tmp_path / "server.log"
    proc, url = start(data, log, "--real")
    try:
        r = upload(url, {"name": "resumed", "class_noun": "rat", "steps": "60", "method": default,
                         "config": json.dumps({"validation_images": 0, "checkpoint_every": 5})}, world_photos(3))
        assert r.status == 202, r
        job = r.json()["job"]
        assert job["method"] == default
        wait_job(url, job["id"], until=lambda j: j["progress"]["step"] >= 12, timeout=600)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    proc, url = start(data, log, "--real")
    try:
        after = http("GET", url + f"/api/jobs/{job['id']}").json()
        assert after["note"].startswith("interrupted at step") and "resumed" in after["note"], after
        done = wait_job(url, job["id"], timeout=1200)
        assert done["status"] == "done" and done["attempts"] == 2, done
        z = http("GET", url + "/api/concepts/resumed/artifact")
        meta = json.loads(zipfile.ZipFile(io.BytesIO(z.body)).read("resumed/concept.json"))
        assert meta["training"]["first_step"] >= 10  # continued from a checkpoint, not from step 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
