"""Waiting for a change against real uvicorn processes: events stream while the job
runs, and a long-poll on one worker process hears of a job that ended on another."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, base_env, uvicorn
from tests.services import require_redis, wipe_redis_namespace

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice"}
ASYNC = {**ALICE, "Prefer": "respond-async"}


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


def store_env(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    if store == "sqlite":
        return base_env(ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}")
    url = require_redis()
    namespace = f"waiting-{time.time_ns()}"
    request.addfinalizer(lambda: wipe_redis_namespace(url, namespace))
    return base_env(ASYNC_ACCEPT_STORE=url, ASYNC_ACCEPT_REDIS_NAMESPACE=namespace)


def test_sse_events_arrive_while_the_job_runs(
    tmp_path: Path, servers: list[Server], request: pytest.FixtureRequest
) -> None:
    """Over a real server the first event comes at once, the final one at the job's end."""
    server = uvicorn(
        "tests.e2e_app:asgi_app", store_env("sqlite", tmp_path, request), tmp_path / "s.log"
    )
    servers.append(server.start())
    r = httpx.post(server.base + "/hybrid?delay=2", headers=ASYNC, timeout=5)
    assert r.status_code == 202, r.text
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    headers = {**ALICE, "Accept": "text/event-stream"}
    with httpx.stream("GET", server.base + r.headers["location"], headers=headers, timeout=10) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("event:"):
                arrivals.append((time.monotonic() - started, line.split(":", 1)[1].strip()))
            elif line.startswith("data:") and arrivals and arrivals[-1][1] == "done":
                assert json.loads(line[5:])["status"] == "completed"
    ended = time.monotonic() - started
    assert arrivals, "no events"
    assert arrivals[0][0] < 1.0, "the first event waited for the job"
    assert arrivals[-1][1] == "done" and arrivals[-1][0] >= 1.5
    assert ended - arrivals[-1][0] < 1.0, "the stream did not close after the final event"


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_long_poll_hears_of_a_job_that_ended_in_another_process(
    store: str, tmp_path: Path, servers: list[Server], request: pytest.FixtureRequest
) -> None:
    """With 2 uvicorn workers on one store, long-polls on fresh connections (both
    processes) answer the 303 within a second of the job's end."""
    env = store_env(store, tmp_path, request)
    server = uvicorn("tests.e2e_app:asgi_app", env, tmp_path / "s.log", workers=2)
    servers.append(server.start())
    r = httpx.post(server.base + "/hybrid?delay=1.5", headers=ASYNC, timeout=5)
    assert r.status_code == 202, r.text
    accepted = time.monotonic()
    url = server.base + r.headers["location"]

    def wait_for_it() -> tuple[int, float]:
        got = httpx.get(url, headers={**ALICE, "Prefer": "wait=10"}, timeout=15)
        return got.status_code, time.monotonic() - accepted

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: wait_for_it(), range(8)))
    assert all(code == 303 for code, _ in answers), answers
    assert all(1.4 <= took < 3.0 for _, took in answers), answers
