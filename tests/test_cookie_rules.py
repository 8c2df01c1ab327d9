"""A repeated cookie resolves the way the app's framework resolves it.

Each framework's reader (async_accept/cookie_rules.py) is checked with
hypothesis against the framework's own request object on random ``Cookie``
headers (repeated names, quotes, spaces, ``=``, non-UTF-8 bytes, several
header lines); then, end to end, a job accepted with ``session=A; session=B``
belongs to the value the app reads: that one alone reads the job, the other
gets the 404.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_accept import cookie_rules
from async_accept.cookie_rules import read_cookies, reader_for_app

NAMES = st.sampled_from(["session", "sessionid", "other", "", " session", "Session"])
VALUE = st.one_of(
    st.binary(max_size=10).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"a", b"b", b'"q"', b'"un', b"x=y", b"\xff", b"\xc3\xa9", b" s ", b""]),
)
PIECE = st.one_of(
    st.tuples(NAMES, VALUE).map(lambda nv: nv[0].encode() + b"=" + nv[1]),
    st.sampled_from([b"", b"flag", b" ", b"="]),
)
LINE = st.lists(PIECE, min_size=1, max_size=5).map(lambda ps: b";".join(ps))
LINES = st.lists(LINE, min_size=1, max_size=3)
SETTINGS = settings(
    max_examples=int(os.environ.get("COOKIE_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _wsgi_environ(line: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        "HTTP_COOKIE": line.decode("latin-1"),  # PEP 3333: the server's bytes as latin-1
    }


def _starlette(lines: Sequence[bytes]) -> Mapping[str, str]:
    from starlette.requests import Request

    return Request({"type": "http", "headers": [(b"cookie", v) for v in lines]}).cookies


def _litestar(lines: Sequence[bytes]) -> Mapping[str, str]:
    from litestar.connection import ASGIConnection

    scope = {"type": "http", "headers": [(b"cookie", v) for v in lines], "state": {}}
    return ASGIConnection(scope).cookies  # type: ignore[arg-type]


def _django_request(lines: Sequence[bytes], asgi: bool) -> Any:
    from django.core.handlers.asgi import ASGIRequest
    from django.core.handlers.wsgi import WSGIRequest

    if not asgi:  # a WSGI server hands Django one HTTP_COOKIE
        return WSGIRequest(_wsgi_environ(b"; ".join(lines)))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"cookie", v) for v in lines],
    }
    return ASGIRequest(scope, io.BytesIO(b""))


def _django_case(asgi: bool) -> tuple[Any, Any]:
    """(ours, theirs) for Django: ours reads the Cookie lines the middleware captures
    from ``request.META`` (django_auth.capture), theirs is ``request.COOKIES``."""

    def ours(lines: Sequence[bytes]) -> Mapping[str, str]:
        from async_accept.django_auth import capture

        captured = capture(_django_request(lines, asgi), "/", b"")
        seen = [v for k, v in captured.headers if k == b"cookie"]
        reader = cookie_rules.django_asgi_cookies if asgi else cookie_rules.django_cookies
        return read_cookies(reader, seen)

    def theirs(lines: Sequence[bytes]) -> Mapping[str, str]:
        return dict(_django_request(lines, asgi).COOKIES)

    return ours, theirs


def _flask(lines: Sequence[bytes]) -> Mapping[str, str]:
    from flask import Request

    cookies = Request(_wsgi_environ(lines[0])).cookies
    return {name: cookies[name] for name in cookies}  # .get: the first value


def _quart(lines: Sequence[bytes]) -> Mapping[str, str]:
    from werkzeug.datastructures import Headers
    from werkzeug.sansio.request import Request  # what Quart's request is built on

    headers = Headers([("Cookie", v.decode("latin-1")) for v in lines])
    cookies = Request("GET", "http", None, "", "/", b"", headers, None).cookies
    return {name: cookies[name] for name in cookies}


def _falcon(lines: Sequence[bytes]) -> Mapping[str, str]:
    import falcon.testing

    req = falcon.testing.create_req(headers={"Cookie": lines[0].decode("latin-1")})
    return dict(req.cookies)


def _reading(reader: Any) -> Callable[[Sequence[bytes]], Mapping[str, str]]:
    return lambda lines: read_cookies(reader, lines)


#: (ours, the framework's own view, package, whether a WSGI server joins the lines)
CASES: dict[str, tuple[Any, Callable[[Sequence[bytes]], Mapping[str, str]], str, bool]] = {
    "starlette": (_reading(cookie_rules.starlette_cookies), _starlette, "starlette", False),
    "litestar": (_reading(cookie_rules.litestar_cookies), _litestar, "litestar", False),
    "django-wsgi": (*_django_case(False), "django", False),
    "django-asgi": (*_django_case(True), "django", False),
    "flask": (_reading(cookie_rules.werkzeug_cookies), _flask, "flask", True),
    "quart": (_reading(cookie_rules.werkzeug_cookies), _quart, "werkzeug", False),
    "falcon": (_reading(cookie_rules.falcon_cookies), _falcon, "falcon", True),
}


def _django_ready() -> None:
    pytest.importorskip("django")
    import django
    from django.conf import settings as dj_settings

    if not dj_settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
        django.setup()


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_reader_sees_what_its_framework_sees(case: str) -> None:
    """On random Cookie headers each reader returns exactly the framework's own cookies
    (no cookies where the framework's parser raises)."""
    ours, theirs, package, joined = CASES[case]
    pytest.importorskip(package)
    if package == "django":
        _django_ready()

    @SETTINGS
    @given(lines=LINES)
    def check(lines: list[bytes]) -> None:
        if joined:  # a WSGI server hands the app one HTTP_COOKIE
            lines = [b"; ".join(lines)]
        try:
            expected = dict(theirs(lines))
        except Exception:  # the framework refuses the header: the app sees no cookie
            expected = {}
        assert dict(ours(lines)) == expected, lines

    check()


def test_readers_are_picked_by_the_wrapped_apps_framework() -> None:
    """The middleware picks the reader of the framework it wraps; unknown apps get none."""
    pytest.importorskip("flask")
    pytest.importorskip("starlette")
    from flask import Flask
    from starlette.applications import Starlette

    assert reader_for_app(Flask(__name__).wsgi_app) is cookie_rules.werkzeug_cookies
    assert reader_for_app(Starlette()) is cookie_rules.starlette_cookies
    assert reader_for_app(lambda environ, start_response: []) is None


# -- end to end: the owner is the value the app reads --------------------------------------

SECRET = "cookie-rules-secret-0123456789abcdef-0123"


def _starlette_client() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from async_accept import long_running
    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def work(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.cookies.get("session", ""))

    app = Starlette(routes=[Route("/work", work, methods=["POST"])])
    app.add_middleware(AsyncAcceptMiddleware, secret_key=SECRET, store="memory://")
    return TestClient(app, follow_redirects=False)


def _flask_app() -> Any:
    from flask import Flask, request

    from async_accept import long_running
    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.post("/work")
    @long_running
    def work() -> str:
        return request.cookies.get("session", "")

    AsyncAccept(app, secret_key=SECRET, store="memory://", executor="thread")
    return app


@pytest.mark.parametrize(
    ("framework", "seen", "unseen"), [("starlette", "B", "A"), ("flask", "A", "B")]
)
def test_a_repeated_session_cookie_binds_the_value_the_app_reads(
    framework: str, seen: str, unseen: str
) -> None:
    """``session=A; session=B``: Starlette reads B, Flask reads A; that value alone
    reads the job, the other one gets the 404."""
    pytest.importorskip(framework)
    if framework == "starlette":
        with _starlette_client() as client:
            accepted = client.post("/work", headers={"Cookie": "session=A; session=B"})
            assert accepted.status_code == 202, accepted.text
            url = accepted.headers["location"]

            def read(value: str) -> int:
                client.cookies.clear()  # no owner cookie: the session cookie alone
                return int(client.get(url, headers={"Cookie": f"session={value}"}).status_code)

            assert read(seen) in (200, 303)
            assert read(unseen) == 404
        return
    app = _flask_app()
    accepted = app.test_client(use_cookies=False).post(
        "/work", headers={"Cookie": "session=A; session=B"}
    )
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["location"]
    for value, readable in ((seen, True), (unseen, False)):
        answer = app.test_client(use_cookies=False).get(
            url, headers={"Cookie": f"session={value}"}
        )  # no jar
        assert (answer.status_code in (200, 303)) is readable, (value, answer.status_code)
