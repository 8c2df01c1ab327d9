"""FastAPI: the contract through FastAPI's routing, FastAPI idioms, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from pydantic import BaseModel
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from async_accept import current_job, long_running, report_progress
from async_accept.errors import MissingDependencyError
from async_accept.fastapi import (
    JOB_SCHEMAS,
    AsyncAcceptMiddleware,
    document_async_accept,
)
from async_accept.routes import MARKER, marker_of
from tests import apps, test_contract
from tests.conftest import ALICE, BOB, SECRET, Clock, Deployment, find_middleware

ROOT = Path(__file__).resolve().parent.parent

# --- the contract suite, through FastAPI's routing ------------------------------------
#
# The contract app's endpoints, served by FastAPI: half on the app, half in an
# included APIRouter, the /report route in a mounted FastAPI sub-app. Every
# contract test that needs only a deployment runs again against it.


def _fastapi_endpoint(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(request: Request) -> Response:
        return await endpoint(request)  # type: ignore[no-any-return]

    handler.__name__ = endpoint.__name__
    mark = marker_of(endpoint)
    if mark is not None:
        setattr(handler, MARKER, mark)
    return handler


def build_contract_fastapi(**options: Any) -> FastAPI:
    """The contract app's endpoints on FastAPI routing, behind the middleware."""
    starlette_app = apps.build_starlette(**options)  # only for its endpoints
    app = FastAPI()
    router = APIRouter()
    sub = FastAPI()
    for i, route in enumerate(starlette_app.routes):
        if isinstance(route, Mount):
            for inner in route.routes:
                if isinstance(inner, Route):
                    methods = sorted(inner.methods or ())
                    sub.add_api_route(
                        inner.path, _fastapi_endpoint(inner.endpoint), methods=methods
                    )
                else:
                    sub.router.routes.append(inner)
            continue
        if not isinstance(route, Route):  # websockets and the like, as they are
            app.router.routes.append(route)
            continue
        target = router if i % 2 else app
        methods = sorted(route.methods or ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))
        target.add_api_route(route.path, _fastapi_endpoint(route.endpoint), methods=methods)
    app.include_router(router)
    app.mount("/", sub)
    app.add_middleware(AsyncAcceptMiddleware, **options)
    return app


FASTAPI_COMBOS = [("memory", "asyncio"), ("sqlite", "thread")]


@contextlib.contextmanager
def deploy_fastapi(
    store: str, executor: str, tmp_path: Path, **options: Any
) -> Iterator[Deployment]:
    clock = Clock()
    opts: dict[str, Any] = {
        "secret_key": SECRET,
        "store": "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}",
        "executor": executor,
        "heartbeat_interval": 0.2,
        "worker_lost_after": 3.0,
        "poll_interval": 1,
    }
    opts.update(options)
    app = build_contract_fastapi(**opts)
    with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as client:
        client.get("/hello")  # builds the middleware stack
        mw = find_middleware(app)
        mw.runtime.engine.clock = clock
        try:
            yield Deployment("asgi", store, executor, client, mw, clock)
        finally:
            apps.GATES.open_all()
    mw.store.close()


