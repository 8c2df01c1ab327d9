"""The README's browser snippets, run as written in headless Chromium against real
servers: ``waitForJob`` (EventSource, owner by session cookie) and the ``poll`` loop
(fetch with an Authorization header), on uvicorn (ASGI) and gunicorn (WSGI, where held
reads and streams are capped by ``wsgi_max_wait`` and the snippets go on)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.servers import Server, base_env, gunicorn, uvicorn

pytestmark = pytest.mark.slow

SERVERS = {
    "uvicorn-starlette": (uvicorn, "tests.browser_client_app:starlette_app", "starlette"),
    "gunicorn-flask": (gunicorn, "tests.browser_client_app:flask_app", "flask"),
}


@pytest.fixture
def browser(site: tuple[Server, str]) -> Iterator[Any]:
    """Quit before the server stops (a graceful stop waits for open streams)."""
    with chromium() as driver:
        yield driver


@pytest.fixture(params=sorted(SERVERS))
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    start, app, framework = SERVERS[request.param]
    env = base_env(ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}")
    server = start(app, env, tmp_path / "server.log").start()
    try:
        yield server, framework
    finally:
        server.stop()


def outcome(driver: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = driver.execute_script("return window.outcome")
        if found is not None:
            return dict(found)
        time.sleep(0.1)
    raise AssertionError("the page's script never finished")


def test_wait_for_job_over_event_source_reaches_the_result(
    browser: Any, site: tuple[Server, str]
) -> None:
    """waitForJob: progress events arrive, then the done event's result link is fetched."""
    server, framework = site
    browser.get(server.base + "/")  # the session cookie the job is bound to
    browser.get(server.base + "/sse")
    got = outcome(browser)
    assert got.get("error") is None, got
    assert got["status"] == 200
    assert got["body"] == {"title": "sse", "framework": framework}
    progress = browser.execute_script("return window.progress")
    percents = [p for p in progress if p is not None]
    assert percents and percents == sorted(percents), progress  # seen as it went


def test_the_fetch_poll_loop_reaches_the_result(browser: Any, site: tuple[Server, str]) -> None:
    """poll(): long-polls with the caller's headers and follows the 303 to the result."""
    server, framework = site
    browser.get(server.base + "/poll")
    got = outcome(browser)
    assert got.get("error") is None, got
    assert got["status"] == 200 and got["redirected"] is True
    assert got["body"] == {"title": "poll", "framework": framework}
