"""The apps the contract suite runs against: one Starlette (ASGI) and one plain
WSGI app with the same endpoints, so every rule is checked on both doors.

Timing is controlled with gates (threading.Event) the tests open, not sleeps.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from async_accept import current_job, long_running, report_progress

#: the patterns a WSGI app (which can't be decorated) names its slow routes with
WSGI_ROUTES = {
    "POST /slow": {"sla": 30},
    "POST /create": {},
    "POST /redirect": {},
    "POST /fail": {},
    "POST /error500": {},
    "POST /client-error": {},
    "POST /stream": {},
    "POST /gate/{name}": {"sla": 30},
    "POST /progress/{name}": {"sla": 30},
    "POST /hybrid": {"wait": 5, "max_wait": 5},
    "POST /keyed": {"idempotency": "required"},
    "GET /report/{id:int}": {},
}


class Gates:
    """Named events tests open to let a handler go on, and counters of runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.runs: dict[str, int] = {}

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def entered_event(self, name: str) -> threading.Event:
        with self._lock:
            return self.entered.setdefault(name, threading.Event())

    def count(self, name: str) -> int:
        with self._lock:
            self.runs[name] = self.runs.get(name, 0) + 1
            return self.runs[name]

    def open_all(self) -> None:
        with self._lock:
            for ev in self._gates.values():
                ev.set()


GATES = Gates()
HANDLER_LIMIT = 20.0  # no handler ever blocks longer, whatever a test does


def _echo(method: str, path: str, query: str, body: bytes, headers: dict[str, str]) -> bytes:
    job = current_job()
    return json.dumps(
        {
            "method": method,
            "path": path,
            "query": query,
            "body": body.decode("utf-8", "replace"),
            "authorization": headers.get("authorization"),
            "traceparent": headers.get("traceparent"),
            "in_job": job is not None,
        }
    ).encode()


# --- ASGI (Starlette) ---------------------------------------------------------------


