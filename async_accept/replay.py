"""Replaying a captured request against an ASGI or WSGI app, capturing the response.

The replayed request carries a marker (the ASGI scope extension or WSGI
environ key ``async_accept.replay``) so that an async_accept middleware in
the replayed stack lets it through instead of accepting it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

from .errors import ResultTooLarge
from .job import CapturedRequest, CapturedResponse, Headers
from .supervision import HandlerExit

REPLAY_KEY = "async_accept.replay"

log = logging.getLogger("async_accept")

ASGIApp = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class NoResponse(RuntimeError):
    """The app returned without sending a response."""


def asgi_scope(
    request: CapturedRequest, job_id: str, state: dict[str, Any] | None
) -> dict[str, Any]:
    path = request.root_path + request.path
    raw_path = request.raw_path
    if raw_path is None:
        raw_path = path.encode("utf-8")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "method": request.method,
        "scheme": request.scheme,
        "path": path,
        "raw_path": raw_path,
        "root_path": request.root_path,
        "query_string": request.query_string,
        "headers": list(request.headers),
        "server": request.server,
        "client": request.client,
        "extensions": {**(request.extensions or {}), REPLAY_KEY: {"job_id": job_id}},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


async def replay_asgi(
    app: ASGIApp,
    request: CapturedRequest,
    job_id: str,
    state: dict[str, Any] | None = None,
    on_start: Callable[[], None] | None = None,
    max_size: int | None = None,
    on_task: Callable[[asyncio.Task[None]], None] | None = None,
) -> CapturedResponse:
    """Run ``request`` through the ASGI ``app`` and return what it answered.

    ``on_start`` is called when the app begins its response (a cancel then comes
    too late to stop the handler). A body over ``max_size`` bytes raises
    :class:`ResultTooLarge` (the rest is not kept). ``on_task`` is handed the task
    the app runs in (a cancel looks there for a sync handler on a thread)."""
    scope = asgi_scope(request, job_id, state)
    body_sent = False
    done = asyncio.Event()
    status: int | None = None
    headers: Headers = []
    chunks = _Body(max_size)

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        # Like a real server: the client stays connected until the response is done.
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        kind = message["type"]
        if kind == "http.response.start":
            if on_start is not None:
                on_start()
            status = int(message["status"])
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                chunks.append(bytes(body))
            if not message.get("more_body", False):
                done.set()

    # The app runs in its own task: once the response is complete, what it does
    # after (Starlette's BackgroundTasks, anything after the last send) goes on
    # after the job's response is recorded, as a server lets it go on after
    # sending, neither delaying the answer nor changing the job's outcome.
    task = asyncio.ensure_future(_guarded(app, scope, receive, send))
    if on_task is not None:
        on_task(task)
    finished = asyncio.ensure_future(done.wait())
    try:
        await asyncio.wait({task, finished}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        finished.cancel()
        with contextlib.suppress(BaseException):  # let the app unwind before we go on
            await asyncio.gather(task, return_exceptions=True)
        raise
    finished.cancel()
    if not task.done():
        if status is None:  # pragma: no cover - done is set only by a complete response
            raise NoResponse("the application returned without sending a response")
        chunks.check()
        _BACKGROUND.add(task)
        task.add_done_callback(_after_response)
        return CapturedResponse(status=status, headers=headers, body=chunks.join())
    done.set()
    chunks.check()  # over max_result_size (the app may have turned it into its own error)
    task.result()  # the app's own error, before its response was complete
    if status is None:
        raise NoResponse("the application returned without sending a response")
    return CapturedResponse(status=status, headers=headers, body=chunks.join())


async def _guarded(app: ASGIApp, scope: Any, receive: Any, send: Any) -> None:
    """The app, with SystemExit/KeyboardInterrupt/GeneratorExit turned into an
    ordinary exception: raised in a task, asyncio would stop the whole loop."""
    try:
        await app(scope, receive, send)
    except (SystemExit, KeyboardInterrupt, GeneratorExit) as exc:
        raise HandlerExit.of(exc) from exc


class _Body:
    """A response body being captured, refused past ``limit`` bytes."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.size = 0
        self.over = False
        self._chunks: list[bytes] = []

    def append(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self.over = True
            self._chunks = []  # let go of what came so far
            raise ResultTooLarge(self.limit)
        self._chunks.append(chunk)

    def check(self) -> None:
        if self.over:
            assert self.limit is not None
            raise ResultTooLarge(self.limit)

    def join(self) -> bytes:
        return b"".join(self._chunks)


#: apps still running after their response (background tasks): kept referenced
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _after_response(task: asyncio.Future[Any]) -> None:
    _BACKGROUND.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # Logged as a server logs an app's error after the response was sent.
        log.error("Exception in the application after the job's response", exc_info=exc)


def replay_asgi_blocking(
    app: ASGIApp,
    request: CapturedRequest,
    job_id: str,
    state: dict[str, Any] | None = None,
    max_size: int | None = None,
) -> CapturedResponse:
    """:func:`replay_asgi` from a thread, on an event loop of its own. The app's
    work after its response (background tasks) finishes on that loop in a
    daemon thread, after this returns."""
    loop = asyncio.new_event_loop()
    try:
        coro = replay_asgi(app, request, job_id, state, max_size=max_size)
        response = loop.run_until_complete(coro)
    except BaseException:
        _close(loop)
        raise
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        _close(loop)
        return response

    def finish() -> None:
        try:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            _close(loop)

    threading.Thread(target=finish, name="async-accept-after-response", daemon=True).start()
    return response


def _close(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _path_info(request: CapturedRequest, script_name: str) -> str:
    """PATH_INFO as the server gave it: the captured bytes (``%FF`` stays one byte),
    else the decoded path in UTF-8."""
    if request.raw_path is not None:
        full = unquote_to_bytes(request.raw_path)
        script = script_name.encode("latin-1")
        # Only bytes that are the captured path (decoded as the front door decodes).
        same = full.decode("utf-8", "replace") == request.root_path + request.path
        if same and full.startswith(script):
            return full[len(script) :].decode("latin-1")
    return request.path.encode("utf-8").decode("latin-1")


def wsgi_environ(request: CapturedRequest, job_id: str) -> dict[str, Any]:
    server_name, server_port = request.server or ("localhost", 80)
    script_name = request.root_path.encode("utf-8").decode("latin-1")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": _path_info(request, script_name),
        "QUERY_STRING": request.query_string.decode("latin-1"),
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # The body is complete in memory: readable to its end, whatever the framing.
        "wsgi.input_terminated": True,
        REPLAY_KEY: job_id,
    }
    if request.client:
        environ["REMOTE_ADDR"] = request.client[0]
        if request.client[1] is not None:
            environ["REMOTE_PORT"] = str(request.client[1])
    for name, value in request.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        val = value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = val
            continue
        if key == "CONTENT_LENGTH":
            continue  # set below from the body we replay: its length is authoritative
        wkey = "HTTP_" + key
        if wkey in environ:
            sep = "; " if key == "COOKIE" else ","
            environ[wkey] = environ[wkey] + sep + val
        else:
            environ[wkey] = val
    # A request sent without Content-Length replays without it: chunked (the input
    # is terminated) or without a body. Any other body states its length.
    chunked = b"chunked" in (request.header(b"transfer-encoding") or b"").lower()
    if request.header(b"content-length") is not None or (request.body and not chunked):
        environ["CONTENT_LENGTH"] = str(len(request.body))
    return environ


def replay_wsgi(
    app: WSGIApp, request: CapturedRequest, job_id: str, max_size: int | None = None
) -> CapturedResponse:
    """Run ``request`` through the WSGI ``app`` and return what it answered (a body
    over ``max_size`` bytes raises :class:`ResultTooLarge`)."""
    environ = wsgi_environ(request, job_id)
    captured: dict[str, Any] = {}
    chunks = _Body(max_size)

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and captured.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        captured["status"] = status
        captured["headers"] = response_headers
        return chunks.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                captured["sent"] = True
                chunks.append(bytes(chunk))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if "status" not in captured:
        raise NoResponse("the application returned without calling start_response")
    code = int(str(captured["status"]).split(" ", 1)[0])
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in captured["headers"]]
    return CapturedResponse(status=code, headers=headers, body=chunks.join())
