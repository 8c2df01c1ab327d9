"""The Flask and Django examples under their real servers (gunicorn; uvicorn for
Django's ASGI side), two worker processes sharing a SQLite store, driven over
HTTP: 202 -> polling with progress -> 303 -> result, other credentials -> 404."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Server, base_env, gunicorn, uvicorn

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}

EXAMPLES: dict[str, tuple[Callable[..., Server], str, str, str, str]] = {
    # name: (server, app, report path, an unmarked URL, what it answers)
    "flask-gunicorn": (gunicorn, "examples.flask_app:app", "/reports", "/hello", "hello"),
    "django-gunicorn": (
        gunicorn,
        "examples.django_app.wsgi:application",
        "/reports/",
        "/reports/",
        "a JSON body with a title makes a report",
    ),
    "django-uvicorn": (
        uvicorn,
        "examples.django_app.asgi:application",
        "/reports/",
        "/reports/",
        "a JSON body with a title makes a report",
    ),
}


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Every server started here is stopped (its whole process group) at the end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_runs_the_whole_flow(name: str, tmp_path: Path, servers: list[Server]) -> None:
    """POST /reports -> 202; polls on any worker show progress; 303 -> the report; Bob gets 404."""
    start, app, path, plain, plain_says = EXAMPLES[name]
    env = base_env(
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        ASYNC_ACCEPT_SECRET_KEY="example-secret-0123456789abcdef-0123",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the example's own wsgi/asgi module sets it
    server = start(app, env, tmp_path / "server.log", workers=2)
    servers.append(server)
    server.start(ready_path=plain)
    base = server.base

    assert plain_says in httpx.get(base + plain, headers=ALICE, timeout=5).text  # passes through

    r = httpx.post(base + path, json={"title": "Q3"}, headers=ALICE, timeout=5)
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc.startswith("/_jobs/") and int(r.headers["retry-after"]) >= 1

    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while True:
        # A new connection each time: the kernel spreads them over both workers.
        status = httpx.get(base + loc, headers=ALICE, timeout=5)
        assert status.status_code in (200, 303), status.text
        if status.status_code == 303:
            break
        seen.append(status.json())
        assert int(status.headers["retry-after"]) >= 1
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.1)
    progress = [s for s in seen if s["percent_complete"] not in (None, 0, 100)]
    assert progress, seen
    assert all(s["status"] == "processing" for s in progress)
    assert progress[-1]["message"].startswith("rendered page")
    assert status.json()["status"] == "completed"
    assert status.headers["location"] == loc + "/result"

    result = httpx.get(base + status.headers["location"], headers=ALICE, timeout=5)
    assert result.status_code == 200
    assert result.json() == {"title": "Q3", "pages": 5, "framework": name.split("-")[0]}
    for url in (loc, loc + "/result"):
        for who in (BOB, {}):
            denied = httpx.get(base + url, headers=who, timeout=5)
            assert denied.status_code == 404
            assert denied.headers["content-type"] == "application/problem+json"


def test_flaskr_example_under_gunicorn(tmp_path: Path, servers: list[Server]) -> None:
    """flaskr under gunicorn (two workers): anonymous GET/POST /create get Flask's own
    redirect to the login page at once (no job); logged in, the form page is served at
    once; the POST is a 202 whose 303 goes to / with the flash cookie, and / shows it."""
    env = base_env(
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        ASYNC_ACCEPT_SECRET_KEY="example-secret-0123456789abcdef-0123",
        FLASKR_DB=str(tmp_path / "flaskr.db"),
    )
    server = gunicorn("examples.flaskr_app:app", env, tmp_path / "server.log", workers=2)
    servers.append(server)
    server.start(ready_path="/auth/login")
    with httpx.Client(base_url=server.base, timeout=5) as anon:
        for method in ("GET", "POST"):
            r = anon.request(method, "/create", data={"title": "x"})
            assert (r.status_code, r.headers["location"]) == (302, "/auth/login")
    with httpx.Client(base_url=server.base, timeout=5) as user:
        assert user.post("/auth/login", data={"username": "alice"}).status_code == 302
        form = user.get("/create")
        assert form.status_code == 200 and "<form" in form.text  # not a job
        r = user.post("/create", data={"title": "Hello async"})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while (status := user.get(r.headers["location"])).status_code == 200:
            assert time.monotonic() < deadline, status.text
            time.sleep(0.1)
        assert status.status_code == 303
        assert status.headers["location"] == "/"
        assert "session=" in status.headers.get("set-cookie", "")  # the flash rides along
        page = user.get("/")
        assert "Post created" in page.text and "Hello async" in page.text
        assert "Post created" not in user.get("/").text  # flashed once, as in flaskr


@pytest.mark.parametrize("start", [gunicorn, uvicorn], ids=["gunicorn", "uvicorn"])
def test_drf_token_auth_example(
    start: Callable[..., Server], tmp_path: Path, servers: list[Server]
) -> None:
    """DRF with token auth under gunicorn and uvicorn: no token or a wrong one gets DRF's
    own 401 at once (no job); with a token the POST is a 202 whose result is the 201."""
    env = base_env(
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        ASYNC_ACCEPT_SECRET_KEY="example-secret-0123456789abcdef-0123",
        EXAMPLE_API_TOKENS="k-alice:alice",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    app = "examples.django_app.wsgi:application"
    if start is uvicorn:
        app = "examples.django_app.asgi:application"
    server = start(app, env, tmp_path / "server.log", workers=2)
    servers.append(server)
    server.start(ready_path="/reports/")
    url = server.base + "/api/snippets/"
    body = {"title": "hi", "code": "print(1)"}
    for headers in ({}, {"Authorization": "Token nope"}):
        r = httpx.post(url, json=body, headers=headers, timeout=5)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Token"
    token = {"Authorization": "Token k-alice"}
    r = httpx.post(url, json=body, headers=token, timeout=5)
    assert r.status_code == 202, r.text
    loc = server.base + r.headers["location"]
    deadline = time.monotonic() + 30
    while (status := httpx.get(loc, headers=token, timeout=5)).status_code == 200:
        assert time.monotonic() < deadline, status.text
        time.sleep(0.1)
    assert status.status_code == 303
    result = httpx.get(server.base + status.headers["location"], headers=token, timeout=5)
    assert (result.status_code, result.json()) == (201, {**body, "owner": "alice"})
