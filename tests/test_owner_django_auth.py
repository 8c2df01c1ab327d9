"""Django with real users: the owner of a job is the authenticated user.

tests/django_auth_project runs under real servers (uvicorn: Django's ASGI
handler; gunicorn: its WSGI handler) with django.contrib.auth on a SQLite
user table, sessions, and a DRF view with Token and Basic authentication.
A session user keeps access across the session-key rotation of a login and
from another session of theirs; a DRF user keeps it with a refreshed token
or Basic credentials; another user always gets the 404.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import servers

pytest.importorskip("django")
pytest.importorskip("rest_framework")


@pytest.fixture(scope="module", params=["uvicorn", "gunicorn"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The project under a real server, with alice and bob in its user table."""
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    env = servers.base_env(
        AUTH_TEST_DB=str(tmp / "users.sqlite3"),
        DJANGO_SETTINGS_MODULE="tests.django_auth_project.settings",
    )
    made = subprocess.run(
        [sys.executable, "-m", "tests.django_auth_project.setup_db"],
        cwd=servers.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    tokens = json.loads(made.stdout.strip().splitlines()[-1])
    start = servers.uvicorn if request.param == "uvicorn" else servers.gunicorn
    app = f"tests.django_auth_project.{'asgi' if request.param == 'uvicorn' else 'wsgi'}"
    server = start(f"{app}:application", env, Path(tmp / "server.log"))
    server.start("/hello")
    try:
        yield server.base, tokens
    finally:
        server.stop()


@contextlib.contextmanager
def _browser(base: str, name: str) -> Iterator[httpx.Client]:
    """A client logged in as ``name`` (its own session cookie)."""
    with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as client:
        answer = client.post("/login/", data={"username": name, "password": f"{name}-password"})
        assert answer.status_code == 200, answer.text
        yield client


def _readable(answer: httpx.Response) -> bool:
    return answer.status_code in (200, 303)


def test_a_session_users_job_survives_a_session_key_rotation(site: Any) -> None:
    """After cycle_key() gave alice a new session cookie she reads her job, and from
    another session of hers too; bob's session and no session get the 404."""
    base, _ = site
    with _browser(base, "alice") as alice:
        accepted = alice.post("/work/")
        assert accepted.status_code == 202, accepted.text
        assert "async_accept_owner" not in alice.cookies  # the user owns it, not a cookie
        url = accepted.headers["location"]
        first = alice.cookies.get("sessionid")
        assert alice.post("/rotate/").status_code == 200
        assert alice.cookies.get("sessionid") not in (None, first)
        assert _readable(alice.get(url)), alice.get(url).text
        with _browser(base, "alice") as elsewhere:  # another session of alice's
            assert _readable(elsewhere.get(url))
        with _browser(base, "bob") as bob:
            assert bob.get(url).status_code == 404
            assert bob.post(f"{url}/cancel").status_code == 404
        with httpx.Client(base_url=base, timeout=10) as nobody:
            assert nobody.get(url).status_code == 404


def test_a_drf_token_users_job_follows_the_user_not_the_token(site: Any) -> None:
    """DRF authenticates in the view: alice's job answers her refreshed token and
    her Basic credentials, not bob's token, her revoked token or no credential."""
    base, tokens = site
    with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as http:
        old = {"Authorization": f"Token {tokens['alice']}"}
        accepted = http.post("/api/work/", headers=old, json={})
        assert accepted.status_code == 202, accepted.text
        url = accepted.headers["location"]
        assert http.get(url, headers={"Authorization": f"Token {tokens['bob']}"}).status_code == 404
        refreshed = http.post("/api/rotate-token/", headers=old)
        assert refreshed.status_code == 200, refreshed.text
        new = {"Authorization": f"Token {refreshed.json()['token']}"}
        assert _readable(http.get(url, headers=new)), http.get(url, headers=new).text
        assert _readable(http.get(url, auth=("alice", "alice-password")))
        assert http.get(url, headers=old).status_code == 404  # revoked: DRF refuses it
        assert http.get(url).status_code == 404
        assert http.get(url, auth=("bob", "bob-password")).status_code == 404
        assert (
            http.post(
                f"{url}/cancel", headers={"Authorization": f"Token {tokens['bob']}"}
            ).status_code
            == 404
        )
        # bob's own job is bob's: alice's new token doesn't read it
        bobs = http.post("/api/work/", auth=("bob", "bob-password"), json={})
        assert bobs.status_code == 202, bobs.text
        assert http.get(bobs.headers["location"], headers=new).status_code == 404
        token_bob = {"Authorization": f"Token {tokens['bob']}"}
        assert _readable(http.get(bobs.headers["location"], headers=token_bob))


def test_login_cycles_the_anonymous_session_and_keeps_its_job(site: Any) -> None:
    """A job accepted in an anonymous session stays readable after login() cycled
    the session key (the owner cookie); another browser gets the 404."""
    base, _ = site
    with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as browser:
        assert browser.post("/rotate/").status_code == 200  # an anonymous session
        before = browser.cookies.get("sessionid")
        accepted = browser.post("/work/")
        assert accepted.status_code == 202, accepted.text
        url = accepted.headers["location"]
        logged = browser.post("/login/", data={"username": "alice", "password": "alice-password"})
        assert logged.status_code == 200
        assert browser.cookies.get("sessionid") not in (None, before)  # login's cycle_key
        assert _readable(browser.get(url)), browser.get(url).text
        with _browser(base, "bob") as bob:
            assert bob.get(url).status_code == 404


def test_drf_refuses_before_a_job_exists(site: Any) -> None:
    """No or a wrong token: DRF's own 401/403 goes out, and no job is made."""
    base, _ = site
    with httpx.Client(base_url=base, timeout=10) as http:
        for headers in ({}, {"Authorization": "Token not-a-token"}):
            answer = http.post("/api/work/", headers=headers, json={})
            assert answer.status_code in (401, 403), answer.text
            assert "location" not in answer.headers
