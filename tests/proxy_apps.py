"""Apps for the tests behind nginx: a 5-second job and an upload that answers its sha256.

uvicorn tests.proxy_apps:asgi_app --root-path /star   /   gunicorn tests.proxy_apps:wsgi_app
(``PROXY_FIX=before`` applies ProxyFix before AsyncAccept, ``after`` after it).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from async_accept import long_running

SECRET = "proxy-secret-0123456789abcdef-0123456"


def _options() -> dict[str, Any]:
    return {"secret_key": SECRET, "store": os.environ["ASYNC_ACCEPT_STORE"], "poll_interval": 1}


def build_asgi_app() -> Any:
    """Starlette: GET /hello, POST /slow (a 5 s job), POST /upload (sha256 of the body)."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    @long_running(sla=60)
    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(5)
        return PlainTextResponse("slow done")

    @long_running(sla=60)
    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(hashlib.sha256(await request.body()).hexdigest())

    app = Starlette(
        routes=[
            Route("/hello", hello),
            Route("/slow", slow, methods=["POST"]),
            Route("/upload", upload, methods=["POST"]),
        ]
    )
    app.add_middleware(AsyncAcceptMiddleware, **_options())
    return app


def build_wsgi_app(proxy_fix: str) -> Any:
    """Flask with the same routes; ProxyFix(x_prefix=1) ``before`` or ``after`` AsyncAccept."""
    from flask import Flask, request
    from werkzeug.middleware.proxy_fix import ProxyFix

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.post("/slow")
    @long_running(sla=60)
    def slow() -> str:
        time.sleep(5)
        return "slow done"

    @app.post("/upload")
    @long_running(sla=60)
    def upload() -> str:
        return hashlib.sha256(request.get_data()).hexdigest()

    fix = {"x_for": 1, "x_proto": 1, "x_host": 1, "x_prefix": 1}
    if proxy_fix == "before":
        app.wsgi_app = ProxyFix(app.wsgi_app, **fix)  # type: ignore[method-assign]
    AsyncAccept(app, **_options())
    if proxy_fix == "after":
        app.wsgi_app = ProxyFix(app.wsgi_app, **fix)  # type: ignore[method-assign]
    return app


def __getattr__(name: str) -> Any:
    # Built on first use, so importing this module needs no environment.
    if name == "asgi_app":
        return build_asgi_app()
    if name == "wsgi_app":
        return build_wsgi_app(os.environ.get("PROXY_FIX", "before"))
    raise AttributeError(name)
