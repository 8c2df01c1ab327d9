"""Flask: the contract through Flask's test client, discovery of every kind of
view through the URL map, and configuration from ``app.config``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

from flask import Blueprint, Flask, Response, jsonify, request
from flask.views import MethodView, View
from werkzeug.routing import BaseConverter, Map, Rule

from async_accept import current_job, long_running, report_progress
from async_accept.errors import ConfigurationError
from async_accept.flask import AsyncAccept, rule_pattern
from async_accept.routes import RouteOptions
from async_accept.wsgi import AsyncAcceptMiddleware
from tests import apps

SECRET = "flask-test-secret-0123456789abcdef-0123"
ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}
BINARY = bytes(range(256))
TIMEOUT = 15.0
FAST = {
    "ASYNC_ACCEPT_STORE": "memory://",
    "ASYNC_ACCEPT_HEARTBEAT_INTERVAL": 0.2,
    "ASYNC_ACCEPT_WORKER_LOST_AFTER": 3.0,
}


class HexConverter(BaseConverter):
    regex = "[0-9a-f]{4}"


def answer(view: str, **extra: Any) -> Response:
    return jsonify(
        view=view,
        method=request.method,
        path=request.path,
        authorization=request.headers.get("Authorization"),
        in_job=current_job() is not None,
        **extra,
    )


def build_app(**config: Any) -> Flask:
    """A Flask app with a view of every kind, marked in every supported way."""
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": SECRET, **FAST, **config})
    app.url_map.converters["hex"] = HexConverter

    @app.get("/hello")
    def hello() -> Response:
        return Response(b"hello", mimetype="text/plain", headers={"X-Plain": "1"})

    @app.post("/progress/<name>")
    @long_running(sla=30)
    def progress(name: str) -> Response:
        """Reports progress, waits for its gate, answers binary bytes plus the body."""
        apps.GATES.entered_event(name).set()
        report_progress(40, message="rendering", eta=5)
        assert apps.GATES.gate(name).wait(apps.HANDLER_LIMIT)
        return Response(
            BINARY + request.get_data(),
            mimetype="application/octet-stream",
            headers={"X-Handler": "progress"},
        )

    @long_running  # above the route decorator
    @app.route("/above", methods=["POST"])
    def above() -> Response:
        return answer("above", body=request.get_data(as_text=True))

    @app.post("/below")
    @long_running  # below the route decorator
    def below() -> Response:
        return answer("below")

    @app.post("/create")
    @long_running
    def create() -> tuple[Response, int, dict[str, str]]:
        return jsonify(id=42), 201, {"Location": "/things/42"}

    @app.post("/items/<int:item_id>/files/<path:name>")
    @long_running
    def item_file(item_id: int, name: str) -> Response:
        return answer("item_file", item_id=item_id, name=name)

    @app.post("/codes/<string(length=2):code>/<hex:h>")
    @long_running
    def code(code: str, h: str) -> Response:
        return answer("code", code=code, h=h)

    class Reports(MethodView):
        """Only ``post`` is marked."""

        def get(self) -> Response:
            return Response(b"a form", mimetype="text/plain")

        @long_running(sla=30)
        def post(self) -> Response:
            return answer("methodview")

    app.add_url_rule("/reports", view_func=Reports.as_view("reports"))

    @long_running
    class Whole(MethodView):
        """The whole class is marked: its unsafe methods (GET serves POST's form)."""

        def get(self) -> Response:
            return answer("whole")

        def post(self) -> Response:
            return answer("whole")

    app.add_url_rule("/whole", view_func=Whole.as_view("whole"))

    class Plain(View):
        methods = ["POST"]

        @long_running
        def dispatch_request(self) -> Response:
            return answer("plain-view")

    app.add_url_rule("/plain-view", view_func=Plain.as_view("plain_view"))
    return app


def add_blueprints(app: Flask) -> None:
    """A blueprint with a nested one, registered after init_app."""
    bp = Blueprint("api", __name__, url_prefix="/api")
    inner = Blueprint("v1", __name__, url_prefix="/v1")

    @bp.post("/jobs/<int:job_id>")
    @long_running
    def bp_job(job_id: int) -> Response:
        return answer("blueprint", job_id=job_id)

    @bp.get("/jobs")
    def bp_list() -> Response:
        return jsonify(view="list")

    @inner.post("/render")
    @long_running
    def nested() -> Response:
        return answer("nested")

    bp.register_blueprint(inner)
    app.register_blueprint(bp)


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ASYNC_ACCEPT_SECRET_KEY", raising=False)
    apps.GATES = apps.Gates()
    yield
    apps.GATES.open_all()


@pytest.fixture
def make() -> Iterator[Callable[..., tuple[Flask, AsyncAccept]]]:
    """Build an app with the extension; every middleware is stopped afterwards."""
    built: list[AsyncAccept] = []

    def factory(**config: Any) -> tuple[Flask, AsyncAccept]:
        app = build_app(**config)
        ext = AsyncAccept(app)
        add_blueprints(app)  # after init_app: discovery is lazy
        built.append(ext)
        return app, ext

    yield factory
    for ext in built:
        ext.middleware.runtime.shutdown()
        ext.middleware.store.close()


def wait_for(get: Callable[[str], Any], url: str, until: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        r = get(url)
        if until(r):
            return r
        assert time.monotonic() < deadline, f"{r.status_code} {r.data!r}"
        time.sleep(0.01)


def done(r: Any) -> bool:
    return r.status_code == 303 or json.loads(r.data)["status"] in ("failed", "canceled")


def result_of(client: Any, path: str, method: str = "post", **kw: Any) -> Any:
    kw.setdefault("headers", ALICE)
    r = getattr(client, method)(path, **kw)
    assert r.status_code == 202, (r.status_code, r.data)
    r = wait_for(lambda u: client.get(u, headers=ALICE), r.headers["Location"], done)
    assert r.status_code == 303, r.data
    return client.get(r.headers["Location"], headers=ALICE)


# --- the flow ------------------------------------------------------------------------


def test_202_progress_303_result_byte_for_byte(make: Callable[..., Any]) -> None:
    """Flask test client: 202 -> status with progress -> 303 -> the result's exact bytes."""
    app, _ = make()
    client = app.test_client()
    r = client.post("/progress/f1", data=b"\xfe\x00body", headers=ALICE)
    assert r.status_code == 202
    assert r.headers["Cache-Control"] == "no-store" and int(r.headers["Retry-After"]) >= 1
    loc = r.headers["Location"]
    assert loc.startswith("/_jobs/") and r.get_json()["status_url"] == loc

    def at_40(r: Any) -> bool:
        return bool(r.get_json()["percent_complete"] == 40)

    running = wait_for(lambda u: client.get(u, headers=ALICE), loc, at_40)
    assert running.status_code == 200
    assert running.get_json()["status"] == "processing"
    assert running.get_json()["message"] == "rendering"
    apps.GATES.gate("f1").set()
    r = wait_for(lambda u: client.get(u, headers=ALICE), loc, done)
    assert r.status_code == 303 and r.headers["Location"] == loc + "/result"
    res = client.get(r.headers["Location"], headers=ALICE)
    assert res.status_code == 200
    assert res.data == BINARY + b"\xfe\x00body"
    assert res.headers["Content-Type"] == "application/octet-stream"
    assert res.headers["X-Handler"] == "progress"


def test_other_credentials_get_the_same_404(make: Callable[..., Any]) -> None:
    """Another caller, no caller, and a tampered token all get one identical 404 problem."""
    app, _ = make()
    client = app.test_client()
    loc = client.post("/below", headers=ALICE).headers["Location"]
    tampered = loc[:-2] + ("AA" if not loc.endswith("AA") else "BB")
    answers = [
        client.get(loc, headers=BOB),
        client.get(loc),
        client.get(loc + "/result", headers=BOB),
        client.get(tampered, headers=ALICE),
    ]
    for r in answers:
        assert r.status_code == 404
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.data == answers[0].data
    assert wait_for(lambda u: client.get(u, headers=ALICE), loc, done).status_code == 303


def test_unmarked_views_pass_through(make: Callable[..., Any]) -> None:
    """Unmarked views and unmarked methods of marked classes answer directly."""
    app, _ = make()
    client = app.test_client()
    r = client.get("/hello")
    assert (r.status_code, r.data, r.headers["X-Plain"]) == (200, b"hello", "1")
    assert client.get("/reports").data == b"a form"
    assert client.get("/api/jobs").get_json() == {"view": "list"}
    assert client.post("/items/x/files/a").status_code == 404
    assert client.post("/codes/abc/00ff").status_code == 404
    assert client.options("/below").status_code == 200  # OPTIONS is never a job
    assert client.get("/whole").get_json()["in_job"] is False  # GET beside POST: not marked


@pytest.mark.parametrize(
    ("method", "path", "view", "extra"),
    [
        ("post", "/above", "above", {}),
        ("post", "/below", "below", {}),
        ("post", "/items/3/files/a/b.txt", "item_file", {"item_id": 3, "name": "a/b.txt"}),
        ("post", "/codes/fr/00ff", "code", {"code": "fr", "h": "00ff"}),
        ("post", "/reports", "methodview", {}),
        ("post", "/whole", "whole", {}),
        ("post", "/plain-view", "plain-view", {}),
        ("post", "/api/jobs/9", "blueprint", {"job_id": 9}),
        ("post", "/api/v1/render", "nested", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_discovers_every_kind_of_view(
    make: Callable[..., Any], method: str, path: str, view: str, extra: dict[str, Any]
) -> None:
    """Views marked above/below the route decorator, MethodViews (class or method), Views,
    (nested) blueprints registered after init_app and converters are found, and run."""
    app, _ = make()
    got = result_of(app.test_client(), path, method).get_json()
    assert got["view"] == view and got["in_job"] is True and got["path"] == path
    assert got["authorization"] == "Bearer alice"
    for key, value in extra.items():
        assert got[key] == value


def test_rule_patterns_read_in_our_syntax_and_match_like_werkzeug(make: Callable[..., Any]) -> None:
    """Rules become readable patterns that match exactly where Flask routes."""
    app, _ = make()
    rules = {r.rule: r for r in app.url_map.iter_rules()}
    item = rule_pattern(rules["/items/<int:item_id>/files/<path:name>"], ["POST"], RouteOptions())
    assert item.spec == "POST /items/{item_id:int}/files/{name:path}"
    assert item.matches("POST", "/items/1/files/x/y")
    assert not item.matches("POST", "/items/1/files/")
    code = rule_pattern(rules["/codes/<string(length=2):code>/<hex:h>"], ["POST"], RouteOptions())
    assert code.spec == "POST /codes/{code}/{h}"
    assert code.matches("POST", "/codes/de/beef")
    assert not code.matches("POST", "/codes/deu/beef")
    assert not code.matches("POST", "/codes/de/xyz1")
    signed = next(Map([Rule("/t/<int(signed=True):n>")]).iter_rules())
    pattern = rule_pattern(signed, ["PUT"], RouteOptions())
    assert pattern.spec == "PUT /t/{n}"  # our int takes no sign: shown as text
    assert pattern.matches("PUT", "/t/-5") and not pattern.matches("PUT", "/t/x")


def test_201_location_is_the_final_resource(make: Callable[..., Any]) -> None:
    """A view answering 201 + Location sends the 303 there."""
    app, _ = make()
    client = app.test_client()
    loc = client.post("/create", headers=ALICE).headers["Location"]
    r = wait_for(lambda u: client.get(u, headers=ALICE), loc, done)
    assert r.status_code == 303 and r.headers["Location"] == "/things/42"


# --- configuration ---------------------------------------------------------------------


def test_extension_conventions(make: Callable[..., Any]) -> None:
    """init_app stores the extension in app.extensions and wraps app.wsgi_app; factories work."""
    app, ext = make()
    assert app.extensions["async_accept"] is ext
    assert isinstance(app.wsgi_app, AsyncAcceptMiddleware)
    assert ext.middleware_for(app) is app.wsgi_app
    with app.app_context():
        assert ext.middleware_for() is app.wsgi_app
    with pytest.raises(ConfigurationError, match="already"):
        ext.init_app(app)

    later = AsyncAccept(store="memory://")  # the application-factory pattern
    other = build_app()
    try:
        assert later.init_app(other) is other.wsgi_app
        assert other.extensions["async_accept"] is later
    finally:
        later.middleware.store.close()


def test_options_come_from_app_config(make: Callable[..., Any]) -> None:
    """ASYNC_ACCEPT_PREFIX, _TTL and _ROUTES in app.config are the middleware's options."""
    app, ext = make(
        ASYNC_ACCEPT_PREFIX="/job-status", ASYNC_ACCEPT_TTL=600, ASYNC_ACCEPT_ROUTES=["GET /hello"]
    )
    assert ext.middleware.options.ttl == 600
    client = app.test_client()
    r = client.get("/hello", headers=ALICE)
    assert r.status_code == 202
    assert r.headers["Location"].startswith("/job-status/")
    res = wait_for(lambda u: client.get(u, headers=ALICE), r.headers["Location"], done)
    assert client.get(res.headers["Location"], headers=ALICE).data == b"hello"


def test_keyword_options_win_over_app_config(tmp_path: Path) -> None:
    """AsyncAccept(app, store=...) wins over ASYNC_ACCEPT_STORE in app.config."""
    app = build_app(ASYNC_ACCEPT_STORE="bogus://never-used")
    ext = AsyncAccept(app, store=f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        assert type(ext.middleware.store).__name__ == "SQLiteStore"
    finally:
        ext.middleware.store.close()


def test_secret_comes_from_config_then_flask_secret_key(make: Callable[..., Any]) -> None:
    """ASYNC_ACCEPT_SECRET_KEY wins over SECRET_KEY; SECRET_KEY alone is enough."""
    app, ext = make(ASYNC_ACCEPT_SECRET_KEY="own-secret-0123456789abcdef-0123")
    client = app.test_client()
    loc = client.post("/below", headers=ALICE).headers["Location"]
    assert wait_for(lambda u: client.get(u, headers=ALICE), loc, done).status_code == 303
    assert ext.middleware.options.secrets == [b"own-secret-0123456789abcdef-0123"]
    _, fallback = make()
    assert fallback.middleware.options.secrets == [SECRET.encode()]


def test_missing_secret_fails_in_init_app() -> None:
    """No secret in kwargs, config, environment or SECRET_KEY: init_app raises."""
    app = build_app(SECRET_KEY=None)
    with pytest.raises(ConfigurationError, match="secret"):
        AsyncAccept(app)
    assert "async_accept" not in app.extensions


def test_bad_config_fails_in_init_app() -> None:
    """A bad option in app.config raises ConfigurationError naming it, in init_app."""
    with pytest.raises(ConfigurationError, match="prefix"):
        AsyncAccept(build_app(ASYNC_ACCEPT_PREFIX="no-slash"))


def test_without_flask_the_error_names_the_pip_line() -> None:
    """Using the integration without Flask raises MissingDependencyError with the fix."""
    code = (
        "import sys; sys.modules['flask'] = None\n"
        "from async_accept.flask import AsyncAccept\n"
        "try:\n    AsyncAccept()\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "MissingDependencyError The Flask integration needs the 'flask' package: "
        "pip install 'async-accept[flask]'"
    )
