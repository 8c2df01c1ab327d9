"""The differential harness: one HTTP request, sent as raw ASGI/WSGI calls to an
app without the middleware and to the same app with its route marked, and
what the handler saw and what the client finally got, compared.

Raw calls rather than test clients: a client hides what matters here (a
chunked body, ``%FF`` in the path, a ``REMOTE_ADDR`` without ``REMOTE_PORT``,
the ASGI ``tls`` extension and lifespan ``state``). The calls build scopes and
environs the way uvicorn and gunicorn do.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from hypothesis import strategies as st

SECRET = "differential-secret-0123456789abcdef"
#: the methods of the differential route (all unsafe: marked under any marking rule)
METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: what the handler answers, whatever it saw (plus a body derived from the request)
COOKIES = (
    ("flash", "saved", {"path": "/", "httponly": True, "samesite": "Lax"}),
    ("prefs", "dark", {"path": "/d", "max_age": 600, "secure": True}),
)
#: headers the middleware's own replay marker adds to what an app sees; not the request's
MARKER_KEYS = ("async_accept.replay",)

Headers = tuple[tuple[bytes, bytes], ...]
_EXPIRES = re.compile(rb"(?i)(expires=)[^;]*")


@dataclass(frozen=True)
class Req:
    """One HTTP request as a server would hand it to an app."""

    method: str = "POST"
    raw_path: bytes = b"/d/item"  # percent-encoded, without the root path
    query: bytes = b""
    headers: Headers = ((b"host", b"testserver"),)  # lower-case, order and duplicates kept
    body: tuple[bytes, ...] = ()  # the chunks as they arrive
    chunked: bool = False  # Transfer-Encoding: chunked (no Content-Length)
    client: tuple[str, int | None] | None = ("10.1.2.3", 50123)  # port None: no REMOTE_PORT
    scheme: str = "http"
    root_path: str = ""
    tls: dict[str, Any] | None = None  # the ASGI tls extension

    @property
    def data(self) -> bytes:
        return b"".join(self.body)

    def wire_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as they arrive, framing headers included."""
        out = list(self.headers)
        if self.chunked:
            out.append((b"transfer-encoding", b"chunked"))
        elif self.body:
            out.append((b"content-length", str(len(self.data)).encode()))
        return out

    def credentials(self) -> list[tuple[bytes, bytes]]:
        """The headers a poll of this request's job sends again (same caller)."""
        return [(k, v) for k, v in self.headers if k in (b"authorization", b"cookie")]


@dataclass
class Resp:
    """What the client got."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    def comparable(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers (names lower-cased, in order, ``date`` dropped), body.

        A cookie's ``Expires`` is the clock at the answer plus its ``Max-Age``:
        the date is blanked (its presence is kept)."""
        headers = [
            (k.lower(), _EXPIRES.sub(rb"\1<date>", v) if k.lower() == b"set-cookie" else v)
            for k, v in self.headers
            if k.lower() != b"date"
        ]
        return self.status, headers, self.body


# --- raw ASGI ---


