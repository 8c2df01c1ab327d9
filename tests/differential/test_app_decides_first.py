"""The app decides first: a request to a route marked with ``@long_running``
goes through the app's own stack (middleware, authentication, validation,
dependencies, decorators above the mark) in the request cycle; whatever the
app answers before the handler is the client's answer, synchronously, and no
job exists. Only a call that reaches the handler becomes a job."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from async_accept import long_running
from tests.differential.harness import SECRET, Req, Resp, asgi_call, asgi_lifespan, wsgi_call

H = (b"host", b"testserver")
ALICE = (b"authorization", b"Bearer alice")
JSON = (b"content-type", b"application/json")
OPTS: dict[str, Any] = {"secret_key": SECRET, "store": "memory://", "health": "on"}

RAN: list[str] = []


def _post(path: bytes, *headers: tuple[bytes, bytes], body: bytes = b"") -> Req:
    return Req(method="POST", raw_path=path, headers=(H, *headers), body=(body,) if body else ())


def _jobs(resp: Resp) -> int:
    """How many jobs the store holds, from the health answer."""
    assert resp.status == 200, resp
    return sum(json.loads(resp.body)["jobs"].values())


HEALTH = Req(method="GET", raw_path=b"/_jobs/health", headers=(H,))


def run_asgi(app: Any, reqs: list[Req]) -> tuple[list[Resp], int]:
    """Send ``reqs`` in turn (lifespan around them); the answers and the jobs made."""

    async def go() -> tuple[list[Resp], int]:
        async with asgi_lifespan(app) as state:
            out = [await asgi_call(app, r, state or None) for r in reqs]
            jobs = _jobs(await asgi_call(app, HEALTH, state or None))
        return out, jobs

    return asyncio.run(go())


def run_wsgi(app: Any, reqs: list[Req], close: Callable[[], None]) -> tuple[list[Resp], int]:
    """The WSGI twin of :func:`run_asgi`."""
    try:
        out = [wsgi_call(app, r) for r in reqs]
        return out, _jobs(wsgi_call(app, HEALTH))
    finally:
        close()


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


# --- Starlette and FastAPI ---


def test_starlette_requires_above_the_mark() -> None:
    """Starlette: ``@requires("authenticated")`` above the mark answers its own 403
    at once for an anonymous caller (no job); an authenticated call is a job."""
    from starlette.applications import Starlette
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        SimpleUser,
        requires,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    class Bearer(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> Any:
            if conn.headers.get("authorization") == "Bearer alice":
                return AuthCredentials(["authenticated"]), SimpleUser("alice")
            return None

    @requires("authenticated")
    @long_running
    async def report(request: Request) -> PlainTextResponse:
        RAN.append("report")
        return PlainTextResponse("made", status_code=201)

    app = Starlette(
        routes=[Route("/reports", report, methods=["POST"])],
        middleware=[
            Middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio"),
            Middleware(AuthenticationMiddleware, backend=Bearer()),
        ],
    )
    (anon, authed), jobs = run_asgi(app, [_post(b"/reports"), _post(b"/reports", ALICE)])
    assert anon.status == 403
    assert authed.status == 202
    assert jobs == 1


def test_fastapi_validation_and_dependencies_answer_first() -> None:
    """FastAPI: an invalid body gets FastAPI's own 422 and a failing ``Depends``
    its 401, synchronously and without a job; a valid call is a job."""
    from fastapi import Depends, FastAPI, Header, HTTPException
    from pydantic import BaseModel

    from async_accept.asgi import AsyncAcceptMiddleware

    class Order(BaseModel):
        item: str
        qty: int

    def user(authorization: str | None = Header(default=None)) -> str:
        if authorization != "Bearer alice":
            raise HTTPException(401, "who are you?")
        return "alice"

    app = FastAPI()

    async def create(order: Order, who: str = Depends(user)) -> dict[str, Any]:
        RAN.append("create")
        return {"ok": order.item}

    # Resolved here: FastAPI reads the annotations, which this module keeps as strings.
    create.__annotations__ = {"order": Order, "who": str, "return": dict[str, Any]}
    app.post("/orders")(long_running(create))
    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio")
    good = json.dumps({"item": "x", "qty": 2}).encode()
    (invalid, anon, ok), jobs = run_asgi(
        app,
        [
            _post(b"/orders", ALICE, JSON, body=b'{"item": "x"}'),
            _post(b"/orders", JSON, body=good),
            _post(b"/orders", ALICE, JSON, body=good),
        ],
    )
    assert invalid.status == 422
    assert b"qty" in invalid.body
    assert anon.status == 401
    assert ok.status == 202
    assert jobs == 1


# --- Flask and Quart ---


def _login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A Flask-Login-like decorator: anonymous callers are sent to the login page."""
    import functools

    from flask import redirect, request

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("Authorization") != "Bearer alice":
            return redirect("/login?next=/posts")
        return view(*args, **kwargs)

    return wrapper


