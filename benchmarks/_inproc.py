"""In-process measurements: the ASGI/WSGI app called directly, no sockets.

``python -m benchmarks._inproc WHAT --blocks N --calls M`` prints one
``BENCHJSON {...}`` line. The harness runs it pinned to the server core, so it
isolates the app's own cost from the HTTP server's. A and B alternate in
blocks (A-B-B-A ...); the ratio is the median of the per-pair ratios of
calls per second (B time / A time: above 1 means A is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .apps.app import SECRET, bare_asgi

AUTH = b"Bearer benchmark-user"
ROUTES = {"POST /work": {}, "POST /sleep": {"sla": 3600}}


class NullExecutor:
    """Takes jobs and never runs them: isolates the accept path itself."""

    name = "null"
    out_of_process = False
    supports = frozenset({"asgi", "wsgi"})

    def __init__(self) -> None:
        self._held: set[str] = set()

    def start(self, runtime: Any, loop: Any) -> None:
        pass

    def submit(self, job_id: str) -> None:
        self._held.add(job_id)

    def is_pending(self, job_id: str) -> bool:
        # Only what it was handed: a fresh job must not look like a retry of a
        # held one (the runtime would park it behind a timer thread).
        return job_id in self._held

    def cancel(self, job_id: str) -> None:
        pass

    def shutdown(self, timeout: float) -> None:
        pass


def _mw_options(store: str, executor: Any = None) -> dict[str, Any]:
    return {
        "secret_key": SECRET,
        "store": store,
        "executor": executor if executor is not None else NullExecutor(),
        "routes": ROUTES,
        "sweep_interval": None,
    }


def asgi_scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"bench"),
            (b"authorization", AUTH),
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
        ],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


AsgiCall = Callable[[], Awaitable[int]]


def asgi_caller(app: Any, method: str, path: str | Callable[[], str]) -> AsgiCall:
    sent: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["status"])

    fixed = asgi_scope(method, path) if isinstance(path, str) else None

    async def call() -> int:
        scope = dict(fixed) if fixed is not None else asgi_scope(method, path())  # type: ignore[operator]
        await app(scope, receive, send)
        return sent.pop()

    return call


def wsgi_caller(app: Any, method: str, path: str) -> Callable[[], int]:
    base = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_AUTHORIZATION": AUTH.decode(),
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    def call() -> int:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"{}")
        result: Iterable[bytes] = app(environ, start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return int(status.pop()[:3])

    return call


async def _ablock(call: AsgiCall, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - t0) / n


def _block(call: Callable[[], int], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t0) / n


def _summary(a: list[float], b: list[float]) -> dict[str, Any]:
    ratios = [tb / ta for ta, tb in zip(a, b, strict=True)]
    return {
        "ratio": statistics.median(ratios),
        "spread": [min(ratios), max(ratios)],
        "a_us": statistics.median(a) * 1e6,
        "b_us": statistics.median(b) * 1e6,
    }


async def _acompare(a: AsgiCall, b: AsgiCall, blocks: int, calls: int) -> dict[str, Any]:
    await _ablock(a, calls)  # warm up both
    await _ablock(b, calls)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(blocks):
        if i % 2 == 0:
            ta.append(await _ablock(a, calls))
            tb.append(await _ablock(b, calls))
        else:
            tb.append(await _ablock(b, calls))
            ta.append(await _ablock(a, calls))
    return _summary(ta, tb)


def _compare(a: Callable[[], int], b: Callable[[], int], blocks: int, calls: int) -> dict[str, Any]:
    _block(a, calls)
    _block(b, calls)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(blocks):
        if i % 2 == 0:
            ta.append(_block(a, calls))
            tb.append(_block(b, calls))
        else:
            tb.append(_block(b, calls))
            ta.append(_block(a, calls))
    return _summary(ta, tb)


def _check(status: int, expected: int, what: str) -> None:
    if status != expected:
        raise SystemExit(f"{what}: expected {expected}, got {status}")


async def asgi_passthrough(blocks: int, calls: int) -> dict[str, Any]:
    from async_accept.asgi import AsyncAcceptMiddleware

    mw = AsyncAcceptMiddleware(bare_asgi, **_mw_options("memory://"))
    a = asgi_caller(mw, "GET", "/hello")
    b = asgi_caller(bare_asgi, "GET", "/hello")
    _check(await a(), 200, "middleware /hello")
    _check(await b(), 200, "bare /hello")
    return await _acompare(a, b, blocks, calls)


def wsgi_passthrough(blocks: int, calls: int, raw: bool) -> dict[str, Any]:
    from async_accept.wsgi import AsyncAcceptMiddleware

    from .apps import app

    bare_wsgi = app.bare_raw_wsgi if raw else app.__getattr__("bare_wsgi")
    mw = AsyncAcceptMiddleware(bare_wsgi, **_mw_options("memory://"))
    a = wsgi_caller(mw, "GET", "/hello")
    b = wsgi_caller(bare_wsgi, "GET", "/hello")
    _check(a(), 200, "middleware /hello")
    _check(b(), 200, "bare /hello")
    return _compare(a, b, blocks, calls)


async def _accept_and_status(store: str, blocks: int, calls: int) -> dict[str, Any]:
    """Accept (null executor: the request path only) and status read (queued job),
    each against the bare hello route, all in one process."""
    from async_accept.asgi import AsyncAcceptMiddleware

    mw = AsyncAcceptMiddleware(bare_asgi, **_mw_options(store))
    hello = asgi_caller(bare_asgi, "GET", "/hello")
    accept = asgi_caller(mw, "POST", "/work")
    _check(await accept(), 202, "accept")
    # Jobs to poll: accepted through the middleware itself, tokens from Location.
    locations: list[str] = []
    sent_headers: list[list[tuple[bytes, bytes]]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent_headers.append(message["headers"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    for _ in range(200):
        await mw(asgi_scope("POST", "/work"), receive, send)
        loc = dict(sent_headers.pop())[b"location"].decode()
        locations.append(loc)
    idx = [0]

    def next_location() -> str:
        idx[0] = (idx[0] + 1) % len(locations)
        return locations[idx[0]]

    status = asgi_caller(mw, "GET", next_location)
    _check(await status(), 200, "status of a queued job")
    out = {
        "accept": await _acompare(accept, hello, blocks, calls),
        "status": await _acompare(status, hello, blocks, calls),
    }
    await mw.runtime.ashutdown()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["asgi_passthrough", "wsgi_passthrough", "asgi_paths"])
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--store", default="memory://")
    p.add_argument("--raw", action="store_true", help="WSGI: a bare function, not Flask")
    args = p.parse_args()
    if args.what == "asgi_passthrough":
        result = asyncio.run(asgi_passthrough(args.blocks, args.calls))
    elif args.what == "wsgi_passthrough":
        result = wsgi_passthrough(args.blocks, args.calls, args.raw)
    else:
        store = args.store
        if store == "sqlite":
            store = f"sqlite:///{tempfile.mkdtemp(prefix='aa-bench-')}/inproc.db"
        result = asyncio.run(_accept_and_status(store, args.blocks, args.calls))
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
