"""An app with jobs of every kind and the dashboard on, for the dashboard tests.

``uvicorn tests.dashboard_app:app`` serves it from a real process, configured by
``ASYNC_ACCEPT_STORE`` (a SQLite file the test seeds and reads too) and
``DASHBOARD_REFRESH`` (seconds of the page's periodic refresh, live stream or not:
a browser test sets an hour, so only the live updates can change the page).

Routes (all long-running but ``/hello``): ``/ok`` completes; ``/boom`` fails with
``<script>`` in its error; ``/flaky`` fails on a job's first run and completes on
the next (a retry); ``/slow/{name}`` reports progress (its message repeats the
name) and runs until canceled.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from async_accept import current_job, long_running, report_progress

SECRET = "dashboard-secret-0123456789abcdef"
TOKEN = "dashboard-token-0123456789abcdef"
#: jobs of /flaky that have run once in this process
FLAKY_SEEN: set[str] = set()


def build(**options: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running(sla=5)
    async def ok(request: Request) -> Response:
        await request.body()
        return JSONResponse({"ok": True})

    @long_running(sla=5)
    async def boom(request: Request) -> Response:
        raise RuntimeError("it broke <script>window.pwned=1</script>")

    @long_running(sla=5)
    async def flaky(request: Request) -> Response:
        job = current_job()
        assert job is not None
        if job.id not in FLAKY_SEEN:
            FLAKY_SEEN.add(job.id)
            raise RuntimeError("first run fails")
        return PlainTextResponse("second run works")

    @long_running(sla=60)
    async def slow(request: Request) -> Response:
        name = request.path_params["name"]
        deadline = time.monotonic() + 60
        pct = 5.0
        report_progress(pct, message=f"working on {name}", eta=50)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            pct = min(95.0, pct + 0.1)
            report_progress(pct, message=f"working on {name}")  # a cancel stops it here
        return PlainTextResponse("done")

    async def hello(request: Request) -> Response:
        return PlainTextResponse("hello")

    routes = [
        Route("/hello", hello),
        Route("/ok", ok, methods=["POST"]),
        Route("/boom", boom, methods=["POST"]),
        Route("/flaky", flaky, methods=["POST"]),
        Route("/slow/{name:path}", slow, methods=["POST"]),
    ]
    opts: dict[str, Any] = {
        "secret_key": SECRET,
        "health_token": TOKEN,
        "dashboard": "auth",
        "heartbeat_interval": 0.2,
        "requeue_after": 3600,  # a seeded queued job stays queued
        "executor": "asyncio",
    }
    opts.update(options)
    if opts["dashboard"] is None:
        del opts["dashboard"]  # the middleware's default
    return Starlette(routes=routes, middleware=[Middleware(AsyncAcceptMiddleware, **opts)])


def _from_env() -> Any:
    store = os.environ.get("ASYNC_ACCEPT_STORE")
    if not store:
        return None
    refresh = os.environ.get("DASHBOARD_REFRESH")
    if refresh:
        from async_accept.dashboard import page

        page.REFRESH_SECONDS = page.FALLBACK_SECONDS = int(refresh)
    return build(store=store)


app = _from_env()