@pytest.fixture(params=FASTAPI_COMBOS, ids=["fastapi-" + "-".join(c) for c in FASTAPI_COMBOS])
def dep(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """The contract app on FastAPI, per store x executor."""
    apps.GATES = apps.Gates()
    store, executor = request.param
    with deploy_fastapi(store, executor, tmp_path) as d:
        yield d


for _name, _test in vars(test_contract).copy().items():
    if (
        _name.startswith("test_")
        and callable(_test)
        and "dep" in inspect.signature(_test).parameters
        and set(inspect.signature(_test).parameters) <= {"dep", "monkeypatch", "tmp_path"}
    ):
        globals()[_name] = _test  # collected here, with this module's `dep`


def test_contract_tests_are_rerun_on_fastapi() -> None:
    """Most of the contract suite is collected again against the FastAPI deployment."""
    rerun = [n for n in globals() if n.startswith("test_") and getattr(test_contract, n, None)]
    assert len(rerun) >= 25


# --- FastAPI idioms ------------------------------------------------------------------------

GATE = threading.Event()


class ReportIn(BaseModel):
    title: str
    pages: int = 3


def current_user(authorization: str | None = Header(default=None)) -> str:
    return (authorization or "anonymous").removeprefix("Bearer ")


def wait_gate() -> None:
    assert GATE.wait(15), "the test never opened the gate"


def idiomatic_app() -> FastAPI:
    """A FastAPI app written the way FastAPI users write them."""
    app = FastAPI()

    @app.post("/sync-report")
    @long_running(sla=30)
    def sync_report(
        body: ReportIn, user: str = Depends(current_user), draft: bool = False
    ) -> dict[str, Any]:
        """A plain def endpoint (FastAPI runs it in its threadpool)."""
        report_progress(50, message="halfway", eta=3)
        wait_gate()
        job = current_job()
        return {
            "title": body.title,
            "pages": body.pages,
            "user": user,
            "draft": draft,
            "in_job": job is not None,
        }

    @long_running
    @app.post("/async-report", status_code=201)
    async def async_report(body: ReportIn, request: Request) -> dict[str, Any]:
        """An async endpoint, marked above the route decorator."""
        report_progress(25, message="started")
        while not GATE.is_set():
            await asyncio.sleep(0.01)
        return {"title": body.title.upper(), "path": request.url.path}

    @app.get("/plain")
    def plain(user: str = Depends(current_user)) -> dict[str, str]:
        return {"hello": user}

    v1 = APIRouter(prefix="/reports", tags=["reports"])
    nested = APIRouter(prefix="/archive")

    @v1.post("/{report_id}/render")
    @long_running
    async def render(report_id: int, user: str = Depends(current_user)) -> dict[str, Any]:
        return {"report_id": report_id, "user": user}

    @long_running
    @nested.put("/{name}")
    def archive(name: str) -> dict[str, str]:
        return {"archived": name}

    @v1.get("/{report_id}")
    def read(report_id: int) -> dict[str, int]:
        return {"report_id": report_id}

    v1.include_router(nested)
    app.include_router(v1, prefix="/api/v1")

    sub = FastAPI()

    @sub.post("/export")
    @long_running
    def export(fmt: str = "pdf") -> dict[str, str]:
        return {"exported": fmt}

    app.mount("/tools", sub)
    return app


@pytest.fixture
def fastapi_client() -> Iterator[Callable[..., TestClient]]:
    """TestClient factory: idiomatic_app() (or a given app) behind the middleware."""
    GATE.clear()
    stack = contextlib.ExitStack()

    def make(app: FastAPI | None = None, **options: Any) -> TestClient:
        app = app or idiomatic_app()
        opts: dict[str, Any] = {"secret_key": SECRET, "store": "memory://"}
        opts.update(options)
        app.add_middleware(AsyncAcceptMiddleware, **opts)
        client = TestClient(app, follow_redirects=False)
        stack.enter_context(client)
        return client

    with stack:
        yield make
    GATE.set()


def poll(
    client: TestClient, url: str, until: Callable[[httpx.Response], bool], timeout: float = 15
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url, headers=ALICE)
        if until(r):
            return r
        assert time.monotonic() < deadline, f"{r.status_code} {r.text}"
        time.sleep(0.01)


def done(r: httpx.Response) -> bool:
    return r.status_code == 303 or r.json()["status"] in ("failed", "canceled")


@pytest.mark.parametrize("executor", ["asyncio", "thread"])
def test_sync_endpoint_with_dependencies_and_body(
    fastapi_client: Callable[..., TestClient], executor: str
) -> None:
    """def endpoint + Depends + query + pydantic body: 202 -> progress -> 303 -> result."""
    client = fastapi_client(executor=executor)
    r = client.post("/sync-report?draft=true", json={"title": "q3", "pages": 7}, headers=ALICE)
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc.startswith("/_jobs/") and int(r.headers["retry-after"]) >= 1
    running = poll(client, loc, lambda s: s.json()["percent_complete"] == 50)
    assert running.status_code == 200
    assert running.json()["message"] == "halfway"
    assert running.json()["status"] == "processing"
    assert client.get(loc, headers=BOB).status_code == 404
    GATE.set()
    final = poll(client, loc, done)
    assert final.status_code == 303
    result = client.get(final.headers["location"], headers=ALICE)
    assert result.status_code == 200
    assert result.json() == {
        "title": "q3",
        "pages": 7,
        "user": "alice",
        "draft": True,
        "in_job": True,
    }
    assert client.get(final.headers["location"], headers=BOB).status_code == 404


def test_async_endpoint_marked_above_route_decorator(
    fastapi_client: Callable[..., TestClient],
) -> None:
    """@long_running above @app.post works; a 201 without Location goes to /result."""
    client = fastapi_client()
    r = client.post("/async-report", json={"title": "annual"}, headers=ALICE)
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    running = poll(client, loc, lambda s: s.json()["percent_complete"] == 25)
    assert running.json()["message"] == "started"
    GATE.set()
    final = poll(client, loc, done)
    assert final.status_code == 303 and final.headers["location"] == loc + "/result"
    result = client.get(final.headers["location"], headers=ALICE)
    assert result.status_code == 201
    assert result.json() == {"title": "ANNUAL", "path": "/async-report"}


def test_invalid_body_gets_fastapis_422_at_once(
    fastapi_client: Callable[..., TestClient],
) -> None:
    """A body FastAPI rejects gets FastAPI's own 422 synchronously: the app decides
    first (no job: see tests/differential)."""
    client = fastapi_client()
    r = client.post("/sync-report", json={"pages": "many"}, headers=ALICE)
    assert r.status_code == 422
    assert {e["loc"][-1] for e in r.json()["detail"]} == {"title", "pages"}


def test_routers_with_prefixes_and_nested_routers(
    fastapi_client: Callable[..., TestClient],
) -> None:
    """Marked endpoints in included (and nested) APIRouters with prefixes are long-running."""
    client = fastapi_client()
    r = client.post("/api/v1/reports/12/render", headers=ALICE)
    assert r.status_code == 202, r.text
    final = poll(client, r.headers["location"], done)
    result = client.get(final.headers["location"], headers=ALICE)
    assert result.json() == {"report_id": 12, "user": "alice"}
    r = client.put("/api/v1/reports/archive/old", headers=ALICE)
    assert r.status_code == 202, r.text
    final = poll(client, r.headers["location"], done)
    assert client.get(final.headers["location"], headers=ALICE).json() == {"archived": "old"}


def test_unmarked_routes_pass_through(fastapi_client: Callable[..., TestClient]) -> None:
    """Unmarked endpoints (and the same router's other routes) answer directly."""
    client = fastapi_client()
    assert client.get("/plain", headers=ALICE).json() == {"hello": "alice"}
    assert client.get("/api/v1/reports/5").json() == {"report_id": 5}
    assert client.get("/openapi.json").status_code == 200
    assert client.post("/plain").status_code == 405  # FastAPI's own answer


def test_mounted_sub_app_behind_the_parents_middleware(
    fastapi_client: Callable[..., TestClient],
) -> None:
    """A marked endpoint of a mounted FastAPI sub-app is found through the parent's middleware."""
    client = fastapi_client()
    r = client.post("/tools/export?fmt=csv", headers=ALICE)
    assert r.status_code == 202, r.text
    assert r.headers["location"].startswith("/_jobs/")
    final = poll(client, r.headers["location"], done)
    assert client.get(final.headers["location"], headers=ALICE).json() == {"exported": "csv"}


def test_middleware_on_a_mounted_sub_app_only() -> None:
    """Middleware added to a mounted sub-app: status URLs live under the mount path."""
    sub = FastAPI()

    @sub.post("/jobs-here")
    @long_running
    async def work(n: int = 1) -> dict[str, int]:
        return {"n": n * 2}

    sub.add_middleware(AsyncAcceptMiddleware, secret_key=SECRET, store="memory://")
    app = FastAPI()

    @app.post("/jobs-here")
    def outer() -> dict[str, str]:
        return {"outer": "not marked"}

    app.mount("/sub", sub)
    with TestClient(app, follow_redirects=False) as client:
        assert client.post("/jobs-here").json() == {"outer": "not marked"}
        r = client.post("/sub/jobs-here?n=21", headers=ALICE)
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        assert loc.startswith("/sub/_jobs/")
        final = poll(client, loc, done)
        assert final.headers["location"] == loc + "/result"
        assert client.get(final.headers["location"], headers=ALICE).json() == {"n": 42}
        assert client.get(loc, headers=BOB).status_code == 404


# --- OpenAPI -----------------------------------------------------------------------------


def openapi_of(app: FastAPI, **kwargs: Any) -> dict[str, Any]:
    document_async_accept(app, **kwargs)
    return app.openapi()


def with_middleware(app: FastAPI, **options: Any) -> FastAPI:
    app.add_middleware(AsyncAcceptMiddleware, secret_key=SECRET, store="memory://", **options)
    return app


def test_marked_operations_show_202_with_headers_and_schema() -> None:
    """Marked routes (above/below the decorator, in prefixed routers) document their 202."""
    doc = openapi_of(with_middleware(idiomatic_app()))
    paths = doc["paths"]
    marked = [
        ("/sync-report", "post"),
        ("/async-report", "post"),
        ("/api/v1/reports/{report_id}/render", "post"),
        ("/api/v1/reports/archive/{name}", "put"),
    ]
    for path, method in marked:
        accepted = paths[path][method]["responses"]["202"]
        assert set(accepted["headers"]) >= {"Location", "Retry-After"}
        assert accepted["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
        schema = accepted["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/AsyncAcceptJobAccepted"}
        for code in ("413", "503"):
            content = paths[path][method]["responses"][code]["content"]
            assert content == {
                "application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/AsyncAcceptProblem"}
                }
            }
        names = {p["name"] for p in paths[path][method]["parameters"] if p["in"] == "header"}
        assert {"Prefer", "Idempotency-Key"} <= names
    # the handler's own responses stay documented (hybrid answers, the result)
    assert "200" in paths["/sync-report"]["post"]["responses"]
    assert "201" in paths["/async-report"]["post"]["responses"]
    for path, method in [("/plain", "get"), ("/api/v1/reports/{report_id}", "get")]:
        assert "202" not in paths[path][method]["responses"]
    assert set(JOB_SCHEMAS) <= set(doc["components"]["schemas"])
    assert "ReportIn" in doc["components"]["schemas"]  # the app's own models are kept
    assert not any(p.startswith("/_jobs") for p in paths)


