"""Who owns a job: the user, not the bytes of a cookie; fail closed.

A rewritten session cookie (Flask's signed session after ``flash()``,
Starlette's ``SessionMiddleware``) keeps its user's access; a refreshed
token of the same authenticated principal keeps it too; callers who
authenticate with ``X-API-Key`` are distinct owners, and an
``Idempotency-Key`` never hands one caller another's job; what an
``identity=`` function returns is checked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from async_accept import long_running
from async_accept.errors import ConfigurationError

SECRET = "owner-secret-0123456789abcdef-0123456"
FAST: dict[str, Any] = {
    "store": "memory://",
    "executor": "thread",
    "heartbeat_interval": 0.2,
    "worker_lost_after": 3.0,
}


# -- Flask signed sessions --------------------------------------------------------------------


def _flask_app(**options: Any) -> Any:
    from flask import Flask, flash, session

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET

    @app.post("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        return "in"

    @app.get("/page")
    def page() -> str:
        flash("something happened")  # rewrites the session cookie
        return "page"

    @app.post("/work")
    @long_running
    def work() -> str:
        return "done"

    AsyncAccept(app, **{"secret_key": SECRET, **FAST, **options})
    return app


@pytest.fixture
def flask_app() -> Iterator[Any]:
    """A Flask app with a session login, a page that flashes and a marked route."""
    pytest.importorskip("flask")
    app = _flask_app()
    yield app
    app.extensions["async_accept"].middleware.runtime.shutdown()


def test_flask_session_rewritten_by_flash_keeps_access(flask_app: Any) -> None:
    """After flash() rewrote the signed session cookie, the user still reads their job."""
    client = flask_app.test_client()
    client.post("/login/alice")
    accepted = client.post("/work")
    assert accepted.status_code == 202
    before = client.get_cookie("session").value
    client.get("/page")
    assert client.get_cookie("session").value != before  # the cookie really changed
    status = client.get(accepted.headers["Location"])
    assert status.status_code in (200, 303), status.get_data()


def test_flask_session_of_another_user_gets_404(flask_app: Any) -> None:
    """Another browser, logged in as someone else, gets the plain 404 for the job."""
    alice, bob = flask_app.test_client(), flask_app.test_client()
    alice.post("/login/alice")
    bob.post("/login/bob")
    accepted = alice.post("/work")
    assert accepted.status_code == 202
    assert bob.get(accepted.headers["Location"]).status_code == 404
    assert flask_app.test_client().get(accepted.headers["Location"]).status_code == 404


# -- Starlette sessions and principals --------------------------------------------------------


def _starlette_app(with_auth: bool = False, auth_inside: bool = False, **options: Any) -> Any:
    from starlette.applications import Starlette
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        SimpleUser,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    class BearerUser(AuthenticationBackend):
        """``Authorization: Bearer <user>:<token>``: the token changes, the user stays."""

        async def authenticate(
            self, conn: HTTPConnection
        ) -> tuple[AuthCredentials, SimpleUser] | None:
            auth = conn.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or ":" not in auth:
                return None
            user = auth[7:].split(":", 1)[0]
            return AuthCredentials(["authenticated"]), SimpleUser(user)

    async def login(request: Request) -> PlainTextResponse:
        request.session["user"] = request.path_params["name"]
        return PlainTextResponse("in")

    async def page(request: Request) -> PlainTextResponse:
        request.session["seen"] = request.session.get("seen", 0) + 1  # rewrites the cookie
        return PlainTextResponse("page")

    @long_running
    async def work(request: Request) -> PlainTextResponse:
        return PlainTextResponse("done")

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET)]
    auth = Middleware(AuthenticationMiddleware, backend=BearerUser())
    if with_auth and not auth_inside:
        middleware.append(auth)
    middleware.append(
        Middleware(AsyncAcceptMiddleware, **{"secret_key": SECRET, **FAST, **options})
    )
    if with_auth and auth_inside:  # below ours: it sets scope["user"] inside the app
        middleware.append(auth)
    return Starlette(
        routes=[
            Route("/login/{name}", login, methods=["POST"]),
            Route("/page", page),
            Route("/work", work, methods=["POST"]),
        ],
        middleware=middleware,
    )


@pytest.fixture
def starlette_client() -> Iterator[Any]:
    """A TestClient factory over fresh Starlette apps (closed at the end)."""
    from starlette.testclient import TestClient

    clients: list[Any] = []

    def make(app: Any) -> Any:
        client = TestClient(app, follow_redirects=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_starlette_session_rewrite_keeps_access(starlette_client: Any) -> None:
    """After SessionMiddleware rewrote the session cookie, the user still reads their job."""
    client = starlette_client(_starlette_app())
    client.post("/login/alice")
    accepted = client.post("/work")
    assert accepted.status_code == 202
    before = client.cookies.get("session")
    client.get("/page")
    assert client.cookies.get("session") != before
    status = client.get(accepted.headers["location"])
    assert status.status_code in (200, 303), status.text


def test_starlette_principal_keeps_access_across_a_token_refresh(starlette_client: Any) -> None:
    """scope["user"] is the owner: a new token of the same user reads, another user doesn't."""
    client = starlette_client(_starlette_app(with_auth=True))
    accepted = client.post("/work", headers={"Authorization": "Bearer alice:token-1"})
    assert accepted.status_code == 202
    url = accepted.headers["location"]
    refreshed = client.get(url, headers={"Authorization": "Bearer alice:token-2"})
    assert refreshed.status_code in (200, 303), refreshed.text
    assert client.get(url, headers={"Authorization": "Bearer bob:token-1"}).status_code == 404


