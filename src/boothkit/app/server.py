"""The FastAPI app: JSON API under /api, the page at /, OpenAPI at /openapi.json; and `serve()` to run it.

Layers: limits (what is accepted) -> storage (SQLite + folders) -> jobs (background concept creation) and engine
(generation) -> this module (HTTP). The page is a client of the same JSON API.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import os
import random
import shutil
import tempfile
import zipfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from ..pipeline import SCHEDULERS
from . import schemas
from .engine import Engine
from .jobs import JobRunner
from .limits import (Limits, RequestError, check_class_noun, check_concept_name, check_identifier, check_prompt,
                     decode_image, parse_method_config)
from .registry import MethodSpec, default_method, ordered, registered_methods
from .storage import NameTaken, Store

log = logging.getLogger("boothkit.app")

TOKEN_ENV = "BOOTHKIT_AUTH_TOKEN"
TOKEN_COOKIE = "boothkit_token"


def default_data_dir() -> Path:
    """$BOOTHKIT_DATA, else $XDG_DATA_HOME/boothkit/app (~/.local/share/boothkit/app)."""
    if os.environ.get("BOOTHKIT_DATA"):
        return Path(os.environ["BOOTHKIT_DATA"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "boothkit" / "app"


@dataclass
class AppConfig:
    """How the app runs (the `boothkit serve` options)."""

    model: str = "world"  #: base model: "world", a diffusers folder or a hub id
    data: Path = field(default_factory=default_data_dir)  #: where the database, concepts and images live
    token: str | None = None  #: if set, every request must carry it (header, cookie, or ?token= once)
    workers: int = 1  #: concept jobs that run at once
    limits: Limits = field(default_factory=Limits)
    device: str | None = None  #: torch device (default: cuda, mps, then cpu)
    dtype: str | None = None  #: torch dtype (default: per device)
    methods: dict[str, MethodSpec] | None = None  #: None: whatever boothkit.methods registers
    preload: bool = True  #: load the model before accepting requests

    def __post_init__(self):
        self.data = Path(self.data)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1 (got {self.workers})")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("the auth token must be at least 8 characters")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(cfg: AppConfig) -> FastAPI:
    methods = registered_methods() if cfg.methods is None else dict(cfg.methods)
    store = Store(cfg.data)
    engine = Engine(store, methods, cfg.model, device=cfg.device, dtype=cfg.dtype)
    runner = JobRunner(store, methods, cfg.model, workers=cfg.workers, on_concepts_changed=engine.forget_concepts)
    limits = cfg.limits
    from ..pipeline import model_family

    family = model_family(cfg.model).label  # from model_index.json: no weight is read

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.recover()
        if cfg.preload:
            await run_in_threadpool(engine.base)
        runner.start()
        yield
        runner.stop()

    app = FastAPI(title="boothkit", version=_version(), lifespan=lifespan,
                  description="Personalise a text-to-image model from a few photos, keep a library of concepts, "
                              "and generate with them. Write `<name>` in a prompt to use concept `name`.")
    app.state.store, app.state.engine, app.state.runner, app.state.cfg = store, engine, runner, cfg

    # -- middleware: auth and body size -----------------------------------------------------------------------
    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        if cfg.token is None and not is_loopback(_hostname(host)):
            # without a token only loopback names are served: a DNS-rebinding page can't reach the API
            return JSONResponse({"detail": f"Host {host!r} is not served without an auth token"}, status_code=403)
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin and urlsplit(origin).netloc != host:
            # a form on another site posting here (cross-site request forgery)
            return JSONResponse({"detail": f"cross-origin {request.method} from {origin!r} refused"},
                                status_code=403)
        if cfg.token is not None:
            given = _token_from(request)
            if given is None or not hmac.compare_digest(given.encode(), cfg.token.encode()):
                return JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer <token>', or "
                                               "open /?token=<token> in a browser once"}, status_code=401)
            if request.method == "GET" and request.url.path == "/" and "token" in request.query_params:
                resp = RedirectResponse("/", status_code=303)  # keep the token out of the address bar
                resp.set_cookie(TOKEN_COOKIE, cfg.token, httponly=True, samesite="strict")
                return resp
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
            if not length.isdigit() or int(length) > limits.max_body_bytes:
                return JSONResponse({"detail": f"request body is {length} bytes; the limit is "
                                               f"{limits.max_body_bytes}"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError):
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ())[1:]) or "body"
            parts.append(f"{loc}: {err.get('msg')}")
        return JSONResponse({"detail": "; ".join(parts), "errors": _plain(e.errors())}, status_code=422)

    # -- page -------------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        from .page import PAGE

        return HTMLResponse(PAGE)

    # -- API --------------------------------------------------------------------------------------------------
    @app.get("/api/health", response_model=schemas.Health, tags=["server"])
    def health():
        jobs = store.list_jobs(1000)
        return {"ok": True, "model": cfg.model, "family": family, "methods": ordered(methods), "schedulers": list(SCHEDULERS),
                "queued": sum(j["status"] == "queued" for j in jobs),
                "running": sum(j["status"] == "running" for j in jobs)}

    @app.get("/api/methods", response_model=schemas.Methods, tags=["concepts"])
    def list_methods():
        """Methods this server can make concepts with; the default first."""
        return {"methods": ordered(methods), "default": default_method(methods)}

    @app.post("/api/concepts", response_model=schemas.ConceptCreated, status_code=202, tags=["concepts"])
    async def create_concept(files: list[UploadFile] = File(..., description="1-10 reference photos (PNG, JPEG, "
                                                                              "WebP)"),
                             name: str = Form(..., description="concept name: 1-40 of a-z 0-9 _ -"),
                             class_noun: str = Form(..., description="what the subject is, e.g. 'dog'"),
                             method: str | None = Form(None, description="default: GET /api/methods' default"),
                             steps: int | None = Form(None, description="training steps (default: the method's)"),
                             config: str | None = Form(None, description="JSON object of method settings, e.g. "
                                                                         "{\"validation_images\": 0}"),
                             identifier: str | None = Form(None, description="token the concept is trained under "
                                                                             "(default: the method's, e.g. 'sks'); "
                                                                             "give concepts used together different "
                                                                             "ones")):
        """Upload reference photos and start a job that makes concept `name`; poll the job for progress."""
        name = check_concept_name(name)
        noun = check_class_noun(class_noun, limits)
        if not methods:
            raise RequestError("this server has no personalisation method installed (boothkit.methods registers "
                               "none), so it cannot make concepts", 503)
        method = method or default_method(methods)
        if method not in methods:
            raise RequestError(f"unknown method {method!r}; this server offers {ordered(methods)}")
        if steps is not None and not 1 <= steps <= limits.max_tune_steps:
            raise RequestError(f"steps must be between 1 and {limits.max_tune_steps} (got {steps})")
        method_config = parse_method_config(config, limits)
        identifier = check_identifier(identifier)
        if not limits.min_images <= len(files) <= limits.max_images:
            raise RequestError(f"send {limits.min_images}-{limits.max_images} photos (got {len(files)})")
        raw = []
        for f in files:
            data = await f.read(limits.max_upload_bytes + 1)
            raw.append((f.filename or f"photo {len(raw) + 1}", data))
        images, notes = await run_in_threadpool(read_photos, raw, noun)
        taken = store.name_taken(name)
        if taken:
            raise RequestError(taken, 409)
        job_id = store.new_job_id()
        refs = store.job_dir(job_id) / "refs"
        refs.mkdir(parents=True)
        for i, im in enumerate(images):
            im.save(refs / f"ref-{i:02d}.png", format="PNG")
        try:
            job = store.add_job(job_id, concept=name, method=method, class_noun=noun, model=cfg.model, steps=steps,
                                n_images=len(images), config=method_config, identifier=identifier)
        except NameTaken as e:
            shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
            raise RequestError(str(e), 409) from e
        runner.notify()
        for note in notes:
            log.warning("concept %r: %s", name, note)
        return {"concept": name, "job": _job_out(job), "warnings": notes}

    def read_photos(raw: list[tuple[str, bytes]], noun: str) -> tuple[list, list[str]]:
        """Uploads -> (the photos to train on, warnings). The command line's rules (boothkit.images and
        boothkit.inputs): a bad file refuses the request; a blank photo among good ones is skipped with a warning,
        only blank ones refuse it; on the world model, a class noun it never read or photos unlike its scenes warn
        (boothkit.domain)."""
        from ..domain import subject_warnings
        from ..images import blank_reason

        images, notes, blank = [], [], []
        for fn, data in raw:
            rgb, alpha = decode_image(data, fn, limits, with_alpha=True)
            why = blank_reason(rgb, alpha)
            if why:
                blank.append(f"photo {fn!r}: {why} (nothing to learn from)")
            else:
                images.append(rgb)
        if not images:
            raise RequestError(blank[0] if len(blank) == 1 else
                               "every photo is blank (nothing to learn from): " + "; ".join(blank))
        if len(images) < limits.min_images:
            raise RequestError(f"{len(images)} usable photo(s), need at least {limits.min_images}: "
                               + "; ".join(blank))
        notes += [f"skipped {b}" for b in blank]
        notes += subject_warnings(images, noun, cfg.model, flag="class_noun")
        return images, notes

    @app.get("/api/concepts", response_model=list[schemas.Concept], tags=["concepts"])
    def list_concepts():
        """Every concept in the library, oldest first."""
        return [_concept_out(c, methods, store) for c in store.list_concepts()]

    @app.get("/api/concepts/{name}", response_model=schemas.Concept, tags=["concepts"])
    def get_concept(name: str):
        return _concept_out(_concept_or_404(store, name), methods, store)

    @app.patch("/api/concepts/{name}", response_model=schemas.Concept, tags=["concepts"])
    def rename_concept(name: str, body: schemas.Rename):
        """Rename a concept (prompts then use <new name>)."""
        _concept_or_404(store, name)
        new = check_concept_name(body.name)
        if new != name:
            try:
                store.rename_concept(name, new)
            except NameTaken as e:
                raise RequestError(str(e), 409) from e
            engine.forget_concepts()
        return _concept_out(store.get_concept(new), methods, store)

    @app.delete("/api/concepts/{name}", status_code=204, tags=["concepts"])
    def delete_concept(name: str):
        """Delete a concept and its files."""
        _concept_or_404(store, name)
        store.delete_concept(name)
        engine.forget_concepts()
        return Response(status_code=204)

    @app.get("/api/concepts/{name}/artifact", tags=["concepts"],
             responses={200: {"content": {"application/zip": {}}, "description": "the concept folder as a zip"}})
    def download_concept(name: str):
        """The concept folder (concept.json + weights) as a zip, for `boothkit generate --concept`."""
        _concept_or_404(store, name)
        fd, tmp = tempfile.mkstemp(suffix=".zip", dir=store.root / "trash")
        os.close(fd)
        folder = store.concept_dir(name)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    z.write(p, f"{name}/{p.relative_to(folder)}")
        return FileResponse(tmp, media_type="application/zip", filename=f"{name}.zip",
                            background=BackgroundTask(os.unlink, tmp))

    @app.get("/api/concepts/{name}/webui", tags=["concepts"],
             responses={200: {"content": {"application/zip": {}},
                              "description": "lora/<name>.safetensors and/or embeddings/<name>.safetensors + "
                                             "export.json"}})
    def download_webui(name: str):
        """The concept as AUTOMATIC1111 / ComfyUI files (`boothkit export`): a kohya-layout LoRA and/or an A1111
        embedding named after the concept, and export.json with the prompt to use. 409 for methods without any."""
        from ..inputs import InputError

        row = _concept_or_404(store, name)
        spec = methods.get(row["method"])
        if spec is None or spec.export is None:
            from ..methods.webui import EXPORT_HINTS

            raise RequestError(f"{row['method']} concepts have no webui files: "
                               f"{EXPORT_HINTS.get(row['method'], 'this method does not export')}", 409)
        work = Path(tempfile.mkdtemp(dir=store.root / "trash"))
        tmp = None
        try:
            spec.export(store.concept_dir(name), work / "webui", name=name, model=cfg.model)  # loads under a lock
            fd, tmp = tempfile.mkstemp(suffix=".zip", dir=store.root / "trash")
            os.close(fd)
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for p in sorted((work / "webui").rglob("*")):
                    if p.is_file():
                        z.write(p, f"{name}-webui/{p.relative_to(work / 'webui')}")
        except BaseException as e:
            if tmp is not None:
                os.unlink(tmp)
            if isinstance(e, InputError):
                raise RequestError(str(e), 409) from e
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return FileResponse(tmp, media_type="application/zip", filename=f"{name}-webui.zip",
                            background=BackgroundTask(os.unlink, tmp))

    @app.get("/api/concepts/{name}/curves.png", tags=["concepts"],
             responses={200: {"content": {"image/png": {}}, "description": "training curves (`boothkit plot`)"}})
    def concept_curves(name: str):
        """The concept's training curves (loss and learning rate against the step), drawn from its
        train_log.jsonl. 404 for concepts made without training (InstantBooth)."""
        from ..training.plots import plot_logs

        _concept_or_404(store, name)
        log = store.concept_dir(name) / "train_log.jsonl"
        if not log.is_file():
            raise RequestError(f"concept {name!r} has no training log (it was made without training)", 404)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=store.root / "trash")
        os.close(fd)
        try:
            plot_logs([log], tmp, title=f"<{name}>: training")
        except BaseException as e:
            os.unlink(tmp)
            if isinstance(e, ValueError):
                raise RequestError(f"concept {name!r}: {e}", 404) from e
            raise
        return FileResponse(tmp, media_type="image/png", background=BackgroundTask(os.unlink, tmp))

    @app.get("/api/jobs", response_model=list[schemas.Job], tags=["jobs"])
    def list_jobs(limit: int = 50):
        """Recent jobs, newest first."""
        return [_job_out(j) for j in store.list_jobs(max(1, min(limit, 500)))]

    @app.get("/api/jobs/{job_id}", response_model=schemas.Job, tags=["jobs"])
    def get_job(job_id: str):
        """A job's status and progress."""
        job = store.get_job(job_id) if _is_hex(job_id, 16) else None
        if job is None:
            raise RequestError(f"no job {job_id!r}", 404)
        return _job_out(job)

    @app.post("/api/generate", response_model=schemas.GenerateResponse, tags=["images"])
    def generate(req: schemas.GenerateRequest):
        """Generate images; each is stored and served at its url, with the seed and settings that made it."""
        prompt = check_prompt(req.prompt, "prompt", limits)
        if not prompt.strip():
            raise RequestError("prompt is empty")
        if req.negative_prompt:
            check_prompt(req.negative_prompt, "negative_prompt", limits)
        if not 1 <= req.n <= limits.max_images_per_request:
            raise RequestError(f"n must be between 1 and {limits.max_images_per_request} (got {req.n})")
        if not 1 <= req.steps <= limits.max_steps:
            raise RequestError(f"steps must be between 1 and {limits.max_steps} (got {req.steps})")
        for side in ("width", "height"):
            v = getattr(req, side)
            if v is not None and (v < 8 or v > limits.max_size or v % 8):
                raise RequestError(f"{side} must be a multiple of 8 between 8 and {limits.max_size} (got {v})")
        if req.scheduler is not None and req.scheduler not in SCHEDULERS:
            raise RequestError(f"unknown scheduler {req.scheduler!r}; choose from {list(SCHEDULERS)} "
                               "(or null: the model's own)")
        for n in req.concepts:
            check_concept_name(n)
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        made = engine.generate(prompt, concepts=req.concepts, n=req.n, seed=seed, steps=req.steps,
                               guidance=req.guidance, width=req.width, height=req.height,
                               negative_prompt=req.negative_prompt, scheduler=req.scheduler)
        out = []
        for im in made:
            d = {**im, "url": f"/api/images/{im['id']}"}
            if req.response in ("base64", "both"):
                d["base64_png"] = base64.b64encode(store.image_path(im["id"]).read_bytes()).decode()
            out.append(d)
        return {"images": out, "seed": seed}

    @app.get("/api/images", response_model=list[schemas.Image], tags=["images"])
    def list_images(limit: int = 50):
        """Recent images, newest first."""
        return [_image_out(r) for r in store.list_images(max(1, min(limit, 500)))]

    @app.get("/api/images/{image_id}", tags=["images"],
             responses={200: {"content": {"image/png": {}}, "description": "the PNG"}})
    def get_image(image_id: str):
        if not _is_hex(image_id, 32) or store.get_image(image_id) is None:
            raise RequestError(f"no image {image_id!r}", 404)
        return FileResponse(store.image_path(image_id), media_type="image/png",
                            headers={"Cache-Control": "private, max-age=86400, immutable"})

    return app


