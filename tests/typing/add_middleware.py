"""Type-checked by tests/test_options.py: the middlewares take typed keyword options."""

from __future__ import annotations

from starlette.applications import Starlette

from async_accept.asgi import AsyncAcceptMiddleware
from async_accept.wsgi import AsyncAcceptMiddleware as WSGIMiddleware

app = Starlette()
app.add_middleware(AsyncAcceptMiddleware, secret_key="k" * 32, routes=["POST /r"], ttl=60)
asgi = AsyncAcceptMiddleware(app, secret_key=["new", "old"], store="memory://", wait=None)


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    return [b""]


wsgi = WSGIMiddleware(wsgi_app, secret_key=b"k", health="off", session_cookies=("sid",))
