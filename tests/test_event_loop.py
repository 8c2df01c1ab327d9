"""The ASGI path never runs blocking store I/O on the event loop thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from async_accept import long_running, report_progress
from async_accept.asgi import AsyncAcceptMiddleware
from tests.conftest import SECRET, find_middleware

STORE_METHODS = (
    "create",
    "get",
    "get_request",
    "get_result",
    "claim",
    "heartbeat",
    "set_progress",
    "finish",
    "fail",
    "cancel",
    "list_jobs",
    "purge_expired",
)


def _app(tmp_path: Path, loop_threads: set[int]) -> Starlette:
    @long_running
    async def work(request: Request) -> PlainTextResponse:
        loop_threads.add(threading.get_ident())
        report_progress(50, message="half")
        return PlainTextResponse("ok")

    async def hello(request: Request) -> PlainTextResponse:
        loop_threads.add(threading.get_ident())
        return PlainTextResponse("hi")

    return Starlette(
        routes=[Route("/work", work, methods=["POST"]), Route("/hello", hello)],
        middleware=[
            Middleware(
                AsyncAcceptMiddleware,
                secret_key=SECRET,
                store=f"sqlite:///{tmp_path / 'jobs.db'}",
                executor="asyncio",
                heartbeat_interval=0.05,
                worker_lost_after=5,
                sweep_interval=0.05,
            )
        ],
    )


def test_sqlite_connections_are_only_used_off_the_loop(tmp_path: Path) -> None:
    """With the group commit of awaited writes, every SQLite access is in an I/O thread."""
    loop_threads: set[int] = set()
    app = _app(tmp_path, loop_threads)
    used: list[int] = []
    with TestClient(app, follow_redirects=False) as client:
        assert client.get("/hello").text == "hi"
        store = find_middleware(app).store
        original = store._conn

        def conn() -> Any:
            used.append(threading.get_ident())
            return original()

        store._conn = conn
        auth = {"Authorization": "Bearer a"}
        locations = [client.post("/work", headers=auth).headers["location"] for _ in range(5)]
        for loc in locations:
            for _ in range(500):
                s = client.get(loc, headers=auth)
                if s.status_code == 303:
                    break
                threading.Event().wait(0.01)
            assert s.status_code == 303
            assert client.get(loc + "/result", headers=auth).text == "ok"
    assert used and loop_threads
    assert not set(used) & loop_threads


def test_sqlite_store_calls_never_run_on_the_loop_thread(tmp_path: Path) -> None:
    """Accept, run (asyncio executor), progress, status, result: no SQLite call is on the loop."""
    loop_threads: set[int] = set()
    app = _app(tmp_path, loop_threads)
    calls: list[tuple[str, int]] = []
    with TestClient(app, follow_redirects=False) as client:
        assert client.get("/hello").text == "hi"
        store = find_middleware(app).store
        for name in STORE_METHODS:
            original = getattr(store, name)

            def recorder(*args: Any, _name: str = name, _orig: Any = original, **kw: Any) -> Any:
                calls.append((_name, threading.get_ident()))
                return _orig(*args, **kw)

            setattr(store, name, recorder)
        r = client.post("/work", headers={"Authorization": "Bearer a"})
        assert r.status_code == 202
        loc = r.headers["location"]
        for _ in range(500):
            s = client.get(loc, headers={"Authorization": "Bearer a"})
            if s.status_code == 303:
                break
            threading.Event().wait(0.01)
        assert s.status_code == 303
        assert client.get(loc + "/result", headers={"Authorization": "Bearer a"}).text == "ok"
    names = {n for n, _ in calls}
    assert {"create", "get", "claim", "finish", "get_result"} <= names
    assert loop_threads, "the endpoints ran"
    on_loop = [(n, t) for n, t in calls if t in loop_threads]
    assert on_loop == []