def build_starlette(**middleware_options: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route, Router

    from async_accept.asgi import AsyncAcceptMiddleware

    async def body_echo(request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        content = _echo(request.method, request.url.path, request.url.query, body, headers)
        return Response(content, media_type="application/json", headers={"x-handler": "yes"})

    @long_running(sla=30)
    async def slow(request: Request) -> Response:
        GATES.count("slow")
        return await body_echo(request)

    @long_running
    async def create(request: Request) -> Response:
        return JSONResponse({"id": 42}, status_code=201, headers={"location": "/things/42"})

    @long_running
    async def redirect(request: Request) -> Response:
        return Response(status_code=302, headers={"location": "elsewhere"})

    @long_running
    async def fail(request: Request) -> Response:
        raise RuntimeError("boom: secret detail")

    @long_running
    async def error500(request: Request) -> Response:
        return PlainTextResponse("upstream broke", status_code=502)

    @long_running
    async def client_error(request: Request) -> Response:
        return JSONResponse({"error": "bad input"}, status_code=422)

    @long_running
    async def stream(request: Request) -> Response:
        async def chunks() -> Any:
            for i in range(5):
                yield f"chunk-{i};".encode()
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="text/plain")

    @long_running(sla=30)
    async def gate(request: Request) -> Response:
        name = request.path_params["name"]
        GATES.count(name)
        GATES.entered_event(name).set()
        ev = GATES.gate(name)
        deadline = time.monotonic() + HANDLER_LIMIT
        while not ev.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return PlainTextResponse(f"released {name}")

    @long_running(sla=30)
    async def progress(request: Request) -> Response:
        """Reports progress until its gate opens; a cancel stops it at report_progress."""
        name = request.path_params["name"]
        GATES.entered_event(name).set()
        ev = GATES.gate(name)
        deadline = time.monotonic() + HANDLER_LIMIT
        pct = 0.0
        report_progress(10, message="started", eta=8)
        while not ev.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            job = current_job()
            if job is not None and job.cancel_requested:
                report_progress(pct)  # raises JobCanceled
        report_progress(90, message="almost")
        return PlainTextResponse("done")

    @long_running(wait=5, max_wait=5)
    async def hybrid(request: Request) -> Response:
        delay = float(request.query_params.get("delay", "0"))
        name = request.query_params.get("gate")
        if name:
            ev = GATES.gate(name)
            deadline = time.monotonic() + HANDLER_LIMIT
            while not ev.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        await asyncio.sleep(delay)
        return PlainTextResponse("fast answer", headers={"x-handler": "hybrid"})

    @long_running(idempotency="required")
    async def keyed(request: Request) -> Response:
        GATES.count("keyed")
        return await body_echo(request)

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello", headers={"x-plain": "1"})

    async def hello_stream(request: Request) -> Response:
        async def chunks() -> Any:
            for i in range(3):
                yield f"part{i}".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @long_running
    async def report(request: Request) -> Response:
        return JSONResponse({"report": request.path_params["id"]})

    sub = Router(routes=[Route("/report/{id:int}", report, methods=["GET"])])
    routes = [
        Route("/slow", slow, methods=["POST"]),
        Route("/create", create, methods=["POST"]),
        Route("/redirect", redirect, methods=["POST"]),
        Route("/fail", fail, methods=["POST"]),
        Route("/error500", error500, methods=["POST"]),
        Route("/client-error", client_error, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/gate/{name}", gate, methods=["POST"]),
        Route("/progress/{name}", progress, methods=["POST"]),
        Route("/hybrid", hybrid, methods=["POST"]),
        Route("/keyed", keyed, methods=["POST"]),
        Route("/hello", hello, methods=["GET", "POST"]),
        Route("/hello-stream", hello_stream),
        Mount("/", app=sub),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(AsyncAcceptMiddleware, **middleware_options)]
    )


# --- WSGI (plain) ------------------------------------------------------------------


def _wsgi_headers(environ: dict[str, Any]) -> dict[str, str]:
    out = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        out["content-type"] = environ["CONTENT_TYPE"]
    return out


def plain_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A framework-free WSGI app with the contract endpoints."""
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    query = environ.get("QUERY_STRING", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    headers = _wsgi_headers(environ)
    params = {k: v[-1] for k, v in parse_qs(query).items()}

    def reply(
        status: str,
        content: bytes,
        extra: list[tuple[str, str]] | None = None,
        ctype: str = "text/plain",
    ) -> list[bytes]:
        hdrs = [("Content-Type", ctype), ("Content-Length", str(len(content)))]
        start_response(status, hdrs + (extra or []))
        return [content]

    def wait_gate(name: str) -> None:
        ev = GATES.gate(name)
        ev.wait(HANDLER_LIMIT)

    if path == "/slow":
        GATES.count("slow")
        return reply(
            "200 OK",
            _echo(method, path, query, body, headers),
            [("X-Handler", "yes")],
            "application/json",
        )
    if path == "/create":
        return reply("201 Created", b'{"id":42}', [("Location", "/things/42")], "application/json")
    if path == "/redirect":
        return reply("302 Found", b"", [("Location", "elsewhere")])
    if path == "/fail":
        raise RuntimeError("boom: secret detail")
    if path == "/error500":
        return reply("502 Bad Gateway", b"upstream broke")
    if path == "/client-error":
        return reply("422 Unprocessable Entity", b'{"error":"bad input"}', ctype="application/json")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def gen() -> Iterator[bytes]:
            for i in range(5):
                yield f"chunk-{i};".encode()

        return gen()
    if path.startswith("/gate/"):
        name = path.rsplit("/", 1)[1]
        GATES.count(name)
        GATES.entered_event(name).set()
        wait_gate(name)
        return reply("200 OK", f"released {name}".encode())
    if path.startswith("/progress/"):
        name = path.rsplit("/", 1)[1]
        GATES.entered_event(name).set()
        ev = GATES.gate(name)
        report_progress(10, message="started", eta=8)
        deadline = time.monotonic() + HANDLER_LIMIT
        while not ev.wait(0.01) and time.monotonic() < deadline:
            job = current_job()
            if job is not None and job.cancel_requested:
                report_progress(10)  # raises JobCanceled
        report_progress(90, message="almost")
        return reply("200 OK", b"done")
    if path == "/hybrid":
        if params.get("gate"):
            wait_gate(params["gate"])
        time.sleep(float(params.get("delay", "0")))
        return reply("200 OK", b"fast answer", [("X-Handler", "hybrid")])
    if path == "/keyed":
        GATES.count("keyed")
        return reply("200 OK", _echo(method, path, query, body, headers), ctype="application/json")
    if path.startswith("/report/"):
        return reply(
            "200 OK",
            json.dumps({"report": int(path.rsplit("/", 1)[1])}).encode(),
            ctype="application/json",
        )
    if path == "/hello":
        return reply("200 OK", b"hello", [("X-Plain", "1")])
    if path == "/hello-stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"part0", b"part1", b"part2"])
    return reply("404 Not Found", b"not found")


def build_wsgi(**middleware_options: Any) -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    middleware_options.setdefault("routes", WSGI_ROUTES)
    return AsyncAcceptMiddleware(plain_wsgi_app, **middleware_options)
