"""Every hostile or odd photo file (tests/hostile_photos.py) through every entry point that reads photos.

Entry points: `boothkit tune --images`, `boothkit generate --instant --images`, the app's upload (HTTP), and
`boothkit.images.decode` on bytes (what the pretraining data layer calls). A refused file gives, at each of them,
the same reason (the `why` words), naming the file, exit code 2 or the HTTP status, and nothing written; an
accepted odd file (CMYK, EXIF-rotated, 16-bit, palette, partly transparent) decodes to exactly the pixels the
corpus computes without boothkit, wherever it comes in. One run end to end through the real command line on the
world model with InstantBooth checks what a person reads: one line per skipped file, no traceback, no Pillow
warning, no third-party noise, no carriage returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from boothkit.app.limits import Limits
from boothkit.app.registry import MethodSpec
from boothkit.app.server import AppConfig
from boothkit.cli.main import app
from hostile_photos import ACCEPTED, CORPUS, REFUSED, Hostile
from test_app_support import ServerThread, standin_methods, upload, wait_job, world_photos

runner = CliRunner()
ENTRY_POINTS = ("tune", "generate --instant", "app upload", "decode")
#: the app's limits, wide enough for the odd files (its default pixel limit, 16.8 MP, refuses the bombs too)
LIMITS = Limits(max_upload_bytes=200_000)


def _files(tmp_path: Path, h: Hostile) -> tuple[Path, Path]:
    """-> (a folder holding only the file, the file)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    path = folder / h.name
    path.write_bytes(h.data())
    return folder, path


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- the app: one server for the module, with a method that records the pixels it is given --------------------
SEEN: dict[str, list[np.ndarray]] = {}


def _recording_methods() -> dict:
    """The stand-in method of test_app_support, recording the pixels of the photos each job hands the method
    (read with boothkit.inputs.load_image, as every method reads its photos), by job id."""
    from boothkit.inputs import load_image

    base = standin_methods(0.001)["standin"]

    def tune(images, class_noun, out, **kw):
        SEEN[Path(out).parent.name] = [np.asarray(load_image(p)) for p in images]
        return base.tune(images, class_noun, out, **kw)

    return {"record": MethodSpec("record", tune, base.apply)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = AppConfig(data=tmp_path_factory.mktemp("hostile-app"), methods=_recording_methods(), limits=LIMITS)
    with ServerThread(cfg) as s:
        yield s


def _mime(name: str) -> str:
    return {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}[name.rsplit(".", 1)[1]]


# -- refused files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("h", REFUSED, ids=lambda h: h.name)
def test_refused_everywhere_with_the_same_reason_and_nothing_written(h, entry, tmp_path, request):
    folder, path = _files(tmp_path, h)
    before = _listing(tmp_path)
    if entry == "decode":
        from boothkit.images import blank_reason, decode
        from boothkit.inputs import InputError

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rgb, alpha = decode(h.data(), h.name, with_alpha=True)
            except InputError as e:
                message = str(e)
            else:  # decodes, but shows nothing: what the data layer skips
                message = f"{h.name}: {blank_reason(rgb, alpha)}"
        assert not caught, [str(w.message) for w in caught]  # no Pillow warning before (or instead of) ours
        assert message.startswith(f"{h.name}: ") and h.why in message, message
        return
    if entry == "app upload":
        srv = request.getfixturevalue("server")
        jobs = _listing(srv.app.state.store.root / "jobs")
        r = upload(srv.url, {"name": "refused", "class_noun": "animal", "method": "record"},
                   [(h.name, h.data(), _mime(h.name))])
        detail = r.json()["detail"]
        assert r.status == h.status and detail.startswith(f"photo {h.name!r}: ") and h.why in detail, (r, detail)
        assert srv.app.state.store.name_taken("refused") is None  # no job queued
        assert _listing(srv.app.state.store.root / "jobs") == jobs  # no reference photo stored
        return
    out = tmp_path / "new" / "deep" / "out"
    if entry == "tune":
        args = ["tune", "--method", "instantbooth", "--images", str(folder), "--class", "animal", "--out", str(out)]
        named = f"{folder}: no usable photo: {path}: "
    else:
        args = ["generate", "a photo of sks animal", "--instant", "--images", str(path), "--out", str(out)]
        named = f"--images {path}: "  # one photo named on its own: one line, the file and the reason
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0] and h.why in lines[0], r.stderr
    assert "Traceback" not in r.output and "Warning" not in r.output
    assert _listing(tmp_path) == before  # not even --out's parent


