"""The apps the fault runs start in real servers, configured from the environment.

uvicorn tests.faults.app:asgi_app   /   gunicorn tests.faults.app:wsgi_app

Every job handler appends its input id (the request body) to the ledger file
``ASYNC_ACCEPT_FAULT_LEDGER`` when its side effect is done, so a run can count
how often each accepted job really executed. ``ASYNC_ACCEPT_FAULT_WRAP_STORE=1`` wraps
the store: ``ASYNC_ACCEPT_FAULT_FAIL=create:3,heartbeat:5`` makes the first N
calls of each named method fail with a transient ``StoreError``
(``ASYNC_ACCEPT_FAULT_FINISH_FAILURES=N`` is ``finish:N``), before the write, or
after it with ``ASYNC_ACCEPT_FAULT_FAIL_AFTER=1``; ``ASYNC_ACCEPT_FAULT_LOST_REPLIES=N``
makes the first N finish calls that write their outcome fail afterwards (the reply
was lost); ``ASYNC_ACCEPT_FAULT_EXIT_AFTER_FINISH=<marker file>`` kills the process
right after the first finish that wrote (once: the marker file says it happened).
``GET /_fault/stats`` answers the wrapped store's call counts (and the failures
injected) in this process. ``ASYNC_ACCEPT_WEBHOOK_URL`` (+
``ASYNC_ACCEPT_WEBHOOK_SECRET``) sends every job's end there.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from async_accept import long_running, report_progress
from async_accept.errors import StoreError

#: the sla of the job routes: ``ASYNC_ACCEPT_FAULT_SLA`` (a long run queues more
#: work than 2 x 30 s can hold, which would be a deadline-exceeded, not a fault)
SLA = float(os.environ.get("ASYNC_ACCEPT_FAULT_SLA", "30"))

#: the routes of the WSGI app (it can't be decorated), with the same rules as the ASGI ones
WSGI_ROUTES: dict[str, dict[str, Any]] = {
    "POST /work": {"sla": SLA},
    "POST /work-sync": {"sla": SLA},
    "POST /exit": {"sla": SLA},
    "POST /block": {"sla": 600},
    "POST /progress": {"sla": SLA},
}


def record(job_input: str) -> None:
    """Append one ledger line: the job's input id and the pid that ran it.

    One ``write`` on an ``O_APPEND`` file: lines of several processes never mix.
    """
    line = f"{job_input} {os.getpid()}\n".encode()
    fd = os.open(os.environ["ASYNC_ACCEPT_FAULT_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _seconds(query: dict[str, list[str]], name: str, default: float = 0.0) -> float:
    values = query.get(name)
    return float(values[0]) if values else default


def _raise(kind: str) -> None:
    if kind == "keyboardinterrupt":
        raise KeyboardInterrupt
    if kind == "generatorexit":
        raise GeneratorExit
    raise SystemExit(2)  # what argparse does on bad input


class FaultyStore:
    """A store whose first N calls of chosen methods raise a transient
    ``StoreError`` (as a locked or briefly unreachable store does), counting
    every call by method name. Everything else goes to the wrapped store.

    ``failures``: how many calls of each method fail (``{"create": 3}``);
    ``after``: the failing call reaches the store first and only its answer is
    lost (a timeout after the write), instead of failing before the write.
    ``lost_replies``: how many finish calls that wrote an outcome then fail;
    ``exit_marker``: a file whose absence makes the first finish that wrote kill
    the process (``os._exit``) right after the write.
    """

    #: no native async face: the middleware runs these (blocking) calls in threads
    aio = None

    def __init__(
        self,
        inner: Any,
        failures: dict[str, int] | None = None,
        after: bool = False,
        lost_replies: int = 0,
        exit_marker: str | None = None,
    ) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.failures = dict(failures or {})
        self.injected: dict[str, int] = {}
        self.after = after
        self.lost_replies = lost_replies
        self.exit_marker = exit_marker
        self.calls: dict[str, int] = {}

    @property
    def finish_failures(self) -> int:
        return self.failures.get("finish", 0)

    def _due(self, name: str) -> bool:
        """Count the call; whether it is one of the failing ones."""
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            fail = self.failures.get(name, 0) > 0
            if fail:
                self.failures[name] -= 1
                self.injected[name] = self.injected.get(name, 0) + 1
            return fail

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._due(name):
                out = attr(*args, **kwargs)
                return self._after_finish(out) if name == "finish" else out
            if self.after:
                attr(*args, **kwargs)
            raise StoreError(f"injected: the store is briefly unavailable ({name})")

        return call

    def _after_finish(self, out: Any) -> Any:
        """A finish that wrote its outcome: the process may die now, or the reply be lost."""
        if out is None:
            return out
        marker = self.exit_marker
        if marker is not None and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(out.id)
            os._exit(9)  # killed right after the outcome was written: nothing after runs
        with self._lock:
            lost = self.lost_replies > 0
            if lost:
                self.lost_replies -= 1
        if lost:
            raise StoreError("injected: the outcome was written, the reply was lost")
        return out


def parse_failures(spec: str) -> dict[str, int]:
    """``"create:3,heartbeat:5"`` -> ``{"create": 3, "heartbeat": 5}``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        out[name] = int(count or 1)
    return out


