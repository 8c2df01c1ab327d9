"""Litestar, Quart and Falcon (ASGI and WSGI): the flow through each framework,
with handlers marked by ``@long_running`` (found by the integration) or named
by ``routes=[...]`` patterns on the generic middleware."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from async_accept import current_job, long_running, report_progress
from async_accept.errors import ConfigurationError, MissingDependencyError
from async_accept.routes import RouteOptions
from tests.conftest import ALICE, BOB, SECRET

ROOT = Path(__file__).resolve().parent.parent
F = TypeVar("F")

#: what the routes mode names, in each framework's own path syntax translated
PATTERNS = {"POST /reports": {"sla": 30}, "POST /reports/{rid:int}/render": {}}
GATE = threading.Event()
LIMIT = 15.0


def marker(mark: bool) -> Callable[[F], F]:
    """``@long_running(sla=30)`` in decorator mode, nothing in routes mode."""
    return long_running(sla=30) if mark else (lambda f: f)


def report_body(title: str, framework: str) -> dict[str, Any]:
    return {"title": title, "framework": framework, "in_job": current_job() is not None}


def sync_work() -> None:
    report_progress(40, message="rendering", eta=2)
    assert GATE.wait(LIMIT)


async def async_work() -> None:
    report_progress(40, message="rendering", eta=2)
    deadline = time.monotonic() + LIMIT
    while not GATE.is_set():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


# --- the apps: POST /reports (slow), POST /reports/{rid}/render (201), GET /hello --------


def litestar_app(mark: bool) -> Any:
    from litestar import Controller, Litestar, Request, Response, get, post

    @post("/reports", status_code=200)
    @marker(mark)
    async def create_report(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        data = await request.json()
        await async_work()
        body = report_body(data["title"], "litestar")
        return Response(body, headers={"x-framework": "litestar"})

    class Render(Controller):
        path = "/reports"

        # Parameters come from the request: Litestar's ways of declaring them
        # changed across 2.x (inferred ones are deprecated in the latest).
        @post("/{rid:int}/render", sync_to_thread=True)
        def render(self, request: Request[Any, Any, Any]) -> Response[dict[str, int]]:
            rid = request.path_params["rid"]
            return Response({"rid": rid}, status_code=201, headers={"location": f"/reports/{rid}"})

    if mark:  # above the route decorator, on a controller method
        long_running(Render.render)

    @get("/hello", media_type="text/plain")
    async def hello() -> str:
        return "hello litestar"

    # Handlers' annotations are strings here (PEP 563): name what they refer to.
    return Litestar(
        [create_report, Render, hello],
        signature_namespace={"Request": Request, "Response": Response},
    )


def quart_app(mark: bool) -> Any:
    from quart import Blueprint, Quart, request

    app = Quart(__name__)

    @app.post("/reports")
    @marker(mark)
    async def create_report() -> Any:
        data = await request.get_json()
        await async_work()
        return report_body(data["title"], "quart"), 200, {"x-framework": "quart"}

    bp = Blueprint("render", __name__, url_prefix="/reports")

    @marker(mark)
    @bp.post("/<int:rid>/render")
    async def render(rid: int) -> Any:
        return {"rid": rid}, 201, {"Location": f"/reports/{rid}"}

    app.register_blueprint(bp)

    @app.get("/hello")
    async def hello() -> str:
        return "hello quart"

    return app


def falcon_asgi_app(mark: bool) -> Any:
    import falcon
    import falcon.asgi

    class Reports:
        @marker(mark)
        async def on_post(self, req: Any, resp: Any) -> None:
            data = await req.get_media()
            await async_work()
            resp.media = report_body(data["title"], "falcon-asgi")
            resp.set_header("X-Framework", "falcon-asgi")

    class Render:
        async def on_post(self, req: Any, resp: Any, rid: int) -> None:
            resp.status = falcon.HTTP_201
            resp.set_header("Location", f"/reports/{rid}")
            resp.media = {"rid": rid}

    class Hello:
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = "hello falcon-asgi"

    if mark:
        long_running(Render)  # the whole resource
    app = falcon.asgi.App()
    app.add_route("/reports", Reports())
    app.add_route("/reports/{rid:int}/render", Render())
    app.add_route("/hello", Hello())
    return app


def falcon_wsgi_app(mark: bool) -> Any:
    import falcon

    class Reports:
        @marker(mark)
        def on_post(self, req: Any, resp: Any) -> None:
            data = req.get_media()
            sync_work()
            resp.media = report_body(data["title"], "falcon-wsgi")
            resp.set_header("X-Framework", "falcon-wsgi")

        def on_get(self, req: Any, resp: Any) -> None:
            resp.media = {"reports": []}

    class Render:
        @marker(mark)
        def on_post_item(self, req: Any, resp: Any, rid: int) -> None:
            resp.status = falcon.HTTP_201
            resp.set_header("Location", f"/reports/{rid}")
            resp.media = {"rid": rid}

    class Hello:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = "hello falcon-wsgi"

    app = falcon.App()
    app.add_route("/reports", Reports())
    app.add_route("/reports/{rid:int}/render", Render(), suffix="item")
    app.add_route("/hello", Hello())
    return app


# --- wrapping each app: through its integration, or the generic middleware -------------


def wrap_litestar(app: Any, mark: bool, **opts: Any) -> Any:
    from async_accept import asgi
    from async_accept.litestar import AsyncAcceptMiddleware

    if mark:
        return AsyncAcceptMiddleware(app, **opts)
    return asgi.AsyncAcceptMiddleware(app, routes=PATTERNS, **opts)


def wrap_quart(app: Any, mark: bool, **opts: Any) -> Any:
    from async_accept import asgi
    from async_accept.quart import AsyncAccept

    if mark:
        AsyncAccept(app, **opts)
    else:
        app.asgi_app = asgi.AsyncAcceptMiddleware(app.asgi_app, routes=PATTERNS, **opts)
    return app


def wrap_falcon(app: Any, mark: bool, **opts: Any) -> Any:
    from async_accept import asgi, falcon, wsgi

    if mark:
        return falcon.wrap(app, **opts)
    if isinstance(app, __import__("falcon.asgi").asgi.App):
        return asgi.AsyncAcceptMiddleware(app, routes=PATTERNS, **opts)
    return wsgi.AsyncAcceptMiddleware(app, routes=PATTERNS, **opts)


@dataclass
class Case:
    name: str
    module: str
    build: Callable[[bool], Any]
    wrap: Callable[..., Any]
    wsgi: bool = False


CASES = [
    Case("litestar", "litestar", litestar_app, wrap_litestar),
    Case("quart", "quart", quart_app, wrap_quart),
    Case("falcon-asgi", "falcon", falcon_asgi_app, wrap_falcon),
    Case("falcon-wsgi", "falcon", falcon_wsgi_app, wrap_falcon, wsgi=True),
]
MODES = ["decorator", "routes"]


@contextlib.contextmanager
def client_for(case: Case, mark: bool, tmp_path: Path, **options: Any) -> Iterator[httpx.Client]:
    pytest.importorskip(case.module)
    opts: dict[str, Any] = {"secret_key": SECRET, "store": f"sqlite:///{tmp_path / 'jobs.db'}"}
    opts.update(options)
    app = case.wrap(case.build(mark), mark, **opts)
    GATE.clear()
    try:
        if case.wsgi:
            transport = httpx.WSGITransport(app=app)
            with httpx.Client(transport=transport, base_url="http://testserver") as client:
                try:
                    yield client
                finally:
                    GATE.set()
                    app.runtime.shutdown()
        else:
            from starlette.testclient import TestClient

            async def asgi3(scope: Any, receive: Any, send: Any) -> None:
                # Servers say which ASGI version they speak; Starlette's TestClient
                # doesn't in the lifespan scope, and Falcon refuses to start then.
                scope.setdefault("asgi", {"version": "3.0", "spec_version": "2.3"})
                await app(scope, receive, send)

            with TestClient(asgi3, follow_redirects=False) as client:
                yield client
    finally:
        GATE.set()


@pytest.fixture(params=[(c, m) for c in CASES for m in MODES], ids=lambda p: f"{p[0].name}-{p[1]}")
def framework(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Case, httpx.Client]]:
    """Each framework, its handlers marked by decorator or named by route pattern."""
    case, mode = request.param
    with client_for(case, mode == "decorator", tmp_path) as client:
        yield case, client


def poll(client: httpx.Client, url: str, until: Callable[[httpx.Response], bool]) -> httpx.Response:
    deadline = time.monotonic() + LIMIT
    while True:
        r = client.get(url, headers=ALICE)
        if until(r):
            return r
        assert time.monotonic() < deadline, f"{r.status_code} {r.text}"
        time.sleep(0.01)


def finished(r: httpx.Response) -> bool:
    return r.status_code == 303 or r.json()["status"] in ("failed", "canceled")


def test_202_progress_303_result(framework: tuple[Case, httpx.Client]) -> None:
    """202 -> status with progress -> 303 -> the handler's response; other credentials 404."""
    case, client = framework
    r = client.post("/reports", json={"title": "q3"}, headers=ALICE)
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc.startswith("/_jobs/")
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["status_url"] == loc
    running = poll(client, loc, lambda s: s.json()["percent_complete"] == 40)
    assert running.status_code == 200
    assert running.json()["status"] == "processing"
    assert running.json()["message"] == "rendering"
    assert int(running.headers["retry-after"]) >= 1
    assert client.get(loc, headers=BOB).status_code == 404
    assert client.get(loc).status_code == 404  # anonymous
    GATE.set()
    final = poll(client, loc, finished)
    assert final.status_code == 303, final.text
    assert final.headers["location"] == loc + "/result"
    result = client.get(final.headers["location"], headers=ALICE)
    assert result.status_code == 200
    assert result.headers["x-framework"] == case.name
    assert result.json() == {"title": "q3", "framework": case.name, "in_job": True}
    other = client.get(final.headers["location"], headers=BOB)
    assert other.status_code == 404
    assert other.headers["content-type"] == "application/problem+json"


