"""The PostgreSQL store when the database goes away: 503 (never a 202 for an
unrecorded job), and service resumes without restarting any process.

Each test runs a PostgreSQL server of its own (tests/postgres_cluster.py), so
stopping and restarting it never touches the machine's server. The web
processes are real: uvicorn (ASGI app, asyncio executor) and gunicorn (WSGI
app, thread executor).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_accept.job import JobStatus
from tests.postgres_cluster import PostgresCluster
from tests.servers import Server, base_env, gunicorn, uvicorn

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice"}
APPS = {"asgi": "tests.e2e_app:asgi_app", "wsgi": "tests.e2e_app:wsgi_app"}
TIMING = {
    "ASYNC_ACCEPT_HEARTBEAT_INTERVAL": "0.2",
    "ASYNC_ACCEPT_WORKER_LOST_AFTER": "2",
    "ASYNC_ACCEPT_SWEEP_INTERVAL": "0.3",
}


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test's own, removed afterwards."""
    pg = PostgresCluster()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


def _store_url(pg: PostgresCluster) -> str:
    return pg.url + "?schema=failover&pool_timeout=2&connect_timeout=2"


def _servers(pg: PostgresCluster, tmp_path: Path) -> dict[str, Server]:
    env = base_env(ASYNC_ACCEPT_STORE=_store_url(pg), **TIMING)
    return {
        "asgi": uvicorn(APPS["asgi"], env, tmp_path / "uvicorn.log"),
        "wsgi": gunicorn(APPS["wsgi"], env, tmp_path / "gunicorn.log"),
    }


def _finished(base: str, loc: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(base + loc, headers=ALICE, timeout=10)
        if r.status_code == 303 or (
            r.status_code == 200 and r.json()["status"] in ("failed", "canceled")
        ):
            return r
        assert time.monotonic() < deadline, f"{loc} never finished: {r.status_code} {r.text}"
        time.sleep(0.1)


def _posted_body(store: Any, job: Any) -> bytes | None:
    """What the client posted for ``job``: a completed job's request is deleted, but
    the contract app echoes the body in its result; a failed job keeps its request."""
    result = store.get_result(job.id)
    if result is not None:
        return json.loads(result.body)["body"].encode()
    request = store.get_request(job.id)
    return None if request is None else bytes(request.body)


def _assert_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"] == "application/problem+json"


def test_database_down_is_503_on_accept_and_status_then_resumes(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Database stopped: accept and status reads answer 503 + Retry-After; started
    again: the same web processes accept and answer, and no refused job exists."""
    servers = _servers(cluster, tmp_path)
    try:
        for server in servers.values():
            server.start()
        before = {}
        for door, server in servers.items():
            r = httpx.post(server.base + "/slow", content=door.encode(), headers=ALICE, timeout=10)
            assert r.status_code == 202, r.text
            before[door] = r.headers["location"]
            assert _finished(server.base, before[door]).status_code == 303

        cluster.stop()
        for door, server in servers.items():
            _assert_503(httpx.post(server.base + "/slow", content=b"refused", headers=ALICE))
            _assert_503(httpx.get(server.base + before[door], headers=ALICE, timeout=15))

        cluster.start()
        for door, server in servers.items():
            deadline = time.monotonic() + 20
            while True:  # the same process, not restarted
                r = httpx.post(server.base + "/slow", content=b"after", headers=ALICE, timeout=15)
                if r.status_code == 202:
                    break
                _assert_503(r)
                assert time.monotonic() < deadline, r.text
                time.sleep(0.2)
            assert _finished(server.base, r.headers["location"]).status_code == 303
            assert httpx.get(server.base + before[door], headers=ALICE).status_code == 303
            assert server.proc is not None and server.proc.poll() is None

        from async_accept.stores.postgres import PostgresStore

        store = PostgresStore.from_url(_store_url(cluster))
        try:
            bodies = sorted(
                body
                for job in store.list_jobs(None, 100, None)
                if (body := _posted_body(store, job)) is not None
            )
        finally:
            store.close()
        assert bodies == [b"after", b"after", b"asgi", b"wsgi"]  # nothing for the 503s
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.timeout(300)
def test_restart_mid_load_loses_no_acknowledged_job(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Clients post to both servers while the database crashes and restarts: every
    202 names a job that exists with its request and ends; every other answer is
    a 503 with Retry-After; accepts succeed again afterwards."""
    servers = _servers(cluster, tmp_path)
    accepted: list[tuple[str, str, bytes]] = []
    refused: list[int] = []
    other: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(door: str, server: Server, n: int) -> None:
        with httpx.Client(base_url=server.base, headers=ALICE, timeout=20) as http:
            i = 0
            while not stop.is_set():
                body = f"{door}-{n}-{i}".encode()
                i += 1
                try:
                    r = http.post("/slow", content=body)
                except httpx.HTTPError as exc:  # no answer at all: nothing was acknowledged
                    with lock:
                        other.append(f"{type(exc).__name__}")
                    continue
                with lock:
                    if r.status_code == 202:
                        accepted.append((door, r.headers["location"], body))
                    elif r.status_code == 503 and int(r.headers["retry-after"]) >= 1:
                        refused.append(r.status_code)
                    else:
                        other.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(0.01)

    threads: list[threading.Thread] = []
    try:
        for server in servers.values():
            server.start()
        threads = [
            threading.Thread(target=client, args=(door, server, n))
            for door, server in servers.items()
            for n in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before_restart = len(accepted)
        cluster.restart("immediate")
        restarted = len(accepted)
        time.sleep(4)
        stop.set()
        for t in threads:
            t.join(30)
        assert before_restart > 10
        assert len(accepted) > restarted + 10, "accepts did not resume after the restart"
        assert other == []
        from async_accept.stores.postgres import PostgresStore

        store = PostgresStore.from_url(_store_url(cluster))
        try:
            deadline = time.monotonic() + 60
            while True:  # every job ends: run, or failed by the deadman after the crash
                counts = store.count_by_status()
                if counts[JobStatus.QUEUED] + counts[JobStatus.PROCESSING] == 0:
                    break
                assert time.monotonic() < deadline, counts
                time.sleep(0.2)
            jobs: dict[str, Any] = {j.id: j for j in store.list_jobs(None, 100000, None)}
            bodies = {}
            for job_id, job in jobs.items():
                body = _posted_body(store, job)
                assert body is not None, job
                bodies[body] = job_id
        finally:
            store.close()
        assert {body for _, _, body in accepted} <= set(bodies)
        for door, loc, _body in accepted[:: max(1, len(accepted) // 20)]:
            assert _finished(servers[door].base, loc).status_code in (200, 303)
        # A create committed just as the server crashed may have lost its answer (the
        # client saw a 503): at most one per client in flight.
        assert len(accepted) <= len(jobs) <= len(accepted) + len(threads)
        completed = sum(1 for j in jobs.values() if j.status.value == "completed")
        assert completed >= len(accepted) - 20  # at most the jobs caught mid-run end otherwise
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for server in servers.values():
            server.stop()
