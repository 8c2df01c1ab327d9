"""Litestar: the owner of a job is ``request.user`` as the app's own
``AbstractAuthenticationMiddleware`` finds it. Litestar runs that middleware
only inside the app, after this one, so at accept and at a status read alike
the middleware asks the app's (and the marked handlers') authentication
middlewares who the caller is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from async_accept import long_running
from async_accept.identity import object_principal

SECRET = "litestar-owner-secret-0123456789abcdef"
#: token -> user: alice holds two tokens (a refresh), bob one
TOKENS = {"tok-a1": "alice", "tok-a2": "alice", "tok-b1": "bob"}


def _app(*, on_handler: bool) -> Any:
    from dataclasses import dataclass

    from litestar import Litestar, Request, get, post
    from litestar.connection import ASGIConnection
    from litestar.exceptions import NotAuthorizedException
    from litestar.middleware import DefineMiddleware
    from litestar.middleware.authentication import (
        AbstractAuthenticationMiddleware,
        AuthenticationResult,
    )

    from async_accept.litestar import AsyncAcceptMiddleware

    @dataclass
    class User:
        id: str

    class TokenAuth(AbstractAuthenticationMiddleware):
        """``Authorization: Token <key>``: a key names a user; no key, 401."""

        async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
            auth = connection.headers.get("authorization", "")
            name = TOKENS.get(auth.removeprefix("Token "))
            if name is None:
                raise NotAuthorizedException()
            return AuthenticationResult(user=User(name), auth=auth)

    @get("/hello", exclude_from_auth=True)
    async def hello() -> str:
        return "hello"

    auth = DefineMiddleware(TokenAuth, exclude=["/hello"])

    @post("/work", middleware=[auth] if on_handler else None)
    @long_running
    async def work(request: Request) -> dict[str, str]:
        return {"user": request.user.id}

    app = Litestar(
        [hello, work],
        middleware=[] if on_handler else [auth],
        signature_namespace={"Request": Request},
    )
    return AsyncAcceptMiddleware(app, secret_key=SECRET, store="memory://", executor="asyncio")


@pytest.fixture(params=["app-middleware", "handler-middleware"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A TestClient over the app, its auth middleware on the app or on the marked handler."""
    pytest.importorskip("litestar")
    from starlette.testclient import TestClient

    with TestClient(
        _app(on_handler=request.param == "handler-middleware"), follow_redirects=False
    ) as c:
        yield c


def _token(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


def test_the_owner_is_the_litestar_user_not_the_token(client: Any) -> None:
    """Another user's token gets the 404; the same user's second token reads the job."""
    accepted = client.post("/work", headers=_token("tok-a1"), json={})
    assert accepted.status_code == 202, accepted.text
    url = accepted.headers["location"]
    assert client.get(url, headers=_token("tok-b1")).status_code == 404
    assert client.get(url, headers={}).status_code == 404
    assert client.get(url, headers=_token("tok-nope")).status_code == 404
    again = client.get(url, headers=_token("tok-a2"))
    assert again.status_code in (200, 303), again.text
    assert client.post(f"{url}/cancel", headers=_token("tok-b1")).status_code == 404


def test_litestar_refuses_before_a_job_exists(client: Any) -> None:
    """No token: Litestar's own 401 goes out and no job is made."""
    refused = client.post("/work", json={})
    assert refused.status_code == 401
    assert "location" not in refused.headers


def test_object_principal_reads_users_of_any_shape() -> None:
    """A str/int user, an object's pk/id/username, a mapping's key; None for no user."""
    from types import SimpleNamespace

    assert object_principal("x", "alice") == "x:str:alice"
    assert object_principal("x", 7) == "x:int:7"
    assert object_principal("x", SimpleNamespace(id=3)) == "x:SimpleNamespace:id:3"
    assert object_principal("x", {"username": "bob"}) == "x:dict:username:bob"
    assert object_principal("x", SimpleNamespace(is_authenticated=False, id=3)) is None
    assert object_principal("x", None) is None
    assert object_principal("x", True) is None
    assert object_principal("x", object()) is None
