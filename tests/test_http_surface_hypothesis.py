"""The HTTP surface of every front door under random requests (hypothesis).

Each door (a raw ASGI app, Starlette, a raw WSGI app, Flask, Django) gets
random methods (lower-case ones too), paths (trailing slash, ``//``), header
names and values with non-UTF-8 bytes, cookies (``session=\\xff``) and bodies,
aimed at a marked route and at the status URLs of existing and unknown jobs.
Whatever arrives: the middleware never answers 500 (nor raises), each of its
errors is problem+json, a request it does not answer 202 creates no job, and
a marked handler never runs outside a job.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_accept import current_job, long_running

SECRET = "surface-secret-0123456789abcdef-0123"
PREFIX = "/_jobs"
CREDS = [(b"authorization", b"Bearer alice")]
SETTINGS = settings(
    max_examples=int(os.environ.get("SURFACE_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Reply:
    """What the client received."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass
class Door:
    """One front door with a marked route at /work, and what happened behind it."""

    name: str
    call: Callable[[str, str, list[tuple[bytes, bytes]], bytes], Reply]
    middleware: Any
    accepted: list[str] = field(default_factory=list)
    outside_job: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None
    #: the same app without the middleware, where the app itself can answer 500
    bare: Callable[[str, str, list[tuple[bytes, bytes]], bytes], Reply] | None = None


def _listener(door_ref: list[Door]) -> Callable[..., None]:
    def on_event(event: str, /, **fields: Any) -> None:
        if event == "accepted" and door_ref:
            door_ref[0].accepted.append(str(fields.get("job_id", "")))

    return on_event


def _ran(door_ref: list[Door], what: str) -> None:
    """Record a marked handler's run; outside a job it is a bypass."""
    if current_job() is None and door_ref:
        door_ref[0].outside_job.append(what)


def _signer(middleware: Any) -> Any:
    """The token signer behind a middleware (to make validly signed unknown ids)."""
    runtime = middleware.runtime
    return runtime.engine.signer


def _options(ref: list[Door]) -> dict[str, Any]:
    return {
        "secret_key": SECRET,
        "store": "memory://",
        "executor": "thread",
        "on_event": _listener(ref),
        "heartbeat_interval": 0.2,
        "worker_lost_after": 3.0,
    }


# -- ASGI ----------------------------------------------------------------------------------


