"""Requests the middleware doesn't own pass through untouched: http, websocket, lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from async_accept import long_running
from async_accept.asgi import AsyncAcceptMiddleware
from tests.conftest import SECRET, find_middleware


def build(events: list[str]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse(
            f"state={request.state.db}", status_code=207, headers={"x-custom": "kept"}
        )

    @long_running
    async def marked(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"job sees state={request.state.db}")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())
        await websocket.close()

    return Starlette(
        routes=[
            Route("/plain", plain, methods=["GET", "POST"]),
            Route("/marked", marked, methods=["POST"]),
            WebSocketRoute("/ws", ws),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AsyncAcceptMiddleware, secret_key=SECRET, store="memory://")],
    )


def test_http_websocket_and_lifespan_pass_through() -> None:
    """Unmarked routes, websockets and lifespan reach the app unchanged."""
    events: list[str] = []
    app = build(events)
    with TestClient(app) as client:
        assert events == ["startup"]
        r = client.post("/plain", content=b"x")
        assert (r.status_code, r.text, r.headers["x-custom"]) == (207, "state=connected", "kept")
        assert "vary" not in r.headers
        with client.websocket_connect("/ws") as sock:
            sock.send_text("hello")
            assert sock.receive_text() == "HELLO"
        assert find_middleware(app).runtime.started
    assert events == ["startup", "shutdown"]


def test_replayed_job_sees_lifespan_state() -> None:
    """A job replays with the lifespan state the request would have had."""
    app = build([])
    with TestClient(app, follow_redirects=False) as client:
        r = client.post("/marked")
        assert r.status_code == 202
        loc = r.headers["location"]
        for _ in range(500):
            s = client.get(loc)
            if s.status_code == 303:
                break
        assert s.status_code == 303
        assert client.get(s.headers["location"]).text == "job sees state=connected"