#: the wrapped store of this process (None when the store is not wrapped)
FAULTY: FaultyStore | None = None


def _options() -> dict[str, Any]:
    global FAULTY
    env = os.environ
    opts: dict[str, Any] = {
        "secret_key": "fault-secret-0123456789abcdef-0123456789",
        "store": env["ASYNC_ACCEPT_STORE"],
    }
    for name in (
        "heartbeat_interval",
        "worker_lost_after",
        "sweep_interval",
        "requeue_after",
        "shutdown_timeout",
    ):
        value = env.get("ASYNC_ACCEPT_" + name.upper())
        if value:
            opts[name] = float(value)
    if env.get("ASYNC_ACCEPT_EXECUTOR"):
        opts["executor"] = env["ASYNC_ACCEPT_EXECUTOR"]
    if env.get("ASYNC_ACCEPT_FAULT_WRAP_STORE"):
        from async_accept.stores import resolve_store

        failures = parse_failures(env.get("ASYNC_ACCEPT_FAULT_FAIL", ""))
        finish = env.get("ASYNC_ACCEPT_FAULT_FINISH_FAILURES")
        if finish:
            failures["finish"] = int(finish)
        FAULTY = FaultyStore(
            resolve_store(opts["store"]),
            failures,
            after=env.get("ASYNC_ACCEPT_FAULT_FAIL_AFTER") == "1",
            lost_replies=int(env.get("ASYNC_ACCEPT_FAULT_LOST_REPLIES", "0")),
            exit_marker=env.get("ASYNC_ACCEPT_FAULT_EXIT_AFTER_FINISH") or None,
        )
        opts["store"] = FAULTY
    if env.get("ASYNC_ACCEPT_WEBHOOK_URL"):
        opts["webhook_url"] = env["ASYNC_ACCEPT_WEBHOOK_URL"]
        opts["webhook_secret"] = env["ASYNC_ACCEPT_WEBHOOK_SECRET"]
        opts["webhook_allow_private"] = True  # the test's receiver is on 127.0.0.1
        # A delivery claimed by a process that died is due again after the lease.
        opts["webhook_dispatcher_options"] = {"interval": 0.1, "timeout": 2.0, "lease": 10.0}
    return opts


def _stats() -> bytes:
    calls = dict(FAULTY.calls) if FAULTY is not None else {}
    left = FAULTY.finish_failures if FAULTY is not None else 0
    injected = dict(FAULTY.injected) if FAULTY is not None else {}
    return json.dumps(
        {"pid": os.getpid(), "calls": calls, "finish_failures_left": left, "injected": injected}
    ).encode()