class _Loop:
    """One event loop in a thread, shared by every ASGI request of a door."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _asgi_caller(
    app: Any, loop: _Loop
) -> Callable[[str, str, list[tuple[bytes, bytes]], bytes], Reply]:
    def call(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
        raw_path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode("utf-8", "surrogateescape"),
            "query_string": query.encode("latin-1", "replace"),
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 5000),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}  # pragma: no cover

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        loop.run(app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        return Reply(
            start["status"],
            [(bytes(k), bytes(v)) for k, v in start.get("headers", [])],
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        )

    return call


def _raw_asgi_door() -> Door:
    from async_accept.asgi import AsyncAcceptMiddleware

    ref: list[Door] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"].upper() == "POST" and scope["path"] == "/work":
            _ran(ref, "asgi /work")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = AsyncAcceptMiddleware(app, routes={"POST /work": {}}, **_options(ref))
    loop = _Loop()
    door = Door("asgi", _asgi_caller(mw, loop), mw)

    def close() -> None:
        loop.run(mw.runtime.ashutdown())
        loop.close()

    door.close = close
    ref.append(door)
    return door


def _starlette_door() -> Door:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware
    from tests.conftest import find_middleware

    ref: list[Door] = []

    @long_running
    async def work(request: Request) -> PlainTextResponse:
        _ran(ref, "starlette /work")
        return PlainTextResponse("done")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    app = Starlette(routes=[Route("/work", work, methods=["POST"]), Route("/plain", plain)])
    app.add_middleware(AsyncAcceptMiddleware, **_options(ref))
    loop = _Loop()
    door = Door("starlette", _asgi_caller(app, loop), None)
    door.call("GET", "/plain", [], b"")  # builds the stack, finds the marks
    door.middleware = find_middleware(app)

    def close() -> None:
        loop.run(door.middleware.runtime.ashutdown())
        loop.close()

    door.close = close
    ref.append(door)
    return door


# -- WSGI ----------------------------------------------------------------------------------


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _environ_name(name: bytes) -> str | None:
    """The environ key of a header, or None for a name a WSGI server refuses (not a token)."""
    if not name or not _TOKEN.issuperset(name):
        return None
    text = name.decode("latin-1")
    key = text.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return key
    return "HTTP_" + key


def _wsgi_caller(app: Any) -> Callable[[str, str, list[tuple[bytes, bytes]], bytes], Reply]:
    def call(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Reply:
        raw_path, _, query = path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": raw_path.encode("utf-8", "surrogateescape").decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "5000",
            "HTTP_HOST": "testserver",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            key = _environ_name(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ and key.startswith("HTTP_") and key != "HTTP_HOST":
                sep = "; " if key == "HTTP_COOKIE" else ", "
                environ[key] = environ[key] + sep + text
            else:
                environ[key] = text
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started.append((status, hdrs))
            return lambda data: None

        result = app(environ, start_response)
        try:
            out = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, hdrs = started[-1]
        return Reply(
            int(status.split(" ", 1)[0]),
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in hdrs],
            out,
        )

    return call


def _raw_wsgi_door() -> Door:
    from async_accept.wsgi import AsyncAcceptMiddleware

    ref: list[Door] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"].upper() == "POST" and environ["PATH_INFO"] == "/work":
            _ran(ref, "wsgi /work")
        start_response("200 OK", [("X-App", "1"), ("Content-Type", "text/plain")])
        return [b"ok"]

    mw = AsyncAcceptMiddleware(app, routes={"POST /work": {}}, **_options(ref))
    door = Door("wsgi", _wsgi_caller(mw), mw, close=mw.runtime.shutdown)
    ref.append(door)
    return door


def _flask_door() -> Door:
    from flask import Flask, request

    from async_accept.flask import AsyncAccept

    ref: list[Door] = []
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET

    @app.post("/work")
    @long_running
    def work() -> str:
        _ran(ref, f"flask {request.method} {request.environ['PATH_INFO']}")
        return "done"

    @app.post("/slashes/", strict_slashes=False)
    @long_running
    def slashes() -> str:
        _ran(ref, f"flask {request.method} {request.environ['PATH_INFO']}")
        return "done"

    @app.get("/plain")
    def plain() -> str:
        return "plain"

    ext = AsyncAccept(app, **_options(ref))
    door = Door("flask", _wsgi_caller(app.wsgi_app), ext.middleware)
    door.call = _wsgi_caller(app)
    door.close = ext.middleware.runtime.shutdown
    ref.append(door)
    return door


def _django_door(kind: str = "wsgi") -> Door:
    """The Django test project behind the middleware, through Django's WSGI or ASGI handler."""
    pytest.importorskip("django")
    import django
    from django.conf import settings as dj_settings

    if not dj_settings.configured:
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
        django.setup()
    if dj_settings.ROOT_URLCONF != "tests.django_project.urls":  # pragma: no cover
        pytest.skip("Django was configured by someone else in this process")
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from django.test.utils import override_settings

    import async_accept.django as aa_django

    loop = _Loop() if kind == "asgi" else None

    def caller() -> Callable[[str, str, list[tuple[bytes, bytes]], bytes], Reply]:
        if loop is None:
            return _wsgi_caller(get_wsgi_application())
        return _asgi_caller(get_asgi_application(), loop)

    ref: list[Door] = []
    overridden = override_settings(
        ASYNC_ACCEPT={**dj_settings.ASYNC_ACCEPT, **_options(ref), "store": "memory://"}
    )
    overridden.enable()
    aa_django.reset()
    call = caller()
    # Django itself answers 500 to some malformed requests (request.body with a
    # Content-Length that is not a number): the same app without the middleware
    # tells the app's own 500s from the middleware's.
    with override_settings(
        MIDDLEWARE=[m for m in dj_settings.MIDDLEWARE if not m.startswith("async_accept")]
    ):
        bare = caller()

    def django_call(
        method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Reply:
        reply = call(method, path, headers, body)
        # The test project's marked views answer JSON saying whether they ran in a
        # job; /slow/ is marked for the unsafe methods (OPTIONS and unknown ones pass).
        marked = method.upper() in ("POST", "PUT", "PATCH", "DELETE")
        if marked and reply.body.startswith(b'{"view"') and b'"in_job": false' in reply.body:
            ref[0].outside_job.append(f"django-{kind} {method} {path}")
        return reply

    name = "django" if kind == "wsgi" else "django-asgi"
    door = Door(name, django_call, aa_django.get_front_door(), bare=bare)

    def close() -> None:
        aa_django.reset()  # jobs of Django's ASGI handler run in threads too
        overridden.disable()
        aa_django.reset()
        if loop is not None:
            loop.close()

    door.close = close
    ref.append(door)
    return door


BUILDERS: dict[str, Callable[[], Door]] = {
    "asgi": _raw_asgi_door,
    "starlette": _starlette_door,
    "wsgi": _raw_wsgi_door,
    "flask": _flask_door,
    "django": _django_door,
    "django-asgi": lambda: _django_door("asgi"),
}
#: the marked route of each door (Django's test project marks ``/slow/`` for every method)
WORK = {"django": "/slow/", "django-asgi": "/slow/"}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def door(request: pytest.FixtureRequest) -> Iterator[Door]:
    """One front door, with one job of Alice's to aim status URLs at."""
    d = BUILDERS[request.param]()
    try:
        work = WORK.get(d.name, "/work")
        first = d.call("POST", work, CREDS, b"{}")
        assert first.status == 202, (first.status, first.body)
        location = first.header(b"location")
        assert location is not None
        d.tokens["existing"] = location.decode().rsplit("/", 1)[1]
        d.tokens["unknown"] = _signer(d.middleware).sign(secrets.token_urlsafe(16))
        yield d
    finally:
        d.close()


# -- strategies -----------------------------------------------------------------------------

METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "post", "Post", "get", "delete",
     "pOsT", "BREW"]
)  # fmt: skip
SEGMENT = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#/%"),
    max_size=8,
)
HEADER_NAME = st.one_of(
    st.sampled_from(
        [b"cookie", b"authorization", b"x-api-key", b"api-key", b"idempotency-key", b"prefer",
         b"content-type", b"content-length", b"proxy-authorization", b"accept", b"callback-url",
         b"last-event-id", b"traceparent", b"Cookie", b"X-Api-Key"]
    ),
    st.binary(min_size=1, max_size=12).filter(lambda b: b":" not in b and b"\n" not in b),
)  # fmt: skip
HEADER_VALUE = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from(
        [b"session=\xff", b"session=\xff\xfe; sessionid=\xc3", b'session="unterminated',
         b"session=a; session=b", b"=", b";;;", b"Bearer alice", b"Bearer \xff",
         b'"key-1"', b"respond-async, wait=1", b"wait=\xff", b"text/event-stream",
         b"-5", b"99999999999999999999", b"http://127.0.0.1:1/x", b"1, 2"]
    ),
)  # fmt: skip
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=6)
BODY = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b'{"a": 1}'))


