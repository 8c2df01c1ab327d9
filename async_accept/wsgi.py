"""The WSGI front door."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from ._frontdoor import FrontDoor
from .engine.responses import Response
from .job import CapturedRequest
from .replay import REPLAY_KEY

__all__ = ["AsyncAcceptMiddleware"]

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


class AsyncAcceptMiddleware:
    """WSGI middleware with the same options and behaviour as the ASGI one.

    Jobs run in a thread pool of the web process by default
    (``executor="thread"``); the store defaults to SQLite so that every
    worker process of the server can answer every job.
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self._door = FrontDoor(app, "wsgi", options)
        self.app = app
        self.runtime = self._door.runtime
        self.options = self._door.options
        self.store = self._door.store
        self._fast_methods: frozenset[str] | None = None
        self._prefix = self._door.prefix

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
            and environ["REQUEST_METHOD"] not in fast
            and self._prefix not in environ.get("PATH_INFO", "")
        ):
            return self.app(environ, start_response)
        if REPLAY_KEY in environ:
            return self.app(environ, start_response)  # a job replaying: let it through
        door = self._door
        if not door._discovered:
            door.discover()
            self._fast_methods = door.fast_methods()
        path = _decode_path(environ.get("PATH_INFO", "") or "")
        if door.is_ours(path):
            if not self.runtime.started:
                self.runtime.start()
            request = self._capture(environ, path, b"")
            response = self.runtime.drive(door.engine.serve(request, path[door.prefix_len :]))
            return _respond(start_response, response, request.method)
        method = environ.get("REQUEST_METHOD", "GET")
        prefer = environ.get("HTTP_PREFER") if door.prefer_async else None
        route = door.route_for(method, path, None if prefer is None else prefer.encode("latin-1"))
        if route is None:
            if door.prefer_async:
                return self.app(environ, _vary_prefer(start_response))
            return self.app(environ, start_response)
        if not self.runtime.started:
            self.runtime.start()
        try:
            body = self._read_body(environ)
        except _TooLarge:
            return _respond(start_response, door.too_large(), method)
        except ValueError:
            return _respond(start_response, door.bad_request("Invalid Content-Length."), method)
        request = self._capture(environ, path, body)
        response = self.runtime.drive(door.engine.accept(request, route))
        return _respond(start_response, response, method)

    def _read_body(self, environ: WSGIEnviron) -> bytes:
        limit = self._door.max_body
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        raw_len = environ.get("CONTENT_LENGTH") or ""
        if raw_len.strip():
            length = int(raw_len)
            if length < 0:
                raise ValueError("negative Content-Length")
            if length > limit:
                raise _TooLarge
            return bytes(stream.read(length)) if length else b""
        if (
            environ.get("wsgi.input_terminated")
            or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
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

    def _capture(self, environ: WSGIEnviron, path: str, body: bytes) -> CapturedRequest:
        headers: list[tuple[bytes, bytes]] = []
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").lower()
                headers.append((name.encode("latin-1"), str(value).encode("latin-1")))
        if environ.get("CONTENT_TYPE"):
            headers.append((b"content-type", environ["CONTENT_TYPE"].encode("latin-1")))
        if environ.get("CONTENT_LENGTH"):
            headers.append((b"content-length", environ["CONTENT_LENGTH"].encode("latin-1")))
        port = environ.get("SERVER_PORT") or "80"
        remote = environ.get("REMOTE_ADDR")
        remote_port = environ.get("REMOTE_PORT")
        protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        return CapturedRequest(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=path,
            query_string=(environ.get("QUERY_STRING") or "").encode("latin-1"),
            headers=headers,
            body=body,
            root_path=_decode_path(environ.get("SCRIPT_NAME", "") or ""),
            raw_path=None,
            scheme=environ.get("wsgi.url_scheme", "http"),
            http_version=protocol.split("/", 1)[-1] if "/" in protocol else "1.1",
            server=(environ.get("SERVER_NAME", "localhost"), int(port) if port.isdigit() else 80),
            client=(str(remote), int(str(remote_port)))
            if remote and str(remote_port).isdigit()
            else None,
        )


def _respond(start_response: StartResponse, response: Response, method: str) -> list[bytes]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]
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