def test_route_patterns_from_the_middleware_are_documented() -> None:
    """Routes named by routes=[...] patterns on the middleware get the 202 too."""
    app = FastAPI()

    @app.post("/exports/{export_id}")
    def export(export_id: str) -> dict[str, str]:
        return {"id": export_id}

    @app.get("/exports/{export_id}")
    def read(export_id: str) -> dict[str, str]:
        return {"id": export_id}

    with_middleware(app, routes={"POST /exports/{id}": {"idempotency": "required"}})
    doc = openapi_of(app)
    post = doc["paths"]["/exports/{export_id}"]["post"]
    assert "202" in post["responses"]
    key = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
    assert key["required"] is True and key["in"] == "header"
    assert post["responses"]["400"]["content"]["application/problem+json"]
    assert "202" not in doc["paths"]["/exports/{export_id}"]["get"]["responses"]


def test_status_routes_documented_when_asked() -> None:
    """include_status_routes documents status, result and cancel with problem+json errors."""
    app = with_middleware(idiomatic_app())
    assert not any(p.startswith("/_jobs") for p in openapi_of(app)["paths"])
    doc = openapi_of(app, include_status_routes=True)
    paths = doc["paths"]
    status = paths["/_jobs/{token}"]
    assert set(status) == {"get", "head", "delete"}
    assert set(paths["/_jobs/{token}/result"]) == {"get", "head"}
    assert set(paths["/_jobs/{token}/cancel"]) == {"post"}
    job_ref = {"$ref": "#/components/schemas/AsyncAcceptJob"}
    problem = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/AsyncAcceptProblem"}}
    }
    get = status["get"]
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == job_ref
    assert "Retry-After" in get["responses"]["200"]["headers"]
    assert "Location" in get["responses"]["303"]["headers"]
    for code in ("404", "410", "503"):
        assert get["responses"][code]["content"] == problem
    assert paths["/_jobs/{token}/result"]["get"]["responses"]["409"]["content"] == problem
    for op in (status["delete"], paths["/_jobs/{token}/cancel"]["post"]):
        assert {"200", "202", "404", "409", "410"} <= set(op["responses"])
        assert op["responses"]["409"]["content"] == problem
    token = get["parameters"][0]
    assert token == {**token, "name": "token", "in": "path", "required": True}
    op_ids = [
        op["operationId"] for item in paths.values() for op in item.values() if "operationId" in op
    ]
    assert len(op_ids) == len(set(op_ids))
    assert get["tags"] == ["async-accept"]