@st.composite
def paths(draw: st.DrawFn, work: str) -> str:
    """A path near the marked route or the status URLs (``{existing}``/``{unknown}`` filled in)."""
    kind = draw(
        st.sampled_from(
            [work, work.rstrip("/") + "/", work.rstrip("/"), "/" + work, work + "/x",
             work.upper(), PREFIX, PREFIX + "/", PREFIX + "//", PREFIX + "/health",
             PREFIX + "/{existing}", PREFIX + "/{existing}/", PREFIX + "/{existing}/result",
             PREFIX + "/{existing}/cancel", PREFIX + "/{unknown}", PREFIX + "/{unknown}/result",
             PREFIX + "/{unknown}/cancel", PREFIX + "/{existing}x", "/" + PREFIX + "/{existing}",
             PREFIX + "/{existing}/result/", "/plain", "//slashes", "/slashes", "random"]
        )
    )  # fmt: skip
    if kind == "random":
        return "/" + "/".join(draw(st.lists(SEGMENT, max_size=4)))
    query = draw(st.sampled_from(["", "?a=1", "?a=%FF", "?limit=x", "?status=queued"]))
    return kind + query


def _is_ours(path: str) -> bool:
    p = path.partition("?")[0]
    return p == PREFIX or p.startswith(PREFIX + "/")


