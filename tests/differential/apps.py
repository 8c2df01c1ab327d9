"""One app per framework, built unmarked (no middleware at all) or marked
(``@long_running`` on the route, hybrid or plain), whose handler records what
it saw in :data:`SEEN` and answers the same whatever the framework: 200,
``X-Handler``, two ``Set-Cookie`` with attributes, binary bytes derived from the body.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from async_accept import long_running
from tests.differential.harness import COOKIES, METHODS, SECRET, answer_body, asgi_seen, wsgi_seen

#: what the handler saw, one entry per call (cleared by the tests)
SEEN: list[dict[str, Any]] = []
#: the lifespan state every ASGI app starts with
STATE = {"pool": "db-pool-1"}

Mode = str | None  # None: no middleware; "hybrid": wait=10; "async": always a 202


def mark(target: Any, mode: Mode) -> Any:
    """``target`` marked as ``mode`` says (unchanged for None)."""
    if mode is None:
        return target
    if mode == "hybrid":
        return long_running(wait=10)(target)
    return long_running(target)


def options(kind: str) -> dict[str, Any]:
    """The middleware options of every differential app."""
    return {
        "secret_key": SECRET,
        "store": "memory://",
        "executor": "asyncio" if kind == "asgi" else "thread",
        "poll_interval": 1,
    }


@dataclass
class Built:
    """An app ready for raw calls; ``close`` stops what the middleware started."""

    app: Any
    kind: str  # "asgi" | "wsgi"
    close: Callable[[], None] = lambda: None


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[dict[str, str]]:
    yield dict(STATE)


# --- Starlette / FastAPI ---


def _starlette_response(body: bytes) -> Any:
    from starlette.responses import Response

    response = Response(answer_body(body), media_type="application/octet-stream")
    response.headers["X-Handler"] = "yes"
    response.set_cookie(COOKIES[0][0], COOKIES[0][1], path="/", httponly=True, samesite="lax")
    response.set_cookie(COOKIES[1][0], COOKIES[1][1], path="/d", max_age=600, secure=True)
    return response


def build_starlette(mode: Mode) -> Built:
    """Starlette: ``Route("/d/{rest:path}")`` with the middleware added by ``add_middleware``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    async def handler(request: Request) -> Any:
        body = await request.body()
        SEEN.append(asgi_seen(request.scope, body, url=str(request.url)))
        return _starlette_response(body)

    route = Route("/d/{rest:path}", mark(handler, mode), methods=list(METHODS))
    app = Starlette(routes=[route], lifespan=_lifespan)
    if mode is not None:
        app.add_middleware(AsyncAcceptMiddleware, **options("asgi"))
    return Built(app, "asgi")


def build_fastapi(mode: Mode) -> Built:
    """FastAPI: ``@app.api_route("/d/{rest:path}")`` taking the ``Request``."""
    from fastapi import FastAPI, Request

    from async_accept.asgi import AsyncAcceptMiddleware

    app = FastAPI(lifespan=_lifespan)

    async def handler(request: Request, rest: str) -> Any:
        body = await request.body()
        SEEN.append(asgi_seen(request.scope, body, url=str(request.url), rest=rest))
        return _starlette_response(body)

    # Resolved here: FastAPI reads the annotations, which this module keeps as strings.
    handler.__annotations__ = {"request": Request, "rest": str}
    app.api_route("/d/{rest:path}", methods=list(METHODS))(mark(handler, mode))
    if mode is not None:
        app.add_middleware(AsyncAcceptMiddleware, **options("asgi"))
    return Built(app, "asgi")


# --- Litestar ---


async def _litestar_handler(request: Any) -> Any:
    from litestar import Response
    from litestar.datastructures import Cookie

    body = await request.body()
    SEEN.append(asgi_seen(request.scope, body, url=str(request.url), rest=request.path_params))
    return Response(
        answer_body(body),
        status_code=200,
        media_type="application/octet-stream",
        headers={"X-Handler": "yes"},
        cookies=[
            Cookie(key=COOKIES[0][0], value=COOKIES[0][1], path="/", httponly=True, samesite="lax"),
            Cookie(key=COOKIES[1][0], value=COOKIES[1][1], path="/d", max_age=600, secure=True),
        ],
    )


def build_litestar(mode: Mode) -> Built:
    """Litestar: a ``route()`` handler; the app wrapped by the Litestar middleware."""
    from litestar import Litestar, Request, Response, route

    from async_accept.litestar import AsyncAcceptMiddleware

    fn = types.FunctionType(
        _litestar_handler.__code__, _litestar_handler.__globals__, "handler", None, None
    )
    fn.__annotations__ = {"request": Request, "return": Response}
    handler = route("/d/{rest:path}", http_method=list(METHODS), status_code=200)(mark(fn, mode))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield

    app: Any = Litestar([handler], lifespan=[lifespan])
    if mode is not None:
        app = AsyncAcceptMiddleware(app, **options("asgi"))
    return Built(app, "asgi")


def _werkzeug_answer(response: Any) -> Any:
    """Quart's and Flask's response (both werkzeug's) with the handler's headers."""
    response.headers["X-Handler"] = "yes"
    response.content_type = "application/octet-stream"
    response.set_cookie(COOKIES[0][0], COOKIES[0][1], path="/", httponly=True, samesite="Lax")
    response.set_cookie(COOKIES[1][0], COOKIES[1][1], path="/d", max_age=600, secure=True)
    return response


# --- Quart ---