def test_handler_location_is_the_final_resource(framework: tuple[Case, httpx.Client]) -> None:
    """A marked route with a typed path parameter answering 201 + Location: the 303 goes there."""
    _, client = framework
    r = client.post("/reports/7/render", headers=ALICE)
    assert r.status_code == 202, r.text
    final = poll(client, r.headers["location"], finished)
    assert final.status_code == 303
    assert final.headers["location"] == "/reports/7"
    result = client.get(r.headers["location"] + "/result", headers=ALICE)
    assert result.status_code == 201 and result.json() == {"rid": 7}


def test_unmarked_routes_pass_through(framework: tuple[Case, httpx.Client]) -> None:
    """Unmarked routes, and paths a marked route's types don't match, are the app's own."""
    case, client = framework
    r = client.get("/hello")
    assert r.status_code == 200 and r.text == f"hello {case.name}"
    assert "vary" not in r.headers
    nope = client.post("/reports/seven/render", headers=ALICE)
    assert nope.status_code in (404, 405)  # the framework's answer, not a job
    assert "location" not in nope.headers


def test_cancel_a_running_job(framework: tuple[Case, httpx.Client]) -> None:
    """DELETE on the status URL of a running job asks it to stop; the job ends canceled."""
    _, client = framework
    loc = client.post("/reports", json={"title": "x"}, headers=ALICE).headers["location"]
    poll(client, loc, lambda s: s.json()["status"] == "processing")
    assert client.delete(loc, headers=BOB).status_code == 404
    r = client.delete(loc, headers=ALICE)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    GATE.set()
    final = poll(client, loc, finished)
    # A handler that finishes before it next reports progress keeps its result.
    assert final.json()["status"] in ("canceled", "completed")