def test_flask_login_required_and_before_request() -> None:
    """Flask: a login decorator above the mark redirects an anonymous caller to the
    login page and a ``before_request`` hook's 403 stands, both without a job."""
    from flask import Flask, abort, request

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.before_request
    def banned() -> None:
        if request.headers.get("X-Banned"):
            abort(403)

    @app.post("/posts")
    @_login_required
    @long_running
    def create() -> tuple[str, int]:
        RAN.append("create")
        return "created", 201

    ext = AsyncAccept(app, **OPTS, executor="thread")
    (anon, banned_, ok), jobs = run_wsgi(
        app,
        [_post(b"/posts"), _post(b"/posts", ALICE, (b"x-banned", b"1")), _post(b"/posts", ALICE)],
        ext.middleware.runtime.shutdown,
    )
    assert anon.status == 302
    assert anon.header(b"location") == b"/login?next=/posts"
    assert banned_.status == 403
    assert ok.status == 202
    assert jobs == 1


def test_quart_before_request_answers_first() -> None:
    """Quart: a ``before_request`` hook's 401 is the answer, with no job."""
    from quart import Quart, abort, request

    from async_accept.quart import AsyncAccept

    app = Quart(__name__)

    @app.before_request
    async def auth() -> None:
        if request.headers.get("Authorization") != "Bearer alice":
            abort(401)

    @app.post("/posts")
    @long_running
    async def create() -> tuple[str, int]:
        RAN.append("create")
        return "created", 201

    AsyncAccept(app, **OPTS, executor="asyncio")
    (anon, ok), jobs = run_asgi(app, [_post(b"/posts"), _post(b"/posts", ALICE)])
    assert anon.status == 401
    assert ok.status == 202
    assert jobs == 1


# --- Litestar and Falcon ---


