"""Django: the contract through Django's own clients (WSGI: ``Client`` and a real
``get_wsgi_application()``; ASGI: ``AsyncClient`` and ``get_asgi_application()``
over httpx), discovery of every kind of view, and settings."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")
pytest.importorskip("rest_framework")

import django
from django.conf import settings

if not settings.configured:
    # Before anything reads the settings; other test modules don't configure Django.
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
    django.setup()

if settings.ROOT_URLCONF != "tests.django_project.urls":  # pragma: no cover
    pytest.skip("Django was configured by someone else in this process", allow_module_level=True)

import httpx
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.test import AsyncClient, Client, override_settings

import async_accept.django as aa_django
from async_accept.errors import ConfigurationError
from async_accept.routes import RouteOptions
from tests import apps
from tests.django_project.views import BINARY

ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}
TIMEOUT = 15.0


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Gates per test; the secret comes from settings, never from the environment."""
    monkeypatch.delenv("ASYNC_ACCEPT_SECRET_KEY", raising=False)
    apps.GATES = apps.Gates()
    yield
    apps.GATES.open_all()


@pytest.fixture(autouse=True, scope="module")
def stop_runtime() -> Iterator[None]:
    """The process-wide front door is stopped (threads, store) after the module."""
    yield
    aa_django.reset()


def body(response: Any) -> Any:
    data = response.content if hasattr(response, "content") else response.read()
    return json.loads(data)