# --- per-framework details ----------------------------------------------------------------


def test_litestar_discovery_reads_handlers_and_types() -> None:
    """Litestar: marks above/below @post and on controllers; unknown path types match any text."""
    pytest.importorskip("litestar")
    from litestar import Litestar, Request, get, post

    from async_accept.litestar import discover_routes

    @long_running(sla=5)
    @post("/on/{day:date}")
    async def above(request: Request[Any, Any, Any]) -> None:
        return None

    @get("/plain")
    async def plain() -> None:
        return None

    found = discover_routes(Litestar([above, plain], signature_namespace={"Request": Request}))
    assert [(p.spec, p.options) for p in found] == [("POST /on/{day}", RouteOptions(sla=5))]
    specs = {p.spec for p in discover_routes(litestar_app(True))}
    assert specs == {"POST /reports", "POST /reports/{rid:int}/render"}
    assert discover_routes(litestar_app(False)) == []


def test_quart_reads_config_blueprints_and_method_views(tmp_path: Path) -> None:
    """Quart: options from app.config (SECRET_KEY fallback); blueprints and MethodViews found."""
    pytest.importorskip("quart")
    from quart import Blueprint, Quart
    from quart.views import MethodView
    from starlette.testclient import TestClient

    from async_accept.quart import AsyncAccept, discover_url_map

    app = Quart(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'q.db'}",
        ASYNC_ACCEPT_PREFIX="/tasks",
    )

    class Things(MethodView):
        async def get(self, **params: str) -> str:
            return "list"

        @long_running
        async def post(self, **params: str) -> tuple[dict[str, str], int]:
            return {"made": "thing", "version": params["version"]}, 200

    bp = Blueprint("api", __name__, url_prefix="/api/<version>")
    bp.add_url_rule("/things/<uuid:tid>", view_func=Things.as_view("things"))
    app.register_blueprint(bp)
    ext = AsyncAccept()
    mw = ext.init_app(app)
    assert app.extensions["async_accept"] is ext and ext.middleware is mw
    with pytest.raises(ConfigurationError):
        ext.init_app(app)
    assert mw.options.prefix == "/tasks"
    specs = [p.spec for p in discover_url_map(app)]
    assert specs == ["POST /api/{version}/things/{tid:uuid}"]
    uid = "12345678-1234-1234-1234-123456789abc"
    with TestClient(app, follow_redirects=False) as client:
        assert client.get(f"/api/v1/things/{uid}").text == "list"
        r = client.post(f"/api/v1/things/{uid}", headers=ALICE)
        assert r.status_code == 202 and r.headers["location"].startswith("/tasks/")
        final = poll(client, r.headers["location"], finished)
        assert client.get(final.headers["location"], headers=ALICE).json() == {
            "made": "thing",
            "version": "v1",
        }


