"""The benchmark app: one module, every variant, chosen by environment variables.

- ``BENCH_MW``: ``0`` (default) the bare app; ``1`` wrapped in AsyncAcceptMiddleware.
- ``BENCH_STORE``: the store URL (default ``memory://``).
- ``BENCH_EXECUTOR``: the executor (default ``asyncio`` for ASGI, ``thread`` for WSGI).
- ``BENCH_SECRET``: the secret key.
- ``BENCH_MARK``: how ``POST /work`` is marked on ASGI: ``routes`` (default, a pattern
  in ``routes=[...]``: accepted on arrival) or ``decorator`` (``@long_running``: the
  app decides first, its stack runs once in the request before the 202).
- ``BENCH_FRAMEWORK``: ``starlette`` (default) or ``fastapi`` for the ASGI app.
- ``BENCH_COUNT_READS``: ``1`` counts the SELECTs of every SQLite connection this
  process opens, served (unmarked) at ``GET /store-reads``.

Routes (the same on ASGI and WSGI):

- ``GET /hello``: the hello-world route, never marked;
- ``POST /work``: a no-op handler, marked long-running when the middleware is on;
- ``POST /sleep?s=N``: sleeps N seconds (jobs that stay ``processing`` to be polled),
  marked long-running with a long sla.

``asgi`` is a Starlette app served by uvicorn, ``wsgi`` a Flask app served by
gunicorn (the WSGI hello-world users would write), ``raw_wsgi`` a bare WSGI
function (the worst case for a middleware's relative overhead).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SECRET = os.environ.get("BENCH_SECRET", "benchmark-secret-not-for-production")
WITH_MW = os.environ.get("BENCH_MW", "0") == "1"
STORE = os.environ.get("BENCH_STORE", "memory://")
ROUTES = {"POST /work": {}, "POST /sleep": {"sla": 3600}}
DECORATOR = os.environ.get("BENCH_MARK", "routes") == "decorator"
FASTAPI = os.environ.get("BENCH_FRAMEWORK", "starlette") == "fastapi"


def _options(default_executor: str, asgi: bool = False) -> dict[str, Any]:
    routes = dict(ROUTES)
    if asgi and DECORATOR:
        del routes["POST /work"]  # marked by the decorator instead
    return {
        "secret_key": SECRET,
        "store": STORE,
        "executor": os.environ.get("BENCH_EXECUTOR", default_executor),
        "routes": routes,
        "shutdown_timeout": 1,
    }


# -- ASGI ---------------------------------------------------------------------------


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


#: SELECT statements run on this process's SQLite connections (BENCH_COUNT_READS=1)
STORE_READS = [0]


def _count_sqlite_reads() -> None:
    import sqlite3

    connect = sqlite3.connect

    def counted(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)

        def trace(sql: str) -> None:
            if sql.lstrip()[:6].upper() == "SELECT":
                STORE_READS[0] += 1

        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = counted  # type: ignore[assignment]


if os.environ.get("BENCH_COUNT_READS") == "1":
    _count_sqlite_reads()


async def store_reads(request: Request) -> Response:
    return JSONResponse({"reads": STORE_READS[0]})


async def work(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


async def sleep(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("s", "0")))
    return JSONResponse({"slept": True})


def _marked_work() -> Any:
    if not (WITH_MW and DECORATOR):
        return work
    from async_accept import long_running

    return long_running(work)


def _fastapi_app() -> Any:
    from fastapi import FastAPI

    api = FastAPI()
    api.get("/hello")(hello)
    api.post("/work")(_marked_work())
    api.post("/sleep")(sleep)
    return api


bare_asgi: Any = (
    _fastapi_app()
    if FASTAPI
    else Starlette(
        routes=[
            Route("/hello", hello),
            Route("/store-reads", store_reads),
            Route("/work", _marked_work(), methods=["POST"]),
            Route("/sleep", sleep, methods=["POST"]),
        ]
    )
)


def _wrap_asgi(app: Any) -> Any:
    if not WITH_MW:
        return app
    from async_accept.asgi import AsyncAcceptMiddleware

    return AsyncAcceptMiddleware(app, **_options("asyncio", asgi=True))


# -- WSGI ---------------------------------------------------------------------------

StartResponse = Callable[..., Any]


def bare_raw_wsgi(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/hello":
        body, ctype = b"hello", "text/plain; charset=utf-8"
    elif path in ("/work", "/sleep") and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        if path == "/sleep":
            qs = environ.get("QUERY_STRING", "")
            seconds = float(qs[2:]) if qs.startswith("s=") else 0.0
            time.sleep(seconds)
        body, ctype = b'{"ok":true}', "application/json"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _flask_app() -> Any:
    from flask import Flask, jsonify
    from flask import request as flask_request

    flask_app = Flask("benchmarks")

    @flask_app.get("/hello")
    def flask_hello() -> Any:
        return "hello"

    @flask_app.post("/work")
    def flask_work() -> Any:
        flask_request.get_data()
        return jsonify(ok=True)

    @flask_app.post("/sleep")
    def flask_sleep() -> Any:
        time.sleep(float(flask_request.args.get("s", "0")))
        return jsonify(slept=True)

    return flask_app


def _wrap_wsgi(app: Any) -> Any:
    if not WITH_MW:
        return app
    from async_accept.wsgi import AsyncAcceptMiddleware

    return AsyncAcceptMiddleware(app, **_options("thread"))


_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # Built on first use, so that a uvicorn process never builds the WSGI
    # middleware (its store and thread pool) and a gunicorn process never the ASGI one.
    if name not in _built:
        if name == "asgi":
            _built[name] = _wrap_asgi(bare_asgi)
        elif name == "bare_wsgi":
            _built[name] = _flask_app()
        elif name == "wsgi":
            _built[name] = _wrap_wsgi(__getattr__("bare_wsgi"))
        elif name == "raw_wsgi":
            _built[name] = _wrap_wsgi(bare_raw_wsgi)
        else:
            raise AttributeError(name)
    return _built[name]