def test_litestar_guard_answers_first() -> None:
    """Litestar: a guard's 401 is the answer, with no job."""
    from litestar import Litestar, post
    from litestar.connection import ASGIConnection
    from litestar.exceptions import NotAuthorizedException
    from litestar.handlers.base import BaseRouteHandler

    from async_accept.litestar import AsyncAcceptMiddleware

    def bearer(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.headers.get("authorization") != "Bearer alice":
            raise NotAuthorizedException()

    async def create() -> str:
        RAN.append("create")
        return "created"

    create.__annotations__ = {"return": str}
    handler = post("/posts", guards=[bearer])(long_running(create))
    app = AsyncAcceptMiddleware(Litestar([handler]), **OPTS, executor="asyncio")
    (anon, ok), jobs = run_asgi(app, [_post(b"/posts"), _post(b"/posts", ALICE)])
    assert anon.status == 401
    assert ok.status == 202
    assert jobs == 1


def test_falcon_hook_answers_first() -> None:
    """Falcon: a ``@falcon.before`` hook's 401 is the answer, with no job."""
    import falcon

    from async_accept.falcon import wrap

    def bearer(req: Any, resp: Any, resource: Any, params: Any) -> None:
        if req.get_header("Authorization") != "Bearer alice":
            raise falcon.HTTPUnauthorized()

    class Posts:
        @falcon.before(bearer)
        @long_running
        def on_post(self, req: Any, resp: Any) -> None:
            RAN.append("create")
            resp.status = 201

    inner = falcon.App()
    inner.add_route("/posts", Posts())
    app: Any = wrap(inner, **OPTS)
    (anon, ok), jobs = run_wsgi(
        app, [_post(b"/posts"), _post(b"/posts", ALICE)], app.runtime.shutdown
    )
    assert anon.status == 401
    assert ok.status == 202
    assert jobs == 1


# --- Django and DRF ---


def _django(
    urlpatterns: list[Any], reqs: list[Req], *, asgi: bool = False
) -> tuple[list[Resp], int]:
    """``reqs`` through Django (CSRF on) with the middleware, health answering."""
    import types

    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings

    urlconf = types.ModuleType("decides_first_urls")
    urlconf.urlpatterns = urlpatterns  # type: ignore[attr-defined]
    with override_settings(
        ROOT_URLCONF=urlconf,
        ASYNC_ACCEPT={"store": "memory://", "health": "on"},
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "async_accept.django.AsyncAcceptMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
    ):
        if asgi:
            handler = get_asgi_application()

            async def go() -> tuple[list[Resp], int]:
                out = [await asgi_call(handler, r) for r in reqs]
                return out, _jobs(await asgi_call(handler, HEALTH))

            return asyncio.run(go())
        wsgi = get_wsgi_application()
        return [wsgi_call(wsgi, r) for r in reqs], _jobs(wsgi_call(wsgi, HEALTH))


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_django_csrf_answers_first(asgi: bool) -> None:
    """Django: a POST without a CSRF token gets Django's own 403 (no job); an
    exempt view's POST is a job."""
    from django.http import HttpResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    @long_running
    def guarded(request: Any) -> HttpResponse:
        RAN.append("guarded")
        return HttpResponse("made", status=201)

    @csrf_exempt
    @long_running
    def open_(request: Any) -> HttpResponse:
        RAN.append("open")
        return HttpResponse("made", status=201)

    (forbidden, ok), jobs = _django(
        [path("guarded", guarded), path("open", open_)],
        [_post(b"/guarded", ALICE), _post(b"/open", ALICE)],
        asgi=asgi,
    )
    assert forbidden.status == 403
    assert ok.status == 202
    assert jobs == 1


def test_drf_authentication_and_permissions_answer_first() -> None:
    """DRF: an anonymous caller gets DRF's own 401/403 from its authentication and
    permission classes (no job); an authenticated call is a job."""
    pytest.importorskip("rest_framework")
    from rest_framework.authentication import BaseAuthentication
    from rest_framework.exceptions import AuthenticationFailed
    from rest_framework.permissions import IsAuthenticated
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class Token(BaseAuthentication):
        def authenticate(self, request: Any) -> Any:
            header = request.META.get("HTTP_AUTHORIZATION")
            if header is None:
                return None
            if header != "Bearer alice":
                raise AuthenticationFailed("bad token")
            return (type("U", (), {"is_authenticated": True})(), "alice")

        def authenticate_header(self, request: Any) -> str:
            return "Bearer"

    class Snippets(APIView):
        authentication_classes = [Token]
        permission_classes = [IsAuthenticated]

        @long_running
        def post(self, request: Any) -> Response:
            RAN.append("post")
            return Response({"ok": True}, status=201)

    from django.urls import path

    (anon, wrong, ok), jobs = _django(
        [path("snippets", Snippets.as_view())],
        [
            _post(b"/snippets"),
            _post(b"/snippets", (b"authorization", b"Bearer mallory")),
            _post(b"/snippets", ALICE),
        ],
    )
    assert anon.status == 401
    assert wrong.status == 401
    assert ok.status == 202
    assert jobs == 1


def test_pattern_marked_routes_keep_accepting_on_arrival() -> None:
    """A route marked by ``routes=[...]`` has no handler to stop at: it is accepted on
    arrival, before the app's checks (today's behaviour, kept)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    async def report(request: Request) -> PlainTextResponse:
        if request.headers.get("authorization") != "Bearer alice":
            return PlainTextResponse("no", status_code=401)
        return PlainTextResponse("made")

    app = Starlette(routes=[Route("/reports", report, methods=["POST"])])
    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio", routes=["POST /reports"])
    (anon,), jobs = run_asgi(app, [_post(b"/reports")])
    assert anon.status == 202
    assert jobs == 1


def test_precheck_false_accepts_on_arrival() -> None:
    """``@long_running(precheck=False)`` keeps accepting on arrival: the app's checks
    run only in the job (an anonymous caller gets a 202)."""
    from starlette.applications import Starlette
    from starlette.authentication import requires
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @requires("authenticated")
    @long_running(precheck=False)
    async def report(request: Request) -> PlainTextResponse:
        return PlainTextResponse("made")

    app = Starlette(routes=[Route("/reports", report, methods=["POST"])])
    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio")
    (anon,), jobs = run_asgi(app, [_post(b"/reports")])
    assert anon.status == 202
    assert jobs == 1


def test_the_handler_body_runs_only_in_the_job() -> None:
    """At accept the marked handler's body does not run (``current_job()`` is None
    there); in the job it runs once, with ``current_job()`` set."""
    from flask import Flask

    from async_accept import current_job
    from async_accept.flask import AsyncAccept
    from tests.differential.harness import wsgi_flow

    app = Flask(__name__)
    calls: list[bool] = []

    @app.post("/work")
    @long_running
    def work() -> str:
        calls.append(current_job() is not None)
        return "done"

    ext = AsyncAccept(app, **{**OPTS, "executor": "thread"})
    try:
        flow = wsgi_flow(app, _post(b"/work", ALICE))
    finally:
        ext.middleware.runtime.shutdown()
    assert flow.first.status == 202
    assert flow.final is not None and flow.final.body == b"done"
    assert calls == [True]
