"""Type-checked by tests/test_options.py: a misspelt or mistyped option is a type error."""

from __future__ import annotations

from starlette.applications import Starlette

from async_accept.asgi import AsyncAcceptMiddleware

app = Starlette()
app.add_middleware(AsyncAcceptMiddleware, secret_key="k", ttl="a day")
app.add_middleware(AsyncAcceptMiddleware, secret_kye="k")