@SETTINGS
@given(data=st.data())
def test_random_requests_never_break_the_middleware(door: Door, data: st.DataObject) -> None:
    """No 500, problem+json errors, no job unless 202, no marked handler outside a job."""
    work = WORK.get(door.name, "/work")
    method = data.draw(METHODS, label="method")
    path = data.draw(paths(work), label="path")
    path = path.replace("{existing}", door.tokens["existing"]).replace(
        "{unknown}", door.tokens["unknown"]
    )
    headers = data.draw(HEADERS, label="headers")
    if data.draw(st.booleans(), label="as alice"):
        headers = [*CREDS, *headers]
    body = data.draw(BODY, label="body")
    before = len(door.accepted)

    reply = door.call(method, path, headers, body)

    if reply.status == 500 and door.bare is not None and not _is_ours(path):
        # Not ours if the app answers the same request 500 without the middleware.
        assert door.bare(method, path, headers, body).status == 500, reply.body[:300]
    else:
        assert reply.status != 500, (reply.status, reply.body[:300])
    ctype = (reply.header(b"content-type") or b"").split(b";")[0].strip()
    if _is_ours(path) and reply.status >= 400:
        assert ctype == b"application/problem+json", (reply.status, ctype, reply.body[:200])
    if not (reply.status == 202 and reply.header(b"location") is not None):
        assert len(door.accepted) == before, (reply.status, reply.body[:200])
    assert not door.outside_job, door.outside_job


@pytest.mark.parametrize("cookie", [b"session=\xff", b"session=\xff; sessionid=\xfe", b"a=\x80"])
@pytest.mark.parametrize("which", ["existing", "unknown"])
def test_malformed_cookie_on_a_status_url_is_the_plain_404(
    door: Door, cookie: bytes, which: str
) -> None:
    """A malformed cookie never raises: the status URL of a job, existing or not, is the 404."""
    reply = door.call("GET", f"{PREFIX}/{door.tokens[which]}", [(b"cookie", cookie)], b"")
    assert reply.status == 404, (reply.status, reply.body[:200])
    assert reply.header(b"content-type") == b"application/problem+json"


@pytest.mark.parametrize("method", ["post", "Post"])
def test_lower_case_method_on_a_marked_route_is_never_run_inline(door: Door, method: str) -> None:
    """A lower-case method the server passes on either makes a job or is refused, never runs."""
    work = WORK.get(door.name, "/work")
    before = len(door.accepted)
    reply = door.call(method, work, CREDS, b"{}")
    assert not door.outside_job, door.outside_job
    assert reply.status != 500
    if reply.status == 202:
        assert len(door.accepted) == before + 1


def test_flask_path_spellings_are_marked_too() -> None:
    """Every path Werkzeug routes to a marked view (//work, strict_slashes=False) makes a job."""
    pytest.importorskip("flask")
    d = _flask_door()
    try:
        for path in ("/slashes/", "/slashes", "//slashes//", "//work", "/work"):
            before = len(d.accepted)
            reply = d.call("POST", path, CREDS, b"{}")
            assert not d.outside_job, (path, d.outside_job)
            assert reply.status == 202, (path, reply.status)
            assert len(d.accepted) == before + 1
    finally:
        d.close()


def test_the_apps_own_500_is_told_from_the_middlewares() -> None:
    """Django's own 500 on a malformed Content-Length of an unmarked request happens
    without the middleware too: the surface suite counts it as the app's, not ours."""
    door = _django_door()
    try:
        headers = [(b"content-length", b"abc")]
        assert door.bare is not None
        assert door.bare("GET", "/slow/", headers, b"").status == 500
        assert door.call("GET", "/slow/", headers, b"").status == 500
        # On a marked method the middleware answers first, with its own 400.
        reply = door.call("POST", "/slow/", headers, b"")
        assert reply.status == 400, reply.status
        assert reply.header(b"content-type") == b"application/problem+json"
    finally:
        door.close()
