"""The ASGI front door."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .engine.responses import Response
from .engine.waiting import EventStream
from .frontdoor import Accept, DoorMiddleware, Pass, Serve
from .identity import starlette_principal
from .job import CapturedRequest
from .precheck import accept_signal, open_gate
from .replay import REPLAY_KEY
from .routes import RouteOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionsKwargs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["AsyncAcceptMiddleware"]


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class AsyncAcceptMiddleware(DoorMiddleware):
    """ASGI middleware: long-running routes answer ``202 Accepted`` with a
    signed status URL, served under ``prefix`` by this middleware.

    ``app.add_middleware(AsyncAcceptMiddleware, secret_key=...)`` on Starlette
    and FastAPI finds ``@long_running`` endpoints by itself; any other ASGI app
    is wrapped directly and names its slow routes with ``routes=[...]``.
    Options are documented in the README; bad ones raise ConfigurationError.
    """

    def __init__(self, app: ASGIApp, **options: Unpack[OptionsKwargs]) -> None:
        super().__init__(app, "asgi", options)
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # The hot path: a method no marked route uses, a path without the prefix.
            fast = self._fast_methods
            if (
                fast is not None
                and scope["method"].upper() not in fast
                and self._prefix not in scope["path"]
            ):
                await self.app(scope, receive, send)
                return
        else:
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)  # websocket and anything else: untouched
            return
        door = self._door
        ext = scope.get("extensions")
        if ext and REPLAY_KEY in ext:
            await self.app(scope, receive, send)  # a job replaying: let it through
            return
        if not self._first_seen:
            self._first_request(scope)
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        prefer = None
        if door.prefer_async:
            # Several Prefer lines mean one list (RFC 7240, RFC 9110 section 5.3).
            lines = [v for k, v in scope["headers"] if k == b"prefer"]
            prefer = b", ".join(lines) if lines else None
        plan = door.plan(scope["method"].upper(), path, prefer)
        if isinstance(plan, Pass):
            await self.app(scope, receive, _vary_prefer(send) if plan.vary_prefer else send)
        elif isinstance(plan, Serve):
            await self._serve(scope, receive, send, plan.subpath, path)
        elif isinstance(plan, Accept):
            await self._accept(scope, receive, send, plan.route, path)
        else:
            await _send(send, door.answer(plan), scope["method"])

    def _first_request(self, scope: Scope) -> None:
        app = scope.get("app")
        if app is not None and getattr(app, "middleware_stack", None) is not None:
            # Starlette/FastAPI: replay through the whole app (outer middleware
            # such as sessions or authentication runs again); the replay marker
            # lets the request pass this middleware.
            self.runtime.app = app
        self._door.discover(app if app is not None else self.app)
        self._fast_methods = self._door.fast_methods()
        self._first_seen = True

    async def _ensure_started(self) -> None:
        if not self.runtime.started:
            await self.runtime.astart()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        if isinstance(state, dict):
            self.runtime.lifespan_state = state
        app = scope.get("app")
        if app is not None and getattr(app, "middleware_stack", None) is not None:
            # Jobs recovered at startup replay through the whole app too, not only
            # those run after the first request.
            self.runtime.app = app

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self.runtime.started:
                # Drain first: running jobs may still use what the app's own
                # shutdown closes (pools, clients).
                await self.runtime.ashutdown()
            return message

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._ensure_started()
                self.runtime.lifespan_drain = True  # the lifespan shutdown drains
            elif message["type"] == "lifespan.shutdown.complete" and self.runtime.started:
                await self.runtime.ashutdown()
            await send(message)

        await self.app(scope, lifespan_receive, lifespan_send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self._door.max_body
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    if int(v) > limit:
                        raise _TooLarge
                except ValueError:
                    pass
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    raise _TooLarge
                chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _capture(self, scope: Scope, path: str, body: bytes) -> CapturedRequest:
        server = scope.get("server")
        client = scope.get("client")
        return CapturedRequest(
            method=scope["method"].upper(),
            path=path,
            query_string=scope.get("query_string", b""),
            headers=[(bytes(k).lower(), bytes(v)) for k, v in scope["headers"]],
            body=body,
            root_path=scope.get("root_path", ""),
            raw_path=scope.get("raw_path"),
            scheme=scope.get("scheme", "http"),
            http_version=scope.get("http_version", "1.1"),
            server=(str(server[0]), int(server[1])) if server and server[1] is not None else None,
            client=(str(client[0]), int(client[1])) if client else None,
            principal=self._principal(scope),
            extensions=_replayable_extensions(scope),
        )

    def _principal(self, scope: Scope) -> str | None:
        """The principal the framework authenticated (Starlette's ``scope["user"]``)."""
        return starlette_principal(scope["user"]) if "user" in scope else None

    async def _status_principal(self, scope: Scope) -> str | None:
        """The principal of a request below the prefix: what :meth:`_principal` finds
        (an integration whose auth runs inside the app runs it here)."""
        return self._principal(scope)

    async def _accept(
        self, scope: Scope, receive: Receive, send: Send, route: RouteOptions, path: str
    ) -> None:
        await self._ensure_started()
        try:
            body = await self._read_body(scope, receive)
        except _TooLarge:
            await _send(send, self._door.answer(self._door.too_large()), scope["method"])
            return
        except _Disconnected:
            return
        request = self._capture(scope, path, body)
        # Found here, the way a status read finds it (not from inside the app,
        # where an auth middleware below this one may have set scope["user"]):
        # the job's owner must be someone a status read can recognize.
        request.principal = await self._status_principal(scope)
        if route.precheck:
            reached = await self._precheck(scope, receive, send, body)
            if reached is None:
                return  # the app answered before the handler: its answer stands, no job
            route = reached
        response = await self.runtime.adrive(self._door.engine.accept(request, route))
        await _send(send, self._door.answer(response), scope["method"])

    async def _precheck(
        self, scope: Scope, receive: Receive, send: Send, body: bytes
    ) -> RouteOptions | None:
        """Run the app on the request with the gate open (see :mod:`async_accept.precheck`):
        the options of the marked handler it reached, or None when the app answered
        itself (that answer is sent as it is)."""
        pending = [body]
        started = False

        async def again() -> Message:
            if pending:  # the body, read already, once more
                return {"type": "http.request", "body": pending.pop(), "more_body": False}
            return await receive()

        async def answer(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        with open_gate():
            try:
                await self.app(scope, again, answer)
            except BaseException as exc:
                signal = accept_signal(exc)
                if signal is None or started:
                    raise
                reached: RouteOptions = signal.options
                return reached
        return None

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, subpath: str, path: str
    ) -> None:
        await self._ensure_started()
        body = b""
        if scope["method"] == "POST":  # the dashboard's forms; nothing else below reads one
            try:
                body = await self._read_body(scope, receive)
            except _TooLarge:
                await _send(send, self._door.answer(self._door.too_large()), scope["method"])
                return
            except _Disconnected:
                return
        request = self._capture(scope, path, body)
        request.principal = await self._status_principal(scope)
        response = await self.runtime.adrive(self._door.engine.serve(request, subpath))
        if isinstance(response, EventStream):
            await self._stream(receive, send, response)
            return
        await _send(send, self._door.answer(response), scope["method"])

    async def _stream(self, receive: Receive, send: Send, stream: EventStream) -> None:
        """Send an event stream until its final event, or until the client leaves."""
        await send(
            {"type": "http.response.start", "status": stream.status, "headers": stream.headers}
        )
        left = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                step = asyncio.ensure_future(self.runtime.adrive(stream.next_chunk()))
                await asyncio.wait({step, left}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():  # the client went away: stop waiting for it
                    step.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await step
                    return
                chunk = step.result()
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            left.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


#: scope extensions a job's replay carries: they describe the request (the
#: connection's TLS), not the server's abilities (``http.response.*`` sends)
_REQUEST_EXTENSIONS = ("tls",)


def _replayable_extensions(scope: Scope) -> dict[str, Any] | None:
    ext = scope.get("extensions")
    if not ext:
        return None
    out: dict[str, Any] = {}
    for name in _REQUEST_EXTENSIONS:
        if name in ext:
            try:  # stored as JSON: a value that isn't JSON stays behind
                out[name] = json.loads(json.dumps(ext[name]))
            except (TypeError, ValueError):
                continue
    return out or None


async def _send(send: Send, response: Response, method: str) -> None:
    headers = response.headers
    if not any(k == b"content-length" for k, _ in headers):
        headers = [*headers, (b"content-length", str(len(response.body)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    body = b"" if method == "HEAD" else response.body
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _vary_prefer(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"vary", b"Prefer"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