# -- helpers -----------------------------------------------------------------------------------------------------
def _version() -> str:
    from boothkit import __version__

    return __version__


def _token_from(request: Request) -> str | None:
    """Header, then cookie; the ?token= query only on the page (it sets the cookie, then redirects)."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    token = request.headers.get("x-boothkit-token") or request.cookies.get(TOKEN_COOKIE)
    if token is None and request.url.path == "/":
        token = request.query_params.get("token")
    return token


def _hostname(host_header: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1', '[::1]:7860' -> '::1'."""
    return urlsplit("//" + host_header).hostname or ""


def _is_hex(s: str, n: int) -> bool:
    return len(s) == n and all(c in "0123456789abcdef" for c in s)


def _plain(errors: list[dict]) -> list[dict]:
    return [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
            for e in errors]


def _concept_or_404(store: Store, name: str) -> dict:
    check_concept_name(name)
    row = store.get_concept(name)
    if row is None:
        raise RequestError(f"no concept named {name!r}", 404)
    return row


def _concept_out(row: dict, methods: dict[str, MethodSpec], store: Store) -> dict:
    spec = methods.get(row["method"])
    trained = (store.concept_dir(row["name"]) / "train_log.jsonl").is_file()
    return {**row, "prompt_token": f"<{row['name']}>", "artifact_url": f"/api/concepts/{row['name']}/artifact",
            "webui_url": f"/api/concepts/{row['name']}/webui" if spec is not None and spec.export else None,
            "curves_url": f"/api/concepts/{row['name']}/curves.png" if trained else None}


def _job_out(job: dict) -> dict:
    total = job["progress_total"] or 0
    return {**{k: job[k] for k in ("id", "kind", "status", "concept", "method", "class_noun", "model", "steps",
                                   "n_images", "attempts", "error", "note", "created", "started", "finished")},
            "config": json.loads(job["config"]) if job.get("config") else None, "identifier": job.get("identifier"),
            "progress": {"step": job["progress_step"], "total": total,
                         "fraction": (job["progress_step"] / total) if total else 0.0},
            "url": f"/api/jobs/{job['id']}"}


def _image_out(row: dict) -> dict:
    s = row["settings"]
    return {"id": row["id"], "url": f"/api/images/{row['id']}", "prompt": row["prompt"], **s}


def serve(cfg: AppConfig, host: str = "127.0.0.1", port: int = 7860, log_level: str = "info") -> None:
    """Run the app with uvicorn (blocks). Refuses a non-loopback host without a token."""
    import uvicorn

    if not is_loopback(host) and not cfg.token:
        raise RequestError(f"refusing to listen on {host!r} without an auth token: anyone who can reach it could "
                           f"use it. Pass --auth-token or set {TOKEN_ENV}, or bind 127.0.0.1.")
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