def test_falcon_discovery_reads_the_router() -> None:
    """Falcon: marked responders (suffixed too) and marked resources (their unsafe
    responders); converters with args."""
    falcon = pytest.importorskip("falcon")
    from async_accept.falcon import AsyncAcceptMiddleware, AsyncAcceptWSGIMiddleware, wrap

    @long_running(sla=9)
    class Whole:
        def on_get(self, req: Any, resp: Any, n: int) -> None: ...
        def on_put(self, req: Any, resp: Any, n: int) -> None: ...

    app = falcon.App()
    app.add_route("/whole/{n:int(min=1)}/{when:dt('%Y')}", Whole())
    from async_accept.falcon import discover_routes

    found = discover_routes(app)
    assert [(p.spec, p.options) for p in found] == [
        ("PUT /whole/{n:int}/{when}", RouteOptions(sla=9, precheck=True))
    ]
    specs = {p.spec for p in discover_routes(falcon_wsgi_app(True))}
    assert specs == {"POST /reports", "POST /reports/{rid:int}/render"}
    assert discover_routes(falcon_wsgi_app(False)) == []
    opts = {"secret_key": SECRET, "store": "memory://"}
    assert isinstance(wrap(falcon_asgi_app(True), **opts), AsyncAcceptMiddleware)
    assert isinstance(wrap(falcon_wsgi_app(True), **opts), AsyncAcceptWSGIMiddleware)


def test_quart_extension_without_quart_names_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AsyncAccept() for Quart without Quart installed raises the pip install line."""
    from async_accept.quart import AsyncAccept

    monkeypatch.setitem(sys.modules, "quart", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'async-accept\[quart\]'"):
        AsyncAccept()


def test_integrations_import_no_framework() -> None:
    """Importing the Litestar, Quart and Falcon integrations imports none of the frameworks."""
    code = (
        "import sys\n"
        "import async_accept.litestar, async_accept.quart, async_accept.falcon\n"
        "names = ('litestar', 'quart', 'falcon', 'flask', 'starlette')\n"
        "bad = [n for n in names if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