def test_the_callers_job_list_is_documented_with_the_status_routes() -> None:
    """include_status_routes documents GET {prefix}/: filters, limit <= 100, Link, job items."""
    app = with_middleware(idiomatic_app(), prefix="/tasks")
    assert "/tasks/" not in openapi_of(app)["paths"]
    op = openapi_of(app, include_status_routes=True)["paths"]["/tasks/"]["get"]
    names = [p["name"] for p in op["parameters"]]
    assert names == ["status", "route", "created_after", "created_before", "limit", "cursor"]
    assert all(p["in"] == "query" and not p["required"] for p in op["parameters"])
    limit = op["parameters"][4]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 100)
    ok = op["responses"]["200"]
    assert "Link" in ok["headers"]
    items = ok["content"]["application/json"]["schema"]["properties"]["jobs"]["items"]
    assert items == {"$ref": "#/components/schemas/AsyncAcceptJob"}
    assert "application/problem+json" in op["responses"]["400"]["content"]


def test_status_routes_follow_the_middlewares_prefix_and_style() -> None:
    """The documented status URL uses the middleware's prefix; OData style adds a 202."""
    app = with_middleware(idiomatic_app(), prefix="/tasks", status_code_running=202)
    paths = openapi_of(app, include_status_routes=True, tags=["jobs"])["paths"]
    assert "/tasks/{token}" in paths and "/_jobs/{token}" not in paths
    assert "202" in paths["/tasks/{token}"]["get"]["responses"]
    assert paths["/tasks/{token}/result"]["get"]["tags"] == ["jobs"]