def test_an_auth_middleware_below_ours_still_lets_the_caller_read(starlette_client: Any) -> None:
    """AuthenticationMiddleware below this one sets scope["user"] only inside the
    app: the job is bound as a status read sees the caller, who reads it."""
    client = starlette_client(_starlette_app(with_auth=True, auth_inside=True))
    alice = {"Authorization": "Bearer alice:token-1"}
    accepted = client.post("/work", headers=alice)
    assert accepted.status_code == 202
    url = accepted.headers["location"]
    client.cookies.clear()
    assert client.get(url, headers=alice).status_code in (200, 303)
    assert client.get(url, headers={"Authorization": "Bearer bob:token-1"}).status_code == 404


# -- API keys and Idempotency-Key -------------------------------------------------------------


def _wsgi(**options: Any) -> tuple[Any, httpx.Client]:
    from async_accept.wsgi import AsyncAcceptMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    mw = AsyncAcceptMiddleware(
        app, routes={"POST /work": {}}, **{"secret_key": SECRET, **FAST, **options}
    )
    client = httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://testserver")
    return mw, client


@pytest.fixture
def wsgi() -> Iterator[Any]:
    """A plain WSGI app with a marked POST /work; make(**options) builds one."""
    made: list[tuple[Any, httpx.Client]] = []

    def make(**options: Any) -> tuple[Any, httpx.Client]:
        made.append(_wsgi(**options))
        return made[-1]

    yield make
    for mw, client in made:
        client.close()
        mw.runtime.shutdown()


@pytest.mark.parametrize("header", ["X-API-Key", "Api-Key"])
def test_api_key_callers_are_distinct_owners(wsgi: Any, header: str) -> None:
    """A caller with another API key, or none, gets the plain 404 for a job."""
    _, client = wsgi()
    accepted = client.post("/work", headers={header: "key-of-alice-0001"})
    assert accepted.status_code == 202
    url = accepted.headers["location"]
    assert client.get(url, headers={header: "key-of-alice-0001"}).status_code in (200, 303)
    assert client.get(url, headers={header: "key-of-bob-0002"}).status_code == 404
    assert client.get(url).status_code == 404


def test_idempotency_key_never_hands_over_another_callers_job(wsgi: Any) -> None:
    """Same Idempotency-Key and payload from another API key: its own job, not the first's."""
    _, client = wsgi()
    first = client.post(
        "/work", headers={"X-API-Key": "key-a-000000000", "Idempotency-Key": '"k1"'}, content=b"x"
    )
    second = client.post(
        "/work", headers={"X-API-Key": "key-b-000000000", "Idempotency-Key": '"k1"'}, content=b"x"
    )
    assert first.status_code == second.status_code == 202
    assert first.headers["location"] != second.headers["location"]
    again = client.post(
        "/work", headers={"X-API-Key": "key-a-000000000", "Idempotency-Key": '"k1"'}, content=b"x"
    )
    assert again.headers["location"] == first.headers["location"]


def test_idempotency_key_scoped_per_authorization(wsgi: Any) -> None:
    """Two Authorization callers with the same key and payload get two jobs."""
    _, client = wsgi()
    a = client.post("/work", headers={"Authorization": "Bearer a", "Idempotency-Key": '"k"'})
    b = client.post("/work", headers={"Authorization": "Bearer b", "Idempotency-Key": '"k"'})
    assert a.status_code == b.status_code == 202
    assert a.headers["location"] != b.headers["location"]


@pytest.mark.parametrize("value", [7, 0, 10**6, ["alice"], 1.5])
def test_identity_returning_a_non_string_is_refused(wsgi: Any, value: Any) -> None:
    """identity= must return str, bytes or None: anything else is a ConfigurationError."""
    _, client = wsgi(identity=lambda headers: value)
    with pytest.raises(ConfigurationError):
        client.post("/work")


