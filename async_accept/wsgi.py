"""The WSGI front door."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

from .engine.responses import Response
from .engine.waiting import EventStream
from .frontdoor import Accept, DoorMiddleware, Pass, Serve, blocking_stream
from .job import CapturedRequest
from .precheck import accept_signal, open_gate
from .replay import REPLAY_KEY
from .routes import RouteOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionsKwargs

__all__ = ["AsyncAcceptMiddleware", "capture_environ"]

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]


class _TooLarge(Exception):
    pass


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def _decode_path(value: str) -> str:
    # PEP 3333: PATH_INFO is the raw bytes as latin-1; ASGI paths are UTF-8 text.
    return value.encode("latin-1").decode("utf-8", "replace")


class AsyncAcceptMiddleware(DoorMiddleware):
    """WSGI middleware with the same options and behaviour as the ASGI one.

    Jobs run in a thread pool of the web process by default
    (``executor="thread"``); the store defaults to SQLite so that every
    worker process of the server can answer every job.
    """

    def __init__(self, app: WSGIApp, **options: Unpack[OptionsKwargs]) -> None:
        super().__init__(app, "wsgi", options)
        self.app = app
        #: principal(environ) -> the authenticated user's id or None (set by an
        #: integration that knows the framework's user, e.g. Flask-Login)
        self.principal: Callable[[WSGIEnviron], str | None] | None = None

    def start(self) -> None:
        """Start the executor and sweeper now (else on the first request);
        call it from a server hook such as gunicorn's ``post_fork`` to recover
        queued jobs before any request arrives."""
        self.runtime.start()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path: a method no marked route uses, a path without the prefix.
        fast = self._fast_methods
        if (
            fast is not None
            and environ["REQUEST_METHOD"].upper() not in fast
            and self._prefix not in environ.get("PATH_INFO", "")
        ):
            return self.app(environ, start_response)
        if REPLAY_KEY in environ:
            return self.app(environ, start_response)  # a job replaying: let it through
        door = self._door
        if not self._first_seen:
            door.discover()
            self._fast_methods = door.fast_methods()
            self._first_seen = True
        path = _decode_path(environ.get("PATH_INFO", "") or "")
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        prefer = environ.get("HTTP_PREFER") if door.prefer_async else None
        plan = door.plan(
            method,
            path,
            None if prefer is None else prefer.encode("latin-1"),
            environ.get("CONTENT_LENGTH") or "",
        )
        if isinstance(plan, Pass):
            if plan.vary_prefer:
                return self.app(environ, _vary_prefer(start_response))
            return self.app(environ, start_response)
        if not self.runtime.started:
            self.runtime.start()
        if isinstance(plan, Serve):
            body = b""
            if method == "POST":  # the dashboard's forms; nothing else below reads one
                try:
                    body = self._read_body(environ)
                except _TooLarge:
                    return _respond(start_response, door.answer(door.too_large()), method)
            request = self._capture(environ, path, body)
            response = self.runtime.drive(door.engine.serve(request, plan.subpath))
        elif isinstance(plan, Accept):
            try:
                body = self._read_body(environ)
            except _TooLarge:
                return _respond(start_response, door.answer(door.too_large()), method)
            request = self._capture(environ, path, body)
            route = plan.route
            if route.precheck:
                reached = self._precheck(environ, start_response, body)
                if not isinstance(reached, RouteOptions):
                    return reached  # the app answered before the handler: no job
                route = reached
            response = self.runtime.drive(door.engine.accept(request, route))
        else:
            response = plan
        if isinstance(response, EventStream):
            start_response(_status_line(response.status), _str_headers(response))
            return blocking_stream(self.runtime, response)
        return _respond(start_response, door.answer(response), method)

    def _capture(self, environ: WSGIEnviron, path: str, body: bytes) -> CapturedRequest:
        request = _capture(environ, path, body)
        if self.principal is not None:
            request.principal = self.principal(environ)
        return request

    def _precheck(
        self, environ: WSGIEnviron, start_response: StartResponse, body: bytes
    ) -> RouteOptions | Iterable[bytes]:
        """Run the app on the request with the gate open (see :mod:`async_accept.precheck`):
        the options of the marked handler it reached, or the app's own answer."""
        environ["wsgi.input"] = io.BytesIO(body)  # the body, read already, once more
        with open_gate():
            try:
                return self.app(environ, start_response)
            except BaseException as exc:
                signal = accept_signal(exc)
                if signal is None:
                    raise
                reached: RouteOptions = signal.options
                return reached

    def _read_body(self, environ: WSGIEnviron) -> bytes:
        """The body (its Content-Length already checked by the front door)."""
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        raw_len = environ.get("CONTENT_LENGTH") or ""
        if raw_len.strip():
            length = int(raw_len)
            return bytes(stream.read(length)) if length else b""
        if (
            environ.get("wsgi.input_terminated")
            or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            limit = self._door.max_body
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
        return b""


def latin1(value: Any) -> bytes:
    """An environ value as bytes: latin-1 (PEP 3333), UTF-8 for what latin-1 can't hold."""
    text = str(value)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def capture_environ(
    environ: Mapping[str, Any],
    path: str,
    body: bytes,
    *,
    method: str,
    root_path: str,
    scheme: str,
    http_version: str | None = None,
    path_bytes: bool = False,
) -> CapturedRequest:
    """The engine's view of a WSGI environ (or Django's ``request.META``).

    ``path_bytes``: SCRIPT_NAME and PATH_INFO are the server's bytes (PEP 3333),
    kept exactly (as ``raw_path``, percent-encoded) so that a replay gives the
    app the same bytes, ``%FF`` included."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            # Django's ASGIRequest upper-cases a latin-1 name: 0xB5 becomes U+039C.
            headers.append((latin1(key[5:].replace("_", "-").lower()), latin1(value)))
    if environ.get("CONTENT_TYPE"):
        headers.append((b"content-type", latin1(environ["CONTENT_TYPE"])))
    if environ.get("CONTENT_LENGTH"):
        headers.append((b"content-length", latin1(environ["CONTENT_LENGTH"])))
    if http_version is None:
        protocol = str(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        http_version = protocol.split("/", 1)[-1] if "/" in protocol else "1.1"
    port = str(environ.get("SERVER_PORT") or "80")
    remote, remote_port = environ.get("REMOTE_ADDR"), str(environ.get("REMOTE_PORT", ""))
    raw_path = None
    if path_bytes:
        full = str(environ.get("SCRIPT_NAME", "") or "") + str(environ.get("PATH_INFO", "") or "")
        with contextlib.suppress(UnicodeEncodeError):  # not bytes as latin-1: keep the text
            raw = quote_from_bytes(full.encode("latin-1"), safe="/:@!$&'()*+,;=")
            raw_path = raw.encode("ascii")
    return CapturedRequest(
        method=method,
        path=path,
        query_string=latin1(environ.get("QUERY_STRING", "") or ""),
        headers=headers,
        body=body,
        root_path=root_path,
        raw_path=raw_path,
        scheme=scheme,
        http_version=http_version,
        server=(str(environ.get("SERVER_NAME", "localhost")), int(port) if port.isdigit() else 80),
        client=(str(remote), int(remote_port) if remote_port.isdigit() else None)
        if remote
        else None,
    )


def _capture(environ: WSGIEnviron, path: str, body: bytes) -> CapturedRequest:
    return capture_environ(
        environ,
        path,
        body,
        method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
        root_path=_decode_path(environ.get("SCRIPT_NAME", "") or ""),
        scheme=environ.get("wsgi.url_scheme", "http"),
        path_bytes=True,
    )


def _str_headers(response: Response) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]


def _respond(start_response: StartResponse, response: Response, method: str) -> list[bytes]:
    headers = _str_headers(response)
    if not any(k == b"content-length" for k, _ in response.headers):
        headers.append(("Content-Length", str(len(response.body))))
    start_response(_status_line(response.status), headers)
    return [] if method == "HEAD" else [response.body]


def _vary_prefer(start_response: StartResponse) -> StartResponse:
    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [*headers, ("Vary", "Prefer")]
        if exc_info is not None:
            return start_response(status, headers, exc_info)
        return start_response(status, headers)

    return wrapped