def asgi_scope(req: Req, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scope uvicorn builds (``--root-path`` included in path and raw_path)."""
    path = req.root_path + unquote(req.raw_path.decode("ascii"))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": req.method,
        "scheme": req.scheme,
        "path": path,
        "raw_path": req.root_path.encode("ascii") + req.raw_path,
        "root_path": req.root_path,
        "query_string": req.query,
        "headers": req.wire_headers(),
        "server": ("testserver", 80),
        "client": list(req.client) if req.client else None,
        "extensions": {},
    }
    if req.tls is not None:
        scope["extensions"]["tls"] = dict(req.tls)
    if state is not None:
        scope["state"] = dict(state)
    return scope


async def asgi_call(app: Any, req: Req, state: dict[str, Any] | None = None) -> Resp:
    """Send ``req`` to the ASGI ``app``; the client stays until the response is done."""
    chunks = list(req.body) or [b""]
    done = asyncio.Event()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(asgi_scope(req, state), receive, send)
    finally:
        done.set()
    assert status is not None, "the app sent no response"
    return Resp(status, headers, b"".join(body))


@contextlib.asynccontextmanager
async def asgi_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    """Run the app's lifespan (startup now, shutdown on exit); yields its ``state``."""
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.ensure_future(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(from_app.get(), 10)
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield state
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(from_app.get(), 10)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 10)


# --- raw WSGI ---


def wsgi_environ(req: Req) -> dict[str, Any]:
    """The environ gunicorn builds (PEP 3333: PATH_INFO is the raw bytes as latin-1)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": req.root_path,
        "PATH_INFO": unquote_to_bytes(req.raw_path).decode("latin-1"),
        "QUERY_STRING": req.query.decode("latin-1"),
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "RAW_URI": (req.root_path.encode("ascii") + req.raw_path).decode("latin-1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": req.scheme,
        "wsgi.input": io.BytesIO(req.data),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    if req.client is not None:
        environ["REMOTE_ADDR"] = req.client[0]
        if req.client[1] is not None:
            environ["REMOTE_PORT"] = str(req.client[1])
    for name, value in req.wire_headers():
        key = name.decode("latin-1").upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value.decode("latin-1")
            continue
        key = "HTTP_" + key
        if key in environ:  # a repeated header: joined, as servers do
            sep = "; " if key == "HTTP_COOKIE" else ","
            environ[key] = environ[key] + sep + value.decode("latin-1")
        else:
            environ[key] = value.decode("latin-1")
    return environ


def wsgi_call(app: Any, req: Req) -> Resp:
    """Send ``req`` to the WSGI ``app``."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"] = int(status.split(" ", 1)[0])
        got["headers"] = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return lambda data: None

    result = app(wsgi_environ(req), start_response)
    try:
        body = b"".join(bytes(c) for c in result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Resp(got["status"], got["headers"], body)


# --- following a job to its end ---


def follow_up(req: Req, url: bytes) -> Req:
    """A GET of ``url`` (an absolute path the middleware emitted) by the same caller."""
    parts = urlsplit(url.decode("latin-1"))
    path = parts.path.encode("latin-1")
    if req.root_path and path.startswith(req.root_path.encode()):
        path = path[len(req.root_path) :]
    return replace(
        req,
        method="GET",
        raw_path=path,
        query=parts.query.encode("latin-1"),
        headers=((b"host", b"testserver"), *req.credentials()),
        body=(),
        chunked=False,
    )


@dataclass
class Flow:
    """What a marked request went through: the first answer, the polls, the end."""

    first: Resp
    statuses: list[Resp] = field(default_factory=list)
    final: Resp | None = None


async def asgi_flow(
    app: Any, req: Req, state: dict[str, Any] | None = None, timeout: float = 15
) -> Flow:
    """Send ``req``; on a 202, poll its status URL to the 303 and fetch what it names."""
    first = await asgi_call(app, req, state)
    flow = Flow(first)
    if first.status != 202:
        flow.final = first
        return flow
    status_url = follow_up(req, first.header(b"location") or b"")
    deadline = time.monotonic() + timeout
    while True:
        answer = await asgi_call(app, status_url, state)
        flow.statuses.append(answer)
        if answer.status != 200 or not _active(answer):
            break
        assert time.monotonic() < deadline, f"the job did not end: {answer.body!r}"
        await asyncio.sleep(0.01)
    if answer.status == 303:
        flow.final = await asgi_call(app, follow_up(req, answer.header(b"location") or b""), state)
    return flow


def wsgi_flow(app: Any, req: Req, timeout: float = 15) -> Flow:
    """The WSGI twin of :func:`asgi_flow`."""
    first = wsgi_call(app, req)
    flow = Flow(first)
    if first.status != 202:
        flow.final = first
        return flow
    status_url = follow_up(req, first.header(b"location") or b"")
    deadline = time.monotonic() + timeout
    while True:
        answer = wsgi_call(app, status_url)
        flow.statuses.append(answer)
        if answer.status != 200 or not _active(answer):
            break
        assert time.monotonic() < deadline, f"the job did not end: {answer.body!r}"
        time.sleep(0.01)
    if answer.status == 303:
        flow.final = wsgi_call(app, follow_up(req, answer.header(b"location") or b""))
    return flow


def _active(answer: Resp) -> bool:
    return b'"status":"queued"' in answer.body or b'"status":"processing"' in answer.body


# --- what the handler saw ---


def asgi_seen(scope: Any, body: bytes, **framework: Any) -> dict[str, Any]:
    """The request as an ASGI handler saw it (the replay marker left out)."""
    extensions = {k: v for k, v in (scope.get("extensions") or {}).items() if k not in MARKER_KEYS}
    client = scope.get("client")
    server = scope.get("server")
    return {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope.get("raw_path"),
        "root_path": scope.get("root_path", ""),
        "query_string": scope.get("query_string"),
        "headers": [(bytes(k), bytes(v)) for k, v in scope["headers"]],
        "client": tuple(client) if client else None,
        "server": tuple(server) if server else None,
        "scheme": scope.get("scheme"),
        "http_version": scope.get("http_version"),
        "extensions": extensions,
        "state": sorted((scope.get("state") or {}).items()),
        "body": body,
        **framework,
    }


_ENVIRON_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "wsgi.url_scheme",
)