@pytest.mark.parametrize("value", ["alice", b"alice", None])
def test_identity_returning_str_bytes_or_none_is_taken(wsgi: Any, value: Any) -> None:
    """identity= returning str, bytes or None accepts the job."""
    _, client = wsgi(identity=lambda headers: value)
    assert client.post("/work").status_code == 202


def test_identity_function_owner_is_what_it_returns(wsgi: Any) -> None:
    """identity= (a JWT sub, say) is the owner: same sub reads, another sub gets 404."""
    _, client = wsgi(identity=lambda headers: headers.get("x-sub"))
    accepted = client.post("/work", headers={"X-Sub": "user-1"})
    url = accepted.headers["location"]
    assert client.get(url, headers={"X-Sub": "user-1"}).status_code in (200, 303)
    assert client.get(url, headers={"X-Sub": "user-2"}).status_code == 404


# -- anonymous jobs ---------------------------------------------------------------------------


def test_anonymous_deny_answers_401_and_makes_no_job(wsgi: Any) -> None:
    """anonymous="deny": a marked route called with no identity gets 401 problem+json."""
    _, client = wsgi(anonymous="deny")
    r = client.post("/work")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert client.post("/work", headers={"Authorization": "Bearer a"}).status_code == 202


def test_anonymous_job_warns_once_per_route(wsgi: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A job accepted with no identity logs one warning per route naming the fix."""
    _, client = wsgi()
    with caplog.at_level(logging.WARNING, logger="async_accept"):
        for _ in range(3):
            assert client.post("/work").status_code == 202
    warnings = [r for r in caplog.records if "anonymous" in r.getMessage()]
    assert len(warnings) == 1
    assert "identity" in warnings[0].getMessage()


def test_owner_cookie_is_http_only_and_one_per_browser(flask_app: Any) -> None:
    """The owner cookie handed out at accept: HttpOnly, SameSite=Lax, reused by later jobs."""
    client = flask_app.test_client()
    client.post("/login/alice")
    first = client.post("/work")
    cookie = next(v for v in first.headers.getlist("Set-Cookie") if "async_accept_owner" in v)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    second = client.post("/work")  # the browser sent it back: no new cookie
    assert not any("async_accept_owner" in v for v in second.headers.getlist("Set-Cookie"))
    client.get("/page")  # the session cookie is rewritten; both jobs stay readable
    for accepted in (first, second):
        assert client.get(accepted.headers["Location"]).status_code in (200, 303)


def test_api_callers_get_no_owner_cookie(wsgi: Any) -> None:
    """A caller known by a credential header gets no cookie: its header is the owner."""
    _, client = wsgi()
    accepted = client.post("/work", headers={"Authorization": "Bearer a"})
    assert "set-cookie" not in accepted.headers


def test_django_principal_is_the_user_model_and_pk() -> None:
    """request.user (authenticated) is the principal: model label and primary key."""
    from types import SimpleNamespace

    from async_accept.identity import django_principal

    user = SimpleNamespace(is_authenticated=True, pk=7, _meta=SimpleNamespace(label_lower="a.u"))
    assert django_principal(SimpleNamespace(user=user)) == "django:a.u:7"
    anonymous = SimpleNamespace(is_authenticated=False, pk=None)
    assert django_principal(SimpleNamespace(user=anonymous)) is None
    assert django_principal(SimpleNamespace()) is None


def test_flask_login_user_is_the_owner() -> None:
    """Flask-Login's current_user is the owner: a new session of the same user reads the job."""
    pytest.importorskip("flask_login")
    from flask import Flask
    from flask_login import LoginManager, UserMixin, login_user

    from async_accept.flask import AsyncAccept

    class User(UserMixin):
        def __init__(self, uid: str) -> None:
            self.id = uid

    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    manager = LoginManager(app)
    manager.user_loader(User)

    @app.post("/login/<name>")
    def login(name: str) -> str:
        login_user(User(name))
        return "in"

    @app.post("/work")
    @long_running
    def work() -> str:
        return "done"

    AsyncAccept(app, **{"secret_key": SECRET, **FAST})
    try:
        first, again, other = app.test_client(), app.test_client(), app.test_client()
        first.post("/login/alice")
        accepted = first.post("/work")
        assert accepted.status_code == 202
        assert "async_accept_owner" not in accepted.headers.get("Set-Cookie", "")
        again.post("/login/alice")  # another session (other cookie) of the same user
        other.post("/login/bob")
        url = accepted.headers["Location"]
        assert again.get(url).status_code in (200, 303)
        assert other.get(url).status_code == 404
    finally:
        app.extensions["async_accept"].middleware.runtime.shutdown()


def test_identity_that_raises_means_no_identity(wsgi: Any) -> None:
    """identity= raising (a token that doesn't decode) is no identity: 401 with deny, never 500."""

    def owner(headers: Any) -> str:
        raise ValueError("bad token")

    _, client = wsgi(identity=owner, anonymous="deny")
    r = client.post("/work", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