def test_openapi_json_endpoint_serves_the_document(
    fastapi_client: Callable[..., TestClient],
) -> None:
    """GET /openapi.json (what /docs reads) has the 202s; repeated calls don't duplicate."""
    app = idiomatic_app()
    document_async_accept(app, include_status_routes=True)
    document_async_accept(app, include_status_routes=True)  # idempotent
    client = fastapi_client(app)
    first = client.get("/openapi.json").json()
    again = client.get("/openapi.json").json()
    assert first == again
    params = first["paths"]["/sync-report"]["post"]["parameters"]
    assert [p["name"] for p in params].count("Prefer") == 1
    assert "/_jobs/{token}" in first["paths"]


def test_routes_added_after_documenting_are_included() -> None:
    """document_async_accept can be called right after FastAPI(): later routes count."""
    app = FastAPI()
    document_async_accept(app)

    @app.post("/late")
    @long_running
    def late() -> dict[str, str]:
        return {}

    assert "202" in app.openapi()["paths"]["/late"]["post"]["responses"]


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Follow a $ref; merge an allOf of object schemas into one."""
    if "$ref" in schema:
        return _resolve(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(part, components)
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return merged
    return schema


_PY_TYPES: dict[str, Any] = {
    "object": dict,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _check(instance: Any, schema: dict[str, Any], components: dict[str, Any]) -> None:
    """A small JSON-schema check of the constructs the documented schemas use."""
    schema = _resolve(schema, components)
    if "anyOf" in schema:
        for part in schema["anyOf"]:
            with contextlib.suppress(AssertionError):
                _check(instance, part, components)
                return
        raise AssertionError(f"{instance!r} matches none of {schema['anyOf']}")
    kind = schema.get("type")
    if kind is not None:
        assert isinstance(instance, _PY_TYPES[kind]), f"{instance!r} is not {kind}"
        assert kind in ("number", "integer") or not isinstance(instance, bool) or kind == "boolean"
    if "enum" in schema:
        assert instance in schema["enum"], instance
    if kind in ("number", "integer"):
        assert schema.get("minimum", instance) <= instance <= schema.get("maximum", instance)
    if kind == "object":
        props = schema.get("properties", {})
        assert set(schema.get("required", ())) <= set(instance), (schema, instance)
        if not schema.get("additionalProperties", False):
            assert set(instance) <= set(props), set(instance) - set(props)
        for key, sub in props.items():
            if key in instance:
                _check(instance[key], sub, components)


def test_documented_schemas_match_what_the_middleware_sends(
    fastapi_client: Callable[..., TestClient],
) -> None:
    """The 202 body, status JSON and a problem validate against the documented schemas."""
    app = idiomatic_app()
    document_async_accept(app)
    client = fastapi_client(app)
    components = client.get("/openapi.json").json()["components"]["schemas"]
    r = client.post("/sync-report", json={"title": "t"}, headers=ALICE)
    assert r.status_code == 202
    _check(r.json(), {"$ref": "#/AsyncAcceptJobAccepted"}, components)
    loc = r.headers["location"]
    running = poll(client, loc, lambda s: s.json()["status"] == "processing")
    _check(running.json(), {"$ref": "#/AsyncAcceptJob"}, components)
    GATE.set()
    final = poll(client, loc, done)
    _check(final.json(), {"$ref": "#/AsyncAcceptJob"}, components)
    assert set(final.json()) <= set(JOB_SCHEMAS["AsyncAcceptJob"]["properties"])
    missing = client.get(loc + "x", headers=ALICE)
    assert missing.status_code == 404
    _check(missing.json(), {"$ref": "#/AsyncAcceptProblem"}, components)
    with pytest.raises(AssertionError):
        _check({"id": "x"}, {"$ref": "#/AsyncAcceptJob"}, components)  # the check can fail


def test_without_fastapi_installed_documenting_names_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """document_async_accept without FastAPI raises MissingDependencyError with the pip line."""
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingDependencyError) as info:
        document_async_accept(object())
    assert "pip install 'async-accept[fastapi]'" in str(info.value)
    assert info.value.feature == "The FastAPI integration"


def test_importing_the_integration_imports_no_framework() -> None:
    """import async_accept.fastapi imports neither FastAPI nor Starlette."""
    code = (
        "import sys, async_accept.fastapi as m; "
        "assert m.AsyncAcceptMiddleware.__module__ == 'async_accept.asgi'; "
        "bad = [n for n in ('fastapi', 'starlette', 'pydantic') if n in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