# -- accepted odd files: the same pixels wherever they come in ------------------------------------------------
@pytest.mark.parametrize("h", ACCEPTED, ids=lambda h: h.name)
def test_accepted_odd_files_give_identical_pixels_at_every_entry_point(h, tmp_path, server):
    from boothkit.images import decode
    from boothkit.inputs import load_subject_images
    from boothkit.methods.instantbooth.inference import load_reference_images

    folder, path = _files(tmp_path, h)
    expected = h.expected()
    got = {
        "tune": load_subject_images(folder),  # what methods.tune trains on
        "generate --instant": load_reference_images([path]),  # what the CLI hands generate_instant
        "decode": [decode(h.data(), h.name)],  # the pretraining data layer's call
    }
    r = upload(server.url, {"name": "odd" + str(ACCEPTED.index(h)), "class_noun": "animal", "method": "record"},
               [(h.name, h.data(), _mime(h.name))])
    assert r.status == 202, r
    job = wait_job(server.url, r.json()["job"]["id"])
    assert job["status"] == "done" and job["n_images"] == 1, job
    got["app upload"] = SEEN[job["id"]]  # what the app stored and its job handed the method
    assert sorted(got) == sorted(ENTRY_POINTS)
    for entry, images in got.items():
        assert len(images) == 1, entry
        a = np.asarray(images[0])
        assert a.shape == expected.shape and a.dtype == np.uint8, (entry, a.shape)
        assert np.array_equal(a, expected), (entry, int(np.abs(a.astype(int) - expected).max()))


def test_app_skips_a_blank_photo_among_good_ones_with_a_warning(server):
    good = world_photos(2)
    clear = next(h for h in REFUSED if h.name == "transparent.png")
    r = upload(server.url, {"name": "withblank", "class_noun": "animal", "method": "record"},
               good + [(clear.name, clear.data(), "image/png")])
    assert r.status == 202, r
    body = r.json()
    assert body["job"]["n_images"] == 2
    assert body["warnings"] == ["skipped photo 'transparent.png': blank: every pixel is transparent "
                                "(nothing to learn from)"]
    job = wait_job(server.url, body["job"]["id"])
    assert job["status"] == "done" and len(SEEN[job["id"]]) == 2


def test_app_refuses_a_set_of_only_blank_photos(server):
    blank = [(h.name, h.data(), _mime(h.name)) for h in REFUSED if "blank" in h.why]
    assert len(blank) == 2
    r = upload(server.url, {"name": "allblank", "class_noun": "animal", "method": "record"}, blank)
    assert r.status == 400 and r.json()["detail"].startswith("every photo is blank (nothing to learn from): "), r
    assert "transparent.png" in r.json()["detail"] and "one-colour.jpg" in r.json()["detail"]


# -- end to end: the real command line, every file of the corpus in one folder --------------------------------
def test_tune_instantbooth_end_to_end_on_the_world_model(tmp_path):
    """Good world photos, every refused file and every accepted odd file in one folder, through `boothkit tune
    --method instantbooth` as a subprocess, stderr to a pipe: the concept is made from exactly the usable photos,
    and stderr holds one line per skipped file (file and reason) and nothing else a person would not want."""
    import json

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, data, _ in world_photos(3):
        (photos / name).write_bytes(data)
    for h in CORPUS:
        (photos / h.name).write_bytes(h.data())
    r = subprocess.run([sys.executable, "-m", "boothkit.cli.main", "tune", "--method", "instantbooth", "--images",
                        str(photos), "--class", "animal", "--out", str(tmp_path / "concept")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "concept" / "concept.json").read_text())
    assert meta["instantbooth"]["n_photos"] == 3 + len(ACCEPTED)
    lines = r.stderr.splitlines()
    skipped = [line for line in lines if line.startswith("warning: skipped ")]
    assert len(skipped) == len(REFUSED)
    for h in REFUSED:
        assert sum(f"skipped {photos / h.name}: " in line and h.why in line for line in skipped) == 1, h.name
    others = [line for line in lines if line not in skipped]
    assert all(line.startswith("warning: ") for line in others), others  # e.g. the photos-unlike-the-world one
    for noise in ("Traceback", "UserWarning", "DecompressionBomb", "decompression bomb DOS", "[transformers]",
                  "Loading", "\r"):
        assert noise not in r.stderr, noise
    assert "concept written to" in r.stdout


def test_app_warns_about_what_the_world_model_cannot_know(server):
    r = upload(server.url, {"name": "ratwarn", "class_noun": "rat", "method": "record"}, world_photos(2))
    assert r.status == 202, r
    (warning,) = r.json()["warnings"]
    assert warning.startswith("class_noun 'rat': the world model never read the word 'rat'")
    real = Path(__file__).parent / "data" / "dreambench" / "dog"
    photos = [(p.name, p.read_bytes(), "image/jpeg") for p in sorted(real.glob("*.jpg"))]
    r = upload(server.url, {"name": "realdog", "class_noun": "animal", "method": "record"}, photos)
    assert r.status == 202, r
    (warning,) = r.json()["warnings"]
    assert warning.startswith("the photos look unlike anything the world model was trained on")
