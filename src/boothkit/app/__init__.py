"""`boothkit serve`: a web page and a JSON API to personalise and generate, with a persistent concept library.

    from boothkit.app import AppConfig, create_app   # an ASGI app (FastAPI)
    from boothkit.app import serve                   # run it with uvicorn

Modules: limits (what is accepted, safe decoding), storage (SQLite + folders), registry (which methods, which
default), jobs (background concept creation), engine (generation), server (HTTP), page (the HTML page).
Needs the `app` extra: fastapi, uvicorn, python-multipart.
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("AppConfig", "create_app", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)


__all__ = ["AppConfig", "create_app", "serve"]
