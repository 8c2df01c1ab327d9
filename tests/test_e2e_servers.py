"""End to end against real uvicorn and gunicorn processes sharing a SQLite store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, base_env, gunicorn, uvicorn

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice"}


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


def poll_done(base: str, loc: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        # A new connection every time: the kernel spreads them over the workers.
        r = httpx.get(base + loc, headers=ALICE, timeout=5)
        assert r.status_code in (200, 303), r.text
        if r.status_code == 303 or r.json()["status"] in ("failed", "canceled"):
            return r
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)


@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_any_worker_process_answers_any_job(
    door: str, tmp_path: Path, servers: list[Server]
) -> None:
    """With 2 worker processes on one SQLite file, every poll on any process sees every job."""
    env = base_env(ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}")
    if door == "uvicorn":
        server = uvicorn("tests.e2e_app:asgi_app", env, tmp_path / "server.log", workers=2)
    else:
        server = gunicorn("tests.e2e_app:wsgi_app", env, tmp_path / "server.log", workers=2)
    servers.append(server.start())
    locations = []
    for i in range(12):
        r = httpx.post(server.base + "/slow", content=f"job-{i}".encode(), headers=ALICE, timeout=5)
        assert r.status_code == 202, r.text
        locations.append(r.headers["location"])
    for i, loc in enumerate(locations):
        done = poll_done(server.base, loc)
        assert done.status_code == 303
        for _ in range(4):  # several fresh connections: both processes answer
            again = httpx.get(server.base + loc, headers=ALICE, timeout=5)
            assert again.status_code == 303
        result = httpx.get(server.base + done.headers["location"], headers=ALICE, timeout=5)
        assert result.json()["body"] == f"job-{i}"
        assert (
            httpx.get(server.base + loc, headers={"Authorization": "Bearer eve"}).status_code == 404
        )


@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_queued_jobs_survive_a_restart_and_killed_jobs_fail_worker_lost(
    door: str, tmp_path: Path, servers: list[Server]
) -> None:
    """kill -9 mid-job: queued jobs run after restart; the running one fails worker-lost."""
    env = base_env(
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        ASYNC_ACCEPT_EXECUTOR="thread?max_workers=1",
        ASYNC_ACCEPT_HEARTBEAT_INTERVAL="0.2",
        ASYNC_ACCEPT_WORKER_LOST_AFTER="2",
        ASYNC_ACCEPT_SWEEP_INTERVAL="0.5",
    )
    app = "tests.e2e_app:asgi_app" if door == "uvicorn" else "tests.e2e_app:wsgi_app"
    start = uvicorn if door == "uvicorn" else gunicorn
    first = start(app, env, tmp_path / "first.log")
    servers.append(first.start())
    # One job occupies the only worker thread; three more wait in the queue.
    blocker = httpx.post(
        first.base + "/hybrid?delay=15", headers={**ALICE, "Prefer": "respond-async"}, timeout=5
    )
    assert blocker.status_code == 202
    deadline = time.monotonic() + 10
    while (
        httpx.get(first.base + blocker.headers["location"], headers=ALICE).json()["status"]
        != "processing"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    queued = [
        httpx.post(first.base + "/slow", content=f"q{i}".encode(), headers=ALICE, timeout=5)
        for i in range(3)
    ]
    assert all(r.status_code == 202 for r in queued)
    for r in queued:
        assert (
            httpx.get(first.base + r.headers["location"], headers=ALICE).json()["status"]
            == "queued"
        )
    first.kill()

    second = start(app, env, tmp_path / "second.log", port=first.port)
    servers.append(second.start())
    for i, r in enumerate(queued):
        done = poll_done(second.base, r.headers["location"])
        assert done.status_code == 303, done.text
        result = httpx.get(second.base + done.headers["location"], headers=ALICE)
        assert result.json()["body"] == f"q{i}"
    lost = poll_done(second.base, blocker.headers["location"])
    assert lost.json()["status"] == "failed"
    assert lost.json()["error"]["type"].endswith("worker-lost")