def wsgi_seen(environ: Any, body: bytes, **framework: Any) -> dict[str, Any]:
    """The request as a WSGI handler saw it: the CGI keys and headers in order."""
    seen: dict[str, Any] = {k: environ.get(k) for k in _ENVIRON_KEYS}
    seen["headers"] = [(k, v) for k, v in environ.items() if k.startswith("HTTP_")]
    seen["body"] = body
    seen.update(framework)
    return seen


def answer_body(seen_body: bytes) -> bytes:
    """The handler's body: bytes that are not text, and depend on what it read."""
    import hashlib

    return b"\x00\xff" + hashlib.sha256(seen_body).digest() + bytes(range(256))


# --- hypothesis strategies ---

_SAFE = "abcXYZ019-._~"
_segment = st.lists(
    st.one_of(
        st.sampled_from(list(_SAFE)),
        st.sampled_from(["%FF", "%C3%A9", "%20", "%2F", "%25", "%00", "%E2%82%AC", "+"]),
    ),
    min_size=1,
    max_size=6,
).map("".join)
raw_paths = st.lists(_segment, min_size=1, max_size=3).map(
    lambda segs: ("/d/" + "/".join(segs)).encode("ascii")
)
_qpart = st.text(alphabet="abc=&%FF2019+;,/?", max_size=20)
queries = st.one_of(st.just(b""), _qpart.map(lambda s: s.encode("ascii")))
_header_names = st.sampled_from(
    [b"x-a", b"x-b", b"accept", b"x-dup", b"user-agent", b"x-forwarded-for", b"accept-language"]
)
_header_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16
).map(lambda s: s.encode("ascii"))
_more_headers = st.lists(st.tuples(_header_names, _header_values), max_size=6)
_credentials = st.sampled_from(
    [(), ((b"authorization", b"Bearer alice"),), ((b"cookie", b"session=abc; other=1"),)]
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[tuple[bytes, ...], bool, tuple[tuple[bytes, bytes], ...]]:
    """(chunks, chunked, content headers): empty, fixed, chunked or a multipart upload."""
    kind = draw(st.sampled_from(["empty", "fixed", "chunked", "multipart"]))
    if kind == "empty":
        return (), False, ()
    if kind == "multipart":
        data = draw(st.binary(min_size=0, max_size=200))
        boundary = b"diffboundary7MA4YWxk"
        body = (
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="title"\r\n\r\nhello\r\n'
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="upload"; filename="a.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
            b"--" + boundary + b"--\r\n"
        )
        ctype = b"multipart/form-data; boundary=" + boundary
        return (body,), False, ((b"content-type", ctype),)
    chunks = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
    ctype = draw(st.sampled_from([b"application/octet-stream", b"application/json"]))
    return tuple(chunks), kind == "chunked", ((b"content-type", ctype),)


@st.composite
def requests(draw: st.DrawFn, *, wsgi: bool = False, mounts: bool = True) -> Req:
    """A request to the differential route, as a hypothesis strategy."""
    chunks, chunked, content = draw(bodies())
    headers = (
        (b"host", b"testserver"),
        *draw(_more_headers),
        *draw(_credentials),
        *content,
    )
    port: int | None = draw(st.sampled_from([50123, None])) if wsgi else 50123
    return Req(
        method=draw(st.sampled_from(METHODS)),
        raw_path=draw(raw_paths),
        query=draw(queries),
        headers=headers,
        body=chunks,
        chunked=chunked,
        client=("10.1.2.3", port),
        scheme=draw(st.sampled_from(["http", "https"])),
        root_path=draw(st.sampled_from(["", "/mount"])) if mounts else "",
    )