def wait_for(
    get: Callable[[str], Any], url: str, until: Callable[[Any], bool], timeout: float = TIMEOUT
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        r = get(url)
        if until(r):
            return r
        assert time.monotonic() < deadline, f"{r.status_code} {r.content!r}"
        time.sleep(0.01)


def done(r: Any) -> bool:
    return r.status_code == 303 or body(r)["status"] in ("failed", "canceled")


def finish(client: Client, url: str, headers: dict[str, str] = ALICE) -> Any:
    return wait_for(lambda u: client.get(u, headers=headers), url, done)


def accept(client: Client, path: str, method: str = "post", **kw: Any) -> str:
    kw.setdefault("headers", ALICE)
    r = getattr(client, method)(path, **kw)
    assert r.status_code == 202, (r.status_code, r.content)
    return str(r.headers["Location"])


def result_of(client: Client, path: str, method: str = "post", **kw: Any) -> Any:
    """Accept at ``path``, wait for the 303, return the result response."""
    loc = accept(client, path, method, **kw)
    r = finish(client, loc)
    assert r.status_code == 303, r.content
    return client.get(r.headers["Location"], headers=ALICE)


# --- the flow, WSGI ----------------------------------------------------------------------


def test_wsgi_202_progress_303_result_byte_for_byte() -> None:
    """Django Client (sync middleware): 202 -> progress -> 303 -> the result's exact bytes."""
    client = Client()
    r = client.post(
        "/progress/p1/", data=b"\xff\x00payload", content_type="application/x-raw", headers=ALICE
    )
    assert r.status_code == 202
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    assert int(r.headers["Retry-After"]) >= 1
    loc = r.headers["Location"]
    assert loc.startswith("/_jobs/") and body(r)["status_url"] == loc
    assert apps.GATES.entered_event("p1").wait(TIMEOUT)
    running = wait_for(
        lambda u: client.get(u, headers=ALICE), loc, lambda r: body(r)["percent_complete"] == 40
    )
    assert running.status_code == 200
    status = body(running)
    assert status["status"] == "processing" and status["message"] == "rendering"
    assert int(running.headers["Retry-After"]) >= 1
    apps.GATES.gate("p1").set()
    r = finish(client, loc)
    assert r.status_code == 303 and r.headers["Location"] == loc + "/result"
    assert body(r)["status"] == "completed"
    res = client.get(r.headers["Location"], headers=ALICE)
    assert res.status_code == 200
    assert res.content == BINARY + b"\xff\x00payload"
    assert res.headers["Content-Type"] == "application/octet-stream"
    assert res.headers["X-Handler"] == "progress"


def test_wsgi_other_credentials_get_the_same_404() -> None:
    """Another caller, no caller and a tampered token all get the same 404 problem."""
    client = Client()
    loc = accept(client, "/slow/", data=b"x", content_type="text/plain")
    answers = [
        client.get(loc, headers=BOB),
        client.get(loc),
        client.get(loc + "/result", headers=BOB),
        client.get(loc[:-2] + ("AA" if not loc.endswith("AA") else "BB"), headers=ALICE),
    ]
    for r in answers:
        assert r.status_code == 404
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.content == answers[0].content
    assert finish(client, loc).status_code == 303


def test_unmarked_views_pass_through_untouched() -> None:
    """Unmarked views and unmarked methods of marked classes answer directly."""
    client = Client()
    r = client.get("/hello/", headers=ALICE)
    assert (r.status_code, r.content, r.headers["X-Plain"]) == (200, b"hello", "1")
    assert client.get("/cbv/").content == b"a form"
    assert body(client.get("/api/reports/")) == {"view": "api-get"}
    assert body(client.get("/api/jobs/")) == [{"view": "list"}]
    assert client.get("/items/x/render/").status_code == 404
    assert client.post("/legacy/24/").status_code == 404


def test_handler_sees_the_whole_request_in_a_job() -> None:
    """The replay reaches the view with method, path, body and credentials, inside a job."""
    res = body(result_of(Client(), "/slow/?q=1", data=b"hello body", content_type="text/plain"))
    assert res == {
        "view": "slow",
        "method": "POST",
        "path": "/slow/",
        "authorization": "Bearer alice",
        "in_job": True,
        "body": "hello body",
    }


@pytest.mark.parametrize(
    ("method", "path", "view", "extra"),
    [
        ("post", "/slow/", "slow", {}),
        ("put", "/slow/", "slow", {}),
        ("post", "/above/", "above", {}),
        ("post", "/items/7/render/", "render_item", {"pk": 7}),
        ("post", "/legacy/2024/", "legacy", {"year": "2024"}),
        ("post", "/cbv/", "cbv", {}),
        ("post", "/cbv-whole/", "whole", {}),
        ("post", "/api/reports/", "api", {}),
        ("post", "/api/fn-below/", "api_below", {}),
        ("post", "/api/fn-above/", "api_above", {}),
        ("post", "/api/jobs/", "viewset-create", {}),
        ("post", "/api/jobs/5/rerun/", "rerun", {"pk": "5"}),
        ("post", "/localized/", "localized", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_discovers_every_kind_of_view(method: str, path: str, view: str, extra: Any) -> None:
    """Function views (mark above/below), path()/re_path() params, CBVs, DRF views,
    @api_view, viewset actions and i18n prefixes are found, and the job runs that view."""
    kw: dict[str, Any] = {}
    if method in ("post", "put"):
        kw = {"data": {"n": 1}, "content_type": "application/json"}
    res = result_of(Client(), path, method, **kw)
    got = body(res)
    assert got["view"] == view
    for key, value in extra.items():
        assert got[key] == value


def test_discovery_patterns() -> None:
    """Discovery yields one pattern per marked view and method set, in readable form."""
    specs = {p.spec: p for p in aa_django.discover_urlconf()}
    assert "POST /cbv/" in specs  # only the marked method
    assert "POST /cbv-whole/" in specs  # a whole class: its unsafe methods
    assert "DELETE,PATCH,POST,PUT /slow/" in specs  # a function view: the unsafe methods
    assert specs["POST /cbv/"].options == RouteOptions(sla=30, precheck=True)
    assert "POST /api/jobs/" in specs and "GET /api/jobs/" not in specs
    rerun = specs["POST /api/jobs/(?P<pk>[^/.]+)/rerun/"]
    assert rerun.matches("POST", "/api/jobs/12/rerun/")
    assert not rerun.matches("POST", "/api/jobs/1.2/rerun/")
    items = specs["DELETE,PATCH,POST,PUT /items/<int:pk>/render/"]
    assert items.matches("POST", "/items/3/render/")
    assert not items.matches("POST", "/items/x/render/")
    localized = specs["DELETE,PATCH,POST,PUT /{lang}/localized/"]
    assert localized.matches("POST", "/fr/localized/") and localized.matches("POST", "/localized/")
    assert not localized.matches("POST", "/en/localized/")  # the default language has no prefix


def test_function_views_limited_by_require_http_methods_are_marked_for_those_only() -> None:
    """@require_POST / @require_http_methods on a marked function view limit the marked methods,
    and a method they refuse still gets Django's 405, not a 202."""
    specs = {p.spec for p in aa_django.discover_urlconf()}
    assert "POST /post-only/" in specs
    assert "POST,PUT /narrowed/" in specs
    client = Client()
    assert body(result_of(client, "/post-only/"))["view"] == "post_only"
    assert body(result_of(client, "/narrowed/", "put"))["method"] == "PUT"
    for path, method in (("/post-only/", "get"), ("/narrowed/", "get")):
        res = getattr(client, method)(path, headers=ALICE)
        assert res.status_code == 405, (path, method, res.status_code)


def test_discovery_matches_like_django_on_odd_patterns() -> None:
    """Inline flags, unanchored re_path(), repeated group names and slug/uuid converters."""
    from django.urls import Resolver404, resolve

    urlconf = "tests.django_project.odd_urls"
    patterns = aa_django.discover_urlconf(urlconf)
    assert len(patterns) == 4
    uuid = "12345678-1234-5678-1234-567812345678"
    for path, routed in [
        ("/caps/", True),
        ("/CAPS/", True),
        ("/caps/x", False),
        ("/open/12", True),
        ("/x/open/12/more", True),
        ("/open/", False),
        ("/nested/abc/42/", True),
        ("/nested/abc/4x/", False),
        (f"/p/my-slug/{uuid}/", True),
        (f"/p/my slug/{uuid}/", False),
        ("/p/s/not-a-uuid/", False),
    ]:
        try:
            resolve(path, urlconf)
            django_routes = True
        except Resolver404:
            django_routes = False
        assert django_routes is routed, path
        assert any(p.matches("POST", path) for p in patterns) is routed, path


def test_prefer_respond_async_on_unmarked_views() -> None:
    """With prefer_async, Prefer: respond-async makes a job; other answers gain Vary: Prefer."""
    with override_settings(ASYNC_ACCEPT={**settings.ASYNC_ACCEPT, "prefer_async": True}):
        client = Client()
        direct = client.get("/hello/")
        assert direct.content == b"hello" and "Prefer" in direct.headers["Vary"]
        r = client.get("/hello/", headers={**ALICE, "Prefer": "respond-async"})
        assert r.status_code == 202 and r.headers["Preference-Applied"] == "respond-async"
        done_r = finish(client, r.headers["Location"])
        assert client.get(done_r.headers["Location"], headers=ALICE).content == b"hello"


def test_201_location_is_the_final_resource() -> None:
    """A view answering 201 + Location sends the 303 there."""
    client = Client()
    r = finish(client, accept(client, "/create/"))
    assert r.status_code == 303 and r.headers["Location"] == "/things/42"


def test_result_keeps_every_cookie() -> None:
    """Both Set-Cookie headers of the view come back with the result."""
    res = result_of(Client(), "/cookies/")
    assert res.content == b"two cookies"
    assert res.cookies["first"].value == "1" and res.cookies["first"]["httponly"]
    assert res.cookies["second"].value == "2" and res.cookies["second"]["path"] == "/reports"


def test_replay_runs_the_whole_middleware_stack() -> None:
    """A replayed request meets CSRF like any other: the job completes with Django's 403."""
    client = Client()
    r = finish(client, accept(client, "/guarded/"))
    assert r.status_code == 303
    assert client.get(r.headers["Location"], headers=ALICE).status_code == 403


def test_body_over_the_limit_is_413() -> None:
    """A body over max_body_size gets 413 problem+json and no job."""
    with override_settings(ASYNC_ACCEPT={**settings.ASYNC_ACCEPT, "max_body_size": 8}):
        r = Client().post("/slow/", data=b"0123456789", content_type="text/plain", headers=ALICE)
    assert r.status_code == 413
    assert r.headers["Content-Type"] == "application/problem+json"


def test_head_of_status_has_no_body() -> None:
    """HEAD on the status URL answers the headers without the body."""
    client = Client()
    loc = accept(client, "/slow/")
    finish(client, loc)
    r = client.head(loc, headers=ALICE)
    assert r.status_code == 303 and r.content == b""
    assert int(r.headers["Content-Length"]) > 0


def test_real_wsgi_handler_under_a_script_name() -> None:
    """get_wsgi_application() mounted at /mount: URLs carry the mount, the job runs the view."""
    # httpx's WSGITransport puts script_name in SCRIPT_NAME and the URL's path in PATH_INFO.
    transport = httpx.WSGITransport(app=get_wsgi_application(), script_name="/mount")
    with httpx.Client(transport=transport, base_url="http://testserver") as client:
        r = client.post("/cbv/", json={"n": 2}, headers=ALICE)
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        assert loc.startswith("/mount/_jobs/")
        below = loc.removeprefix("/mount")
        r = wait_for(lambda u: client.get(u, headers=ALICE), below, done)
        assert r.status_code == 303 and r.headers["location"] == loc + "/result"
        res = client.get(below + "/result", headers=ALICE).json()
        assert res["view"] == "cbv" and res["path"] == "/mount/cbv/" and res["body"] == {"n": 2}
        assert client.get(below, headers=BOB).status_code == 404


# --- ASGI ------------------------------------------------------------------------------


def test_middleware_is_sync_and_async_capable() -> None:
    """Django gets a coroutine middleware around async handlers and a plain one around sync."""
    from asgiref.sync import iscoroutinefunction

    async def async_view(request: Any) -> Any: ...

    def sync_view(request: Any) -> Any: ...

    assert aa_django.AsyncAcceptMiddleware.sync_capable
    assert aa_django.AsyncAcceptMiddleware.async_capable
    assert iscoroutinefunction(aa_django.AsyncAcceptMiddleware(async_view))
    assert not iscoroutinefunction(aa_django.AsyncAcceptMiddleware(sync_view))


async def apoll(get: Callable[[str], Any], url: str, until: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        r = await get(url)
        if until(r):
            return r
        assert time.monotonic() < deadline, f"{r.status_code} {r.content!r}"
        await asyncio.sleep(0.01)


def test_asgi_async_client_202_progress_303_result() -> None:
    """AsyncClient (async middleware): 202 -> progress -> 303 -> exact result; Bob gets 404."""

    aa_django.reset()  # this test starts the runtime from the event loop

    async def main() -> None:
        client = AsyncClient()
        too_big = {**settings.ASYNC_ACCEPT, "max_body_size": 4}
        with override_settings(ASYNC_ACCEPT=too_big):
            r = await client.post("/slow/", data=b"12345", content_type="text/plain")
            assert r.status_code == 413

        def get(u: str) -> Any:
            return client.get(u, headers=ALICE)

        r = await client.post(
            "/progress/a1/", data=b"async body", content_type="text/plain", headers=ALICE
        )
        assert r.status_code == 202, r.content
        loc = r.headers["Location"]
        running = await apoll(get, loc, lambda r: body(r)["percent_complete"] == 40)
        assert body(running)["status"] == "processing"
        assert (await client.get(loc, headers=BOB)).status_code == 404
        apps.GATES.gate("a1").set()
        r = await apoll(get, loc, done)
        assert r.status_code == 303
        res = await client.get(r.headers["Location"], headers=ALICE)
        assert res.status_code == 200 and res.content == BINARY + b"async body"
        assert (await client.get(r.headers["Location"], headers=BOB)).status_code == 404
        plain = await client.get("/hello/")
        assert plain.content == b"hello"

    asyncio.run(main())


def test_real_asgi_handler_over_httpx() -> None:
    """get_asgi_application() over httpx: DRF and CBV jobs run; unmarked views pass through."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=get_asgi_application())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

            def get(u: str) -> Any:
                return client.get(u, headers=ALICE)

            for path, view in (("/api/reports/", "api"), ("/cbv/", "cbv")):
                r = await client.post(path, json={"n": 3}, headers=ALICE)
                assert r.status_code == 202, r.text
                loc = r.headers["location"]
                r = await apoll(get, loc, done)
                assert r.status_code == 303
                res = (await get(r.headers["location"])).json()
                assert res["view"] == view
                assert (await client.get(loc, headers=BOB)).status_code == 404
            hello = await client.get("/hello/")
            assert hello.text == "hello" and hello.headers["x-plain"] == "1"

    asyncio.run(main())


# --- settings ------------------------------------------------------------------------------


def test_options_come_from_the_async_accept_setting() -> None:
    """ASYNC_ACCEPT's keys (lower or upper case) are the middleware's options."""
    options = {"STORE": "memory://", "prefix": "/job-status", "ttl": 120, "sla": 30}
    with override_settings(ASYNC_ACCEPT=options):
        client = Client()
        r = client.post("/slow/", headers=ALICE)
        assert r.status_code == 202
        loc = r.headers["Location"]
        assert loc.startswith("/job-status/")
        job = body(r)
        created = time.mktime(time.strptime(job["created_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        expires = time.mktime(time.strptime(job["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert abs(expires - created - 120) <= 1
        assert finish(client, loc).status_code == 303


def test_routes_setting_marks_undecorated_views() -> None:
    """routes=[...] in ASYNC_ACCEPT marks views that carry no decorator."""
    with override_settings(ASYNC_ACCEPT={**settings.ASYNC_ACCEPT, "routes": ["GET /hello/"]}):
        client = Client()
        done_r = finish(client, accept(client, "/hello/", "get"))
        res = client.get(done_r.headers["Location"], headers=ALICE)
        assert res.content == b"hello"


def test_secret_falls_back_to_django_secret_key_with_rotation(tmp_path: Path) -> None:
    """Without ASYNC_ACCEPT secret_key, SECRET_KEY signs; SECRET_KEY_FALLBACKS still verify."""
    store = {**settings.ASYNC_ACCEPT, "store": f"sqlite:///{tmp_path / 'jobs.db'}"}
    with override_settings(ASYNC_ACCEPT=store, SECRET_KEY="first-secret-0123456789abcdef-0123"):
        client = Client()
        loc = accept(client, "/slow/")
        assert finish(client, loc).status_code == 303
    with override_settings(ASYNC_ACCEPT=store, SECRET_KEY="second-secret-0123456789abcdef-0123"):
        assert Client().get(loc, headers=ALICE).status_code == 404
    with override_settings(
        ASYNC_ACCEPT=store,
        SECRET_KEY="second-secret-0123456789abcdef-0123",
        SECRET_KEY_FALLBACKS=["first-secret-0123456789abcdef-0123"],
    ):
        assert Client().get(loc, headers=ALICE).status_code == 303
    explicit = {**store, "secret_key": "first-secret-0123456789abcdef-0123"}
    with override_settings(ASYNC_ACCEPT=explicit, SECRET_KEY="third-secret-0123456789abcdef-0123"):
        assert Client().get(loc, headers=ALICE).status_code == 303


@pytest.mark.parametrize("loader", [get_wsgi_application, get_asgi_application])
def test_missing_secret_stops_the_start_up(loader: Callable[[], Any]) -> None:
    """No secret anywhere: building the WSGI/ASGI application raises ConfigurationError."""
    no_secret = override_settings(SECRET_KEY="", ASYNC_ACCEPT={"store": "memory://"})
    with no_secret, pytest.raises(ConfigurationError, match="secret"):
        loader()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"stroe": "memory://"}, "unknown option 'stroe'"),
        ({"executor": "asyncio"}, "executor='thread'"),
        ({"store": "bogus://x"}, "bogus"),
        ("memory://", "must be a dict"),
    ],
    ids=["typo", "asyncio-executor", "bad-store", "not-a-dict"],
)
def test_bad_settings_stop_the_start_up(options: Any, match: str) -> None:
    """A bad ASYNC_ACCEPT raises ConfigurationError naming the problem at start-up."""
    with override_settings(ASYNC_ACCEPT=options), pytest.raises(ConfigurationError, match=match):
        get_wsgi_application()


def test_without_django_the_error_names_the_pip_line() -> None:
    """Importing the integration without Django raises MissingDependencyError with the fix."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['django'] = None\n"
        "try:\n    import async_accept.django\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "MissingDependencyError The Django integration needs the 'django' package: "
        "pip install 'async-accept[django]'"
    )


def test_the_dashboard_under_django_signs_in_and_cancels_with_its_csrf_token() -> None:
    """Under Django the dashboard's forms reach it (body read, Django's CSRF not in the way):
    a wrong token is 401, the right one signs in, and Cancel needs the session's CSRF token."""
    import re
    from urllib.parse import urlencode

    from tests.test_dashboard import seed_queued

    def form(url: str, **fields: str) -> Any:  # what a browser's form sends
        return client.post(url, urlencode(fields), content_type="application/x-www-form-urlencoded")

    token = "django-dashboard-token-0123456789"
    options = {"store": "memory://", "health_token": token, "dashboard": "auth"}
    with override_settings(ASYNC_ACCEPT=options):
        client = Client()
        assert client.get("/_jobs/dashboard").status_code == 401
        assert form("/_jobs/dashboard/login", token="wrong").status_code == 401
        r = form("/_jobs/dashboard/login", token=token)
        assert r.status_code == 303
        job_id = seed_queued(aa_django.get_front_door().store)
        page = client.get("/_jobs/dashboard")
        assert page.status_code == 200 and f'id="job-{job_id}"' in page.content.decode()
        m = re.search(r'name="csrf" value="([^"]+)"', page.content.decode())
        assert m
        url = f"/_jobs/dashboard/jobs/{job_id}/cancel"
        assert form(url, csrf="forged").status_code == 403
        r = form(url, csrf=m.group(1))
        assert r.status_code == 303 and r.headers["Location"].endswith("done=canceled")
        job = aa_django.get_front_door().store.get(job_id, time.time())
        assert job is not None and job.status.value == "canceled"


def test_the_dashboard_beside_the_admin_needs_no_model_and_checks_staff() -> None:
    """dashboard_urls() serves the dashboard at /admin/jobs/ to whom allow(request) admits
    (no model, no migration, the middleware's own dashboard left off); its Cancel works."""
    import re
    from urllib.parse import urlencode

    from tests.test_dashboard import seed_queued

    staff = {"X-Staff": "yes"}
    with override_settings(
        ROOT_URLCONF="tests.django_project.dashboard_urls",
        ASYNC_ACCEPT={"store": "memory://"},
    ):
        client = Client()
        assert client.get("/admin/jobs/").status_code == 403
        assert client.get("/_jobs/dashboard", headers=staff).status_code == 404
        job_id = seed_queued(aa_django.get_front_door().store)
        page = client.get("/admin/jobs/", headers=staff)
        assert page.status_code == 200
        html = page.content.decode()
        assert f'id="job-{job_id}"' in html
        assert f'action="/admin/jobs/jobs/{job_id}/cancel"' in html
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf
        r = client.post(
            f"/admin/jobs/jobs/{job_id}/cancel",
            urlencode({"csrf": csrf.group(1)}),
            content_type="application/x-www-form-urlencoded",
            headers=staff,
        )
        assert r.status_code == 303 and r.headers["Location"] == "/admin/jobs/?done=canceled"
        job = aa_django.get_front_door().store.get(job_id, time.time())
        assert job is not None and job.status.value == "canceled"


def test_the_dashboard_beside_the_admin_streams_its_live_updates() -> None:
    """Beside the admin the page names its live stream, and the stream (capped by
    wsgi_max_wait, as Django holds a thread) tells of a job accepted meanwhile."""
    import re
    import threading

    from tests.test_dashboard import seed_queued

    staff = {"X-Staff": "yes"}
    with override_settings(
        ROOT_URLCONF="tests.django_project.dashboard_urls",
        ASYNC_ACCEPT={"store": "memory://", "wsgi_max_wait": 1.5},
    ):
        client = Client()
        html = client.get("/admin/jobs/", headers=staff).content.decode()
        since = re.search(r'data-live="([^"]+)"', html)
        assert since and 'data-events="/admin/jobs/events"' in html
        assert client.get("/admin/jobs/events").status_code == 403
        door = aa_django.get_front_door()

        def accept() -> None:  # a job this process accepts, through the runtime's feed
            time.sleep(0.3)
            job_id = seed_queued(door.store)
            door.runtime.feed.saw(door.store.get(job_id, time.time()))

        threading.Thread(target=accept, daemon=True).start()
        r = client.get("/admin/jobs/events", {"since": since.group(1)}, headers=staff)
        assert r.status_code == 200 and r["Content-Type"].startswith("text/event-stream")
        body = b"".join(r.streaming_content).decode()
        assert "event: changed\n" in body
