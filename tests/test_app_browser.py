"""End to end in a real browser: Playwright (playwright-core) driving Debian's chromium against a live server.

Uploads world reference photos, makes a concept with the page's default method, renames it, generates with it,
and checks that the images appear (loaded, with their seed). Needs `scripts/setup-browser.sh` (run here if
needed); skips with its reason if that cannot install chromium or playwright-core.

The fast variant makes the concept with the stand-in method (the job machinery and the page, not training); the
slow one uses the default of the methods boothkit.methods registers (InstantBooth when registered) with few steps.
Set BOOTHKIT_SCREENSHOT=docs/app.png to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from boothkit.app.server import AppConfig
from test_app_support import ROOT, ServerThread, http, standin_methods, world_photos

SETUP = ROOT / "scripts" / "setup-browser.sh"
NODE_MODULES = ROOT / ".browser" / "node_modules"

DRIVER = r"""
const { chromium } = require("playwright-core");
const [url, photoDir, shot, name, steps, timeoutMs, methodConfig] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"] });
  const out = {};
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForFunction(() => document.querySelectorAll("#method option").length > 0);
    out.method = await page.$eval("#method", (s) => s.value);
    const fs = require("fs"), path = require("path");
    const files = fs.readdirSync(photoDir).sort().map((f) => path.join(photoDir, f));
    await page.setInputFiles("[data-testid=photos]", files);
    await page.waitForFunction((n) => document.querySelectorAll("#previews img").length === n, files.length);
    out.previews = await page.$$eval("#previews img", (ims) => ims.length);
    await page.fill("[data-testid=concept-name]", name);
    await page.fill("[data-testid=class-noun]", "rat");
    await page.fill("[data-testid=tune-steps]", steps);
    if (methodConfig) await page.fill("[data-testid=method-config]", methodConfig);
    await page.click("[data-testid=create]");
    await page.waitForFunction(() => /is ready|failed|not allowed|error/i.test(
      document.querySelector("#create-msg").textContent), null, { timeout: Number(timeoutMs) });
    out.createMsg = await page.textContent("#create-msg");
    out.jobText = await page.textContent("#job-text");
    await page.waitForSelector(`#library tr[data-concept="${name}"]`);

    page.once("dialog", (d) => d.accept(name + "-2"));
    await page.click(`#library tr[data-concept="${name}"] [data-act=rename]`);
    await page.waitForSelector(`#library tr[data-concept="${name}-2"]`);
    out.library = await page.$$eval("#library tr[data-concept]", (rows) => rows.map((r) => r.dataset.concept));

    await page.fill("[data-testid=prompt]", "a photo of");
    await page.click(`#library tr[data-concept="${name}-2"] [data-act=use]`);
    out.prompt = await page.inputValue("[data-testid=prompt]");
    await page.fill("[data-testid=n]", "2");
    await page.fill("[data-testid=seed]", "5");
    await page.fill("[data-testid=steps]", "8");
    out.samplers = await page.$$eval("[data-testid=scheduler] option", (os) => os.map((o) => o.value));
    await page.selectOption("[data-testid=scheduler]", "euler_a");
    await page.click("[data-testid=generate]");
    await page.waitForFunction(() => {
      const ims = document.querySelectorAll("[data-testid=result] img");
      return ims.length >= 2 && [...ims].every((i) => i.complete && i.naturalWidth > 0);
    }, null, { timeout: 120000 });
    out.images = await page.$$eval("[data-testid=result] img", (ims) => ims.map((i) => [i.naturalWidth, i.src]));
    out.captions = await page.$$eval("[data-testid=result] figcaption", (cs) => cs.map((c) => c.textContent));
    out.genMsg = await page.textContent("#gen-msg");
    out.errors = errors;
    await page.screenshot({ path: shot, fullPage: true });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


#: a real method, made quick: no validation grids (they cost more than 4 training steps on a CPU)
QUICK_CONFIG = '{"validation_images": 0}'


@pytest.fixture(scope="module")
def browser_ready():
    if shutil.which("node") is None:
        pytest.skip("browser test: Node.js is not installed")
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"browser test: scripts/setup-browser.sh could not set up the browser: "
                    f"{(r.stderr or r.stdout).strip()[-500:]}")


def _trains(method: str) -> bool:
    from boothkit.methods import METHODS

    return method in METHODS and METHODS[method].recipe is not None


def _methods(real: bool):
    if not real:
        return standin_methods(0.02), "standin", "5"
    from boothkit.app.registry import default_method, registered_methods

    methods = registered_methods()
    if not methods:
        pytest.skip("boothkit.methods registers no method yet: nothing real to make a concept with")
    return methods, default_method(methods), "4"


def _default_trains() -> bool:
    """Whether the app's real default method trains (slow on a CPU) or only encodes (InstantBooth: seconds)."""
    from boothkit.app.registry import default_method, registered_methods

    default = default_method(registered_methods())
    return default is None or _trains(default)


# the real default runs in the fast suite when it needs no training (InstantBooth, once its encoder ships)
@pytest.mark.parametrize("real", [False, pytest.param(True, marks=[pytest.mark.slow] if _default_trains() else [])],
                         ids=["standin", "default"])
def test_page_end_to_end(browser_ready, tmp_path, real):
    methods, default, steps = _methods(real)
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for name, data, _ in world_photos(3):
        (photo_dir / name).write_bytes(data)
    driver = tmp_path / "driver.js"
    driver.write_text(DRIVER)
    shot = tmp_path / "app.png"
    with ServerThread(AppConfig(data=tmp_path / "data", methods=methods)) as s:
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
        args = [s.url, str(photo_dir), str(shot), "ratty", steps, str(900_000 if real else 60_000),
                QUICK_CONFIG if real and _trains(default) else ""]
        r = subprocess.run(["node", str(driver), *args], capture_output=True, text=True, env=env,
                           timeout=1200 if real else 180)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        jobs = http("GET", s.url + "/api/jobs").json()

    assert out["method"] == default  # the picker preselects the server's default
    assert out["previews"] == 3
    assert "concept <ratty> is ready" in out["createMsg"], (out, jobs)
    assert out["jobText"].startswith(f"ratty ({default}): done")
    assert out["library"] == ["ratty-2"]
    assert out["prompt"] == "a photo of <ratty-2>"
    assert len(out["images"]) == 2 and all(w == 64 for w, _ in out["images"])
    assert all("/api/images/" in src for _, src in out["images"])
    assert sorted(c.split(" · ")[0] for c in out["captions"]) == ["seed 5", "seed 6"]
    assert all("ratty-2" in c for c in out["captions"])
    assert out["samplers"][0] == "" and "euler_a" in out["samplers"]  # "the model's own", then the named ones
    assert all(" · euler_a · " in c for c in out["captions"])  # the chosen sampler made (and labels) the images
    assert out["errors"] == []
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("BOOTHKIT_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep)