def build_quart(mode: Mode) -> Built:
    """Quart: ``add_url_rule("/d/<path:rest>")`` and the ``AsyncAccept`` extension."""
    from quart import Quart, make_response, request

    from async_accept.quart import AsyncAccept

    app = Quart(__name__)

    async def handler(rest: str) -> Any:
        body = await request.get_data()
        assert isinstance(body, bytes)
        SEEN.append(asgi_seen(request.scope, body, url=request.url, rest=rest))
        response = await make_response(answer_body(body), 200)
        return _werkzeug_answer(response)

    app.add_url_rule("/d/<path:rest>", view_func=mark(handler, mode), methods=list(METHODS))
    if mode is not None:
        AsyncAccept(app, **options("asgi"))
    return Built(app, "asgi")


# --- Falcon ---


def _falcon_answer(resp: Any, body: bytes) -> None:
    resp.status = 200
    resp.content_type = "application/octet-stream"
    resp.data = answer_body(body)
    resp.set_header("X-Handler", "yes")
    resp.set_cookie(COOKIES[0][0], COOKIES[0][1], path="/", http_only=True, same_site="Lax")
    resp.set_cookie(COOKIES[1][0], COOKIES[1][1], path="/d", max_age=600, secure=True)


class _FalconAsyncResource:
    async def on_post(self, req: Any, resp: Any, rest: str) -> None:
        body = await req.stream.read()
        SEEN.append(asgi_seen(req.scope, body, url=req.url, rest=rest))
        _falcon_answer(resp, body)

    on_put = on_patch = on_delete = on_post


class _FalconResource:
    def on_post(self, req: Any, resp: Any, rest: str) -> None:
        body = req.bounded_stream.read()
        SEEN.append(wsgi_seen(req.env, body, url=req.url, rest=rest))
        _falcon_answer(resp, body)

    on_put = on_patch = on_delete = on_post


def build_falcon_asgi(mode: Mode) -> Built:
    """Falcon ASGI: a resource on ``/d/{rest:path}``, the resource itself marked."""
    import falcon.asgi

    from async_accept.falcon import wrap

    app: Any = falcon.asgi.App()
    app.add_route("/d/{rest:path}", mark(_FalconAsyncResource(), mode))
    if mode is not None:
        app = wrap(app, **options("asgi"))
    return Built(app, "asgi")


def build_falcon_wsgi(mode: Mode) -> Built:
    """Falcon WSGI: the same resource, synchronous."""
    import falcon

    from async_accept.falcon import wrap

    app: Any = falcon.App()
    app.add_route("/d/{rest:path}", mark(_FalconResource(), mode))
    if mode is None:
        return Built(app, "wsgi")
    wrapped: Any = wrap(app, **options("wsgi"))
    return Built(wrapped, "wsgi", wrapped.runtime.shutdown)


# --- Flask ---


def build_flask(mode: Mode) -> Built:
    """Flask: ``add_url_rule("/d/<path:rest>")`` and the ``AsyncAccept`` extension."""
    from flask import Flask, make_response, request

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    def handler(rest: str) -> Any:
        body = request.get_data()
        SEEN.append(wsgi_seen(request.environ, body, url=request.url, remote=request.remote_addr))
        response = make_response(answer_body(body), 200)
        return _werkzeug_answer(response)

    app.add_url_rule("/d/<path:rest>", view_func=mark(handler, mode), methods=list(METHODS))
    if mode is None:
        return Built(app, "wsgi")
    ext = AsyncAccept(app, **options("wsgi"))
    return Built(app, "wsgi", ext.middleware.runtime.shutdown)


# --- Django ---

DJANGO_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "async_accept.django.AsyncAcceptMiddleware",
    "django.middleware.common.CommonMiddleware",
]


def django_seen(request: Any, body: bytes) -> dict[str, Any]:
    """What a Django view sees: the request object's own view of the request."""
    meta = request.META
    return {
        "method": request.method,
        "path": request.path,
        "path_info": request.path_info,
        "full_path": request.get_full_path(),
        "script_name": meta.get("SCRIPT_NAME"),
        "query": meta.get("QUERY_STRING"),
        "headers": [(k, v) for k, v in meta.items() if k.startswith("HTTP_")],
        "content_type": meta.get("CONTENT_TYPE"),
        "remote_addr": meta.get("REMOTE_ADDR"),
        "scheme": request.scheme,
        "host": request.get_host(),
        "port": request.get_port(),
        "cookies": dict(request.COOKIES),
        "body": body,
    }


def django_view(request: Any, rest: str) -> Any:
    from django.http import HttpResponse

    body = request.body
    SEEN.append(django_seen(request, body))
    response = HttpResponse(answer_body(body), content_type="application/octet-stream")
    response["X-Handler"] = "yes"
    response.set_cookie(COOKIES[0][0], COOKIES[0][1], path="/", httponly=True, samesite="Lax")
    response.set_cookie(COOKIES[1][0], COOKIES[1][1], path="/d", max_age=600, secure=True)
    return response


def django_urlconf(mode: Mode, view: Callable[..., Any] = django_view) -> types.ModuleType:
    """A URLconf module holding ``d/<rest>`` (``view`` marked as ``mode`` says)."""
    from django.urls import re_path
    from django.views.decorators.csrf import csrf_exempt

    def fresh(request: Any, rest: str) -> Any:
        return view(request, rest)

    module = types.ModuleType(f"differential_urls_{mode}")
    module.urlpatterns = [  # type: ignore[attr-defined]
        re_path(r"^d/(?P<rest>.*)$", csrf_exempt(mark(fresh, mode)))
    ]
    return module
