"""The auth token: checked on every request (page, API, OpenAPI); a non-loopback host without one is refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from boothkit.app.server import AppConfig
from test_app_support import ServerThread, http, standin_methods

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = AppConfig(data=tmp_path_factory.mktemp("auth-data"), token=TOKEN, methods=standin_methods(),
                    preload=False)
    with ServerThread(cfg) as s:
        yield s


@pytest.mark.parametrize("path", ["/", "/openapi.json", "/docs", "/api/health", "/api/concepts", "/api/methods",
                                  "/api/jobs", "/api/images/" + "0" * 32, "/nonexistent"])
def test_every_path_needs_the_token(server, path):
    r = http("GET", server.url + path)
    assert r.status == 401 and "token" in r.json()["detail"]
    assert http("GET", server.url + path, headers={"Authorization": "Bearer wrong-token-123"}).status == 401


def test_posts_need_the_token_too(server):
    r = http("POST", server.url + "/api/generate", json_body={"prompt": "a rat"})
    assert r.status == 401
    r = http("DELETE", server.url + "/api/concepts/x")
    assert r.status == 401


def test_token_in_header_or_cookie(server):
    assert http("GET", server.url + "/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert http("GET", server.url + "/api/health", headers={"X-Boothkit-Token": TOKEN}).status == 200
    assert http("GET", server.url + "/api/health", headers={"Cookie": f"boothkit_token={TOKEN}"}).status == 200
    assert http("GET", server.url + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_page_token_link_sets_a_cookie_and_drops_the_token_from_the_url(server):
    r = http("GET", server.url + f"/?token={TOKEN}")
    assert r.status == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert f"boothkit_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    r = http("GET", server.url + "/", headers={"Cookie": f"boothkit_token={TOKEN}"})
    assert r.status == 200 and b"boothkit" in r.body
    assert http("GET", server.url + "/?token=nope-nope-nope").status == 401


def test_serve_refuses_a_public_host_without_a_token(tmp_path, monkeypatch):
    from boothkit.cli.main import app

    monkeypatch.delenv("BOOTHKIT_AUTH_TOKEN", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1", "--data", str(tmp_path / "d")])
    assert r.exit_code == 2
    assert "refusing to listen on '0.0.0.0' without an auth token" in r.output
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_serve_refuses_a_short_token(tmp_path):
    from boothkit.cli.main import app

    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--auth-token", "abc", "--data", str(tmp_path)])
    assert r.exit_code == 2 and "at least 8 characters" in r.output


def test_query_token_only_on_the_page(server):
    assert http("GET", server.url + f"/api/health?token={TOKEN}").status == 401


def test_cross_site_posts_are_refused(server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = http("POST", server.url + "/api/generate", json_body={"prompt": "a rat"},
             headers={**auth, "Origin": "http://evil.example"})
    assert r.status == 403 and "cross-origin POST from 'http://evil.example' refused" in r.json()["detail"]
    r = http("DELETE", server.url + "/api/concepts/x", headers={**auth, "Origin": "http://evil.example"})
    assert r.status == 403
    # the page's own origin is fine
    r = http("DELETE", server.url + "/api/concepts/x", headers={**auth, "Origin": server.url})
    assert r.status == 404


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    cfg = AppConfig(data=tmp_path_factory.mktemp("open-data"), methods=standin_methods(), preload=False)
    with ServerThread(cfg) as s:
        yield s


def test_without_a_token_only_loopback_host_names_are_served(open_server):
    assert http("GET", open_server.url + "/api/health").status == 200
    for host in (f"localhost:{open_server.port}", f"[::1]:{open_server.port}"):
        assert http("GET", open_server.url + "/api/methods", headers={"Host": host}).status == 200
    r = http("GET", open_server.url + "/api/methods", headers={"Host": f"rebound.example:{open_server.port}"})
    assert r.status == 403 and "not served without an auth token" in r.json()["detail"]


def test_boothkit_serve_on_all_interfaces_with_a_token_from_the_environment(tmp_path):
    """The real CLI entry point: token from BOOTHKIT_AUTH_TOKEN, checked; SIGTERM stops it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_app_support import free_port

    port = free_port()
    env = {**os.environ, "BOOTHKIT_AUTH_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "boothkit.cli.main", "serve", "--host", "0.0.0.0", "--port",
                             str(port), "--data", str(tmp_path / "lib"), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                r = http("GET", url + "/api/health", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "boothkit serve did not come up"
                time.sleep(0.3)
        assert r.status == 200 and r.json()["model"] == "world"
        assert http("GET", url + "/api/health").status == 401
        assert (tmp_path / "lib" / "boothkit.db").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: it ends "killed by SIGTERM"
        assert proc.wait(60) in (0, -signal.SIGTERM)
