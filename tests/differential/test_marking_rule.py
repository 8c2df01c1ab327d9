"""Mark what the user means: on a view that serves several methods,
``@long_running`` marks the unsafe ones (POST, PUT, PATCH, DELETE); GET only
when it is the view's only method; HEAD follows GET; OPTIONS never;
``methods=[...]`` says exactly. The same rule on every framework."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from typing import Any

from async_accept import long_running
from tests.differential.harness import SECRET, Req, Resp, asgi_call, asgi_lifespan, wsgi_call

H = (b"host", b"testserver")
OPTS: dict[str, Any] = {"secret_key": SECRET, "store": "memory://"}
ALL = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: a view serving GET and POST (plus what frameworks add: HEAD, OPTIONS)
FORM_AND_CREATE = {"GET": False, "HEAD": False, "POST": True, "OPTIONS": False}
#: a view whose only method is GET
GET_ONLY = {"GET": True, "HEAD": True, "OPTIONS": False}


def _request(method: str, path: bytes) -> Req:
    extra = ((b"access-control-request-method", b"POST"), (b"origin", b"http://a.example"))
    headers = (H, *extra) if method == "OPTIONS" else (H,)
    return Req(method=method, raw_path=path, headers=headers)


def accepted_asgi(app: Any, path: bytes, methods: list[str]) -> dict[str, bool]:
    """For each method: was the request accepted as a job (a 202)?"""

    async def go() -> list[Resp]:
        async with asgi_lifespan(app) as state:
            return [await asgi_call(app, _request(m, path), state or None) for m in methods]

    return {m: r.status == 202 for m, r in zip(methods, asyncio.run(go()), strict=True)}


def accepted_wsgi(
    app: Any, path: bytes, methods: list[str], close: Callable[[], None]
) -> dict[str, bool]:
    """The WSGI twin of :func:`accepted_asgi`."""
    try:
        return {m: wsgi_call(app, _request(m, path)).status == 202 for m in methods}
    finally:
        close()


# --- Flask (and MethodView) ---


def test_flask_view_serving_the_form_and_the_create() -> None:
    """Flask: a marked view serving GET (the form) and POST (the create): only POST is a job."""
    from flask import Flask

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.route("/posts/new", methods=["GET", "POST"])
    @long_running
    def new() -> str:
        return "the form"

    ext = AsyncAccept(app, **OPTS)
    got = accepted_wsgi(app, b"/posts/new", list(FORM_AND_CREATE), ext.middleware.runtime.shutdown)
    assert got == FORM_AND_CREATE


def test_flask_get_only_view_is_marked_with_head() -> None:
    """Flask: a marked GET-only view is a job for GET and HEAD, never for OPTIONS."""
    from flask import Flask

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.get("/export")
    @long_running
    def export() -> str:
        return "csv"

    ext = AsyncAccept(app, **OPTS)
    assert accepted_wsgi(app, b"/export", list(GET_ONLY), ext.middleware.runtime.shutdown) == (
        GET_ONLY
    )


def test_flask_methodview_marked_whole() -> None:
    """Flask: a ``MethodView`` marked as a class: its POST/PUT/DELETE are jobs, GET not."""
    from flask import Flask
    from flask.views import MethodView

    from async_accept.flask import AsyncAccept

    @long_running
    class Items(MethodView):
        def get(self) -> str:
            return "list"

        def post(self) -> str:
            return "made"

        def delete(self) -> str:
            return "gone"

    app = Flask(__name__)
    app.add_url_rule("/items", view_func=Items.as_view("items"))
    ext = AsyncAccept(app, **OPTS)
    want = {"GET": False, "HEAD": False, "POST": True, "DELETE": True, "OPTIONS": False}
    assert accepted_wsgi(app, b"/items", list(want), ext.middleware.runtime.shutdown) == want


# --- Starlette / FastAPI ---


def test_starlette_httpendpoint_marked_whole() -> None:
    """Starlette: a marked ``HTTPEndpoint`` with get and post: POST is a job; GET,
    HEAD and a CORS preflight OPTIONS are answered by the app."""
    from starlette.applications import Starlette
    from starlette.endpoints import HTTPEndpoint
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    class Posts(HTTPEndpoint):
        async def get(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("form")

        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("made")

    app = Starlette(routes=[Route("/posts", Posts)])
    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio")
    assert accepted_asgi(app, b"/posts", list(FORM_AND_CREATE)) == FORM_AND_CREATE


def test_starlette_route_with_get_and_post() -> None:
    """Starlette: a marked function route with ``methods=["GET", "POST"]``: only POST."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running
    async def posts(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/posts", posts, methods=["GET", "POST"])])
    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio")
    assert accepted_asgi(app, b"/posts", list(FORM_AND_CREATE)) == FORM_AND_CREATE


def test_fastapi_get_only_route_marked_with_head() -> None:
    """FastAPI: a marked GET-only route is a job for GET; OPTIONS is FastAPI's."""
    from fastapi import FastAPI

    from async_accept.asgi import AsyncAcceptMiddleware

    app = FastAPI()

    @app.get("/export")
    @long_running
    async def export() -> dict[str, str]:
        return {"csv": "..."}

    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio")
    want = {"GET": True, "OPTIONS": False}
    assert accepted_asgi(app, b"/export", list(want)) == want


def test_explicit_methods_say_exactly() -> None:
    """``@long_running(methods=["GET", "POST"])`` marks exactly GET (and its HEAD) and POST."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    async def posts(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    marked = long_running(methods=["GET", "POST"])(posts)
    route = Route("/posts", marked, methods=["GET", "POST", "PUT"])
    app = Starlette(routes=[route])
    app.add_middleware(AsyncAcceptMiddleware, **OPTS, executor="asyncio")
    want = {"GET": True, "HEAD": True, "POST": True, "PUT": False, "OPTIONS": False}
    assert accepted_asgi(app, b"/posts", list(want)) == want


# --- Django ---


def _django_accepted(view: Any, methods: list[str]) -> dict[str, bool]:
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings
    from django.urls import path

    urlconf = types.ModuleType("marking_urls")
    urlconf.urlpatterns = [path("posts", view)]  # type: ignore[attr-defined]
    with override_settings(
        ROOT_URLCONF=urlconf,
        ASYNC_ACCEPT={"store": "memory://"},
        MIDDLEWARE=[
            "async_accept.django.AsyncAcceptMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
    ):
        app = get_wsgi_application()
        return {m: wsgi_call(app, _request(m, b"/posts")).status == 202 for m in methods}


def test_django_function_view() -> None:
    """Django: a marked function view (any method): POST/PUT/PATCH/DELETE are jobs,
    GET (the form page) and HEAD are not."""
    from django.http import HttpResponse
    from django.views.decorators.csrf import csrf_exempt

    @csrf_exempt
    @long_running
    def posts(request: Any) -> HttpResponse:
        return HttpResponse("ok")

    want = {"GET": False, "HEAD": False, "POST": True, "PUT": True, "DELETE": True}
    assert _django_accepted(posts, list(want)) == want


def test_django_class_view_marked_whole() -> None:
    """Django: a marked class-based view with get and post: only POST is a job."""
    from django.http import HttpResponse
    from django.utils.decorators import method_decorator
    from django.views import View
    from django.views.decorators.csrf import csrf_exempt

    @method_decorator(csrf_exempt, name="dispatch")
    @long_running
    class Posts(View):
        def get(self, request: Any) -> HttpResponse:
            return HttpResponse("form")

        def post(self, request: Any) -> HttpResponse:
            return HttpResponse("made")

    assert _django_accepted(Posts.as_view(), list(FORM_AND_CREATE)) == FORM_AND_CREATE


# --- Litestar, Quart, Falcon ---


def test_litestar_handler_with_get_and_post() -> None:
    """Litestar: a marked handler for GET and POST: only POST is a job."""
    from litestar import Litestar, route

    from async_accept.litestar import AsyncAcceptMiddleware

    async def posts() -> str:
        return "ok"

    posts.__annotations__ = {"return": str}
    handler = route("/posts", http_method=["GET", "POST"], status_code=200)(long_running(posts))
    app = AsyncAcceptMiddleware(Litestar([handler]), **OPTS, executor="asyncio")
    want = {"GET": False, "HEAD": False, "POST": True}
    assert accepted_asgi(app, b"/posts", list(want)) == want


def test_quart_view_serving_the_form_and_the_create() -> None:
    """Quart: a marked view serving GET and POST: only POST is a job."""
    from quart import Quart

    from async_accept.quart import AsyncAccept

    app = Quart(__name__)

    @app.route("/posts/new", methods=["GET", "POST"])
    @long_running
    async def new() -> str:
        return "the form"

    AsyncAccept(app, **OPTS, executor="asyncio")
    assert accepted_asgi(app, b"/posts/new", list(FORM_AND_CREATE)) == FORM_AND_CREATE


def test_falcon_resource_marked_whole() -> None:
    """Falcon: a marked resource with on_get and on_post: only POST is a job."""
    import falcon

    from async_accept.falcon import wrap

    @long_running
    class Posts:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.text = "form"

        def on_post(self, req: Any, resp: Any) -> None:
            resp.text = "made"

    inner = falcon.App()
    inner.add_route("/posts", Posts())
    app: Any = wrap(inner, **OPTS)
    assert accepted_wsgi(app, b"/posts", list(FORM_AND_CREATE), app.runtime.shutdown) == (
        FORM_AND_CREATE
    )