def _progress_steps(query: dict[str, list[str]]) -> tuple[int, float, float]:
    """``count`` reports ``gap`` seconds apart, then ``hold`` seconds on the last one."""
    return int(_seconds(query, "count", 100)), _seconds(query, "gap"), _seconds(query, "hold")


def _progress_value(i: int, count: int) -> float:
    return round(90.0 * i / count, 3)


def build_asgi() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running(sla=SLA)
    async def work(request: Request) -> Response:
        job_input = (await request.body()).decode()
        await asyncio.sleep(_seconds(parse_qs(request.url.query), "sleep"))
        record(job_input)
        return Response(job_input)

    @long_running(sla=SLA, retries=2)
    async def work_retry(request: Request) -> Response:
        # Like /work, on a route that allows a job lost to a crash to run again.
        return await work(request)

    @long_running(sla=SLA)
    def work_sync(request: Request) -> Response:
        # A sync endpoint: Starlette runs it in its thread pool.
        job_input = parse_qs(request.url.query)["id"][0]
        time.sleep(_seconds(parse_qs(request.url.query), "sleep"))
        record(job_input)
        return Response(job_input)

    @long_running(sla=SLA)
    async def exit_(request: Request) -> Response:
        _raise(parse_qs(request.url.query).get("kind", ["systemexit"])[0])
        return Response("unreachable")  # pragma: no cover

    @long_running(sla=600)
    async def block(request: Request) -> Response:
        job_input = (await request.body()).decode()
        time.sleep(_seconds(parse_qs(request.url.query), "sleep"))  # blocks the event loop
        record(job_input)
        return Response(job_input)

    @long_running(sla=SLA)
    async def progress(request: Request) -> Response:
        job_input = (await request.body()).decode()
        count, gap, hold = _progress_steps(parse_qs(request.url.query))
        for i in range(1, count + 1):
            report_progress(_progress_value(i, count), message=f"step {i}")
            await asyncio.sleep(gap)
        await asyncio.sleep(hold)
        record(job_input)
        return Response(job_input)

    async def hello(request: Request) -> Response:
        return Response("hello")

    async def stats(request: Request) -> Response:
        return Response(_stats(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/work", work, methods=["POST"]),
            Route("/work-retry", work_retry, methods=["POST"]),
            Route("/work-sync", work_sync, methods=["POST"]),
            Route("/exit", exit_, methods=["POST"]),
            Route("/block", block, methods=["POST"]),
            Route("/progress", progress, methods=["POST"]),
            Route("/hello", hello),
            Route("/_fault/stats", stats),
        ],
        middleware=[Middleware(AsyncAcceptMiddleware, **_options())],
    )


def plain_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The same handlers as the ASGI app, as one plain WSGI callable."""
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    content = b"hello"
    if path in ("/work", "/work-sync", "/block"):
        time.sleep(_seconds(query, "sleep"))
        job_input = body.decode() or query.get("id", [""])[0]
        record(job_input)
        content = job_input.encode()
    elif path == "/exit":
        _raise(query.get("kind", ["systemexit"])[0])
    elif path == "/progress":
        count, gap, hold = _progress_steps(query)
        for i in range(1, count + 1):
            report_progress(_progress_value(i, count), message=f"step {i}")
            time.sleep(gap)
        time.sleep(hold)
        record(body.decode())
        content = body
    elif path == "/_fault/stats":
        content = _stats()
    start_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(content)))]
    )
    return [content]


def build_wsgi() -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    return AsyncAcceptMiddleware(plain_wsgi_app, routes=WSGI_ROUTES, **_options())


def __getattr__(name: str) -> Any:
    # Built on first access so that importing this module for one door doesn't
    # construct the other (each builds its store).
    if name == "asgi_app":
        app = build_asgi()
    elif name == "wsgi_app":
        app = build_wsgi()
    else:
        raise AttributeError(name)
    globals()[name] = app
    return app
