"""Apps whose handlers hang past their deadline, for tests/test_zombies.py.

uvicorn tests.zombie_app:asgi_app   /   gunicorn tests.zombie_app:wsgi_app
async-accept worker --app tests.zombie_app:asgi_app   (ZOMBIE_EXECUTOR=store)

Every handler appends ``start <id> <pid>`` to the ledger file ``ZOMBIE_LEDGER``
when it begins and ``end <id> <pid>`` just before it returns (one ``write`` on
an ``O_APPEND`` file each: lines never mix, and their order is the order the
handlers began and ended), so a test counts how many ran at once in a process.

Routes (``?id=`` is the job's id): ``/hang-sync`` (a sync handler: a thread
sleeping ``?hang=`` seconds), ``/hang-ignore`` (async, swallowing every
``CancelledError`` until ``?hang=`` seconds passed), ``/hang-thread`` (async,
awaiting ``asyncio.to_thread(time.sleep, hang)``), ``/hang-executor`` (async,
awaiting ``loop.run_in_executor(None, time.sleep, hang)``), all with ``sla=ZOMBIE_SLA``;
``/quick`` (returns at once, ``sla=120``).

Environment: ``ZOMBIE_STORE`` (a store URL), ``ZOMBIE_EXECUTOR``,
``ZOMBIE_MAX_ZOMBIES``, ``ZOMBIE_SLA`` (default 1: the deadline is 2 s after the
accept).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from async_accept import long_running

SLA = float(os.environ.get("ZOMBIE_SLA", "1"))
SECRET = "zombie-secret-0123456789abcdef-0123456789"
HEALTH_TOKEN = "zombie-health-token-0123456789"


def note(kind: str, job: str) -> None:
    """One ledger line: ``start``/``end``, the job's id, this pid."""
    line = f"{kind} {job} {os.getpid()}\n".encode()
    fd = os.open(os.environ["ZOMBIE_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def options() -> dict[str, Any]:
    env = os.environ
    opts: dict[str, Any] = {
        "secret_key": SECRET,
        "store": env["ZOMBIE_STORE"],
        "heartbeat_interval": 0.2,
        "worker_lost_after": 5.0,
        "sweep_interval": 0.5,
        "requeue_after": 1.0,
        "shutdown_timeout": 3.0,
        "health": "auth",
        "health_token": HEALTH_TOKEN,
    }
    if env.get("ZOMBIE_EXECUTOR"):
        opts["executor"] = env["ZOMBIE_EXECUTOR"]
    if env.get("ZOMBIE_MAX_ZOMBIES"):
        opts["max_zombies"] = int(env["ZOMBIE_MAX_ZOMBIES"])
    return opts


def _hang(query: dict[str, list[str]]) -> float:
    return float(query.get("hang", ["5"])[0])


def build_asgi() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running(sla=SLA)
    def hang_sync(request: Request) -> Response:
        # Starlette runs a sync endpoint in its thread pool: nothing can stop it.
        job = parse_qs(request.url.query)["id"][0]
        note("start", job)
        time.sleep(_hang(parse_qs(request.url.query)))
        note("end", job)
        return Response(job)

    @long_running(sla=SLA)
    async def hang_ignore(request: Request) -> Response:
        job = parse_qs(request.url.query)["id"][0]
        note("start", job)
        until = time.monotonic() + _hang(parse_qs(request.url.query))
        while time.monotonic() < until:
            try:
                await asyncio.sleep(until - time.monotonic())
            except asyncio.CancelledError:  # a handler that won't be stopped
                continue
        note("end", job)
        return Response(job)

    @long_running(sla=SLA)
    async def hang_thread(request: Request) -> Response:
        job = parse_qs(request.url.query)["id"][0]
        note("start", job)
        await asyncio.to_thread(time.sleep, _hang(parse_qs(request.url.query)))
        note("end", job)
        return Response(job)

    @long_running(sla=SLA)
    async def hang_executor(request: Request) -> Response:
        job = parse_qs(request.url.query)["id"][0]
        note("start", job)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, time.sleep, _hang(parse_qs(request.url.query)))
        note("end", job)
        return Response(job)

    @long_running(sla=120)
    async def quick(request: Request) -> Response:
        job = parse_qs(request.url.query)["id"][0]
        note("start", job)
        await asyncio.sleep(0.05)
        note("end", job)
        return Response(job)

    async def hello(request: Request) -> Response:
        return Response("hello")

    return Starlette(
        routes=[
            Route("/hang-sync", hang_sync, methods=["POST"]),
            Route("/hang-ignore", hang_ignore, methods=["POST"]),
            Route("/hang-thread", hang_thread, methods=["POST"]),
            Route("/hang-executor", hang_executor, methods=["POST"]),
            Route("/quick", quick, methods=["POST"]),
            Route("/hello", hello),
        ],
        middleware=[Middleware(AsyncAcceptMiddleware, **options())],
    )


def plain_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    job = query.get("id", [""])[0]
    if path in ("/hang-sync", "/quick"):
        note("start", job)
        time.sleep(_hang(query) if path == "/hang-sync" else 0.05)
        note("end", job)
    body = job.encode() or b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def build_wsgi() -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    routes = {"POST /hang-sync": {"sla": SLA}, "POST /quick": {"sla": 120}}
    return AsyncAcceptMiddleware(plain_wsgi, routes=routes, **options())


def __getattr__(name: str) -> Any:
    # Built on first access: importing the module for one door doesn't build the other.
    if name == "asgi_app":
        app = build_asgi()
    elif name == "wsgi_app":
        app = build_wsgi()
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app
