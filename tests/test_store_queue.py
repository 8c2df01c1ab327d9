"""executor="store": the store is the queue, ``async-accept worker`` claims from it.

Real processes on the machine's PostgreSQL (a schema per test group): uvicorn
and gunicorn accept, two ``async-accept worker`` processes run the jobs, woken
by LISTEN/NOTIFY. The same worker on a SQLite file and on Redis (polling), and
kill -9 of a worker mid-job.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_accept.errors import ConfigurationError, ExecutorError
from async_accept.executors import resolve_executor
from async_accept.executors.store import FALLBACK_POLL, POLL_INTERVAL, StoreExecutor, StoreWorker
from tests.servers import Server, base_env, gunicorn, uvicorn
from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres
from tests.test_distributed import (
    ALICE,
    APPS,
    TIMING,
    WorkerProcess,
    is_finished,
    kill_worker_mid_job,
    poll,
    web_app,
)

pytestmark = pytest.mark.slow


def _env(store_url: str, **extra: str) -> dict[str, str]:
    return {"ASYNC_ACCEPT_STORE": store_url, "ASYNC_ACCEPT_EXECUTOR": "store", **TIMING, **extra}


def _open_store(url: str) -> Any:
    from async_accept.stores import resolve_store

    return resolve_store(url)


@dataclass
class Site:
    """uvicorn (ASGI app) and gunicorn (WSGI app) accepting into one PostgreSQL
    schema, and two workers running that schema's jobs."""

    url: str
    asgi: Server
    wsgi: Server
    workers: list[WorkerProcess]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Two web servers and two workers on one database, for the tests of this module."""
    url, schema = postgres_schema_url(require_postgres())
    logs = tmp_path_factory.mktemp("store-queue")
    env = _env(url)
    store = _open_store(url)  # creates the schema before the processes race to
    asgi = uvicorn(APPS["asgi"], base_env(**env), logs / "uvicorn.log")
    wsgi = gunicorn(APPS["wsgi"], base_env(**env), logs / "gunicorn.log")
    workers = [
        WorkerProcess(APPS["asgi"], env, logs / f"worker-{i}.log", "--concurrency", "4")
        for i in range(2)
    ]
    try:
        asgi.start()
        wsgi.start()
        for w in workers:
            w.start(store)
        yield Site(url, asgi, wsgi, workers)
    finally:
        for w in workers:
            w.stop()
        asgi.stop()
        wsgi.stop()
        store.close()
        drop_postgres_schema(schema)


def test_jobs_accepted_by_either_server_run_once_in_the_workers(site: Site) -> None:
    """40 jobs accepted through uvicorn and gunicorn: each runs once, in a worker, and
    either server answers it; both workers take a share."""
    locs: list[tuple[Server, Server, str, bytes]] = []
    for i in range(40):
        accept_on, answer_on = (site.asgi, site.wsgi) if i % 2 else (site.wsgi, site.asgi)
        body = f"job-{i}".encode()
        r = httpx.post(accept_on.base + "/slow", content=body, headers=ALICE, timeout=10)
        assert r.status_code == 202, r.text
        locs.append((accept_on, answer_on, r.headers["location"], body))
    for _, answer_on, loc, body in locs:
        done = poll(answer_on.base, loc, is_finished, timeout=30)
        assert done.status_code == 303, done.text
        result = httpx.get(answer_on.base + done.headers["location"], headers=ALICE)
        assert result.json()["body"] == body.decode()
    bodies = {body for _, _, _, body in locs}
    store = _open_store(site.url)
    try:
        ours = [
            job
            for job in store.list_jobs(None, 1000, None)
            # A completed job's request is deleted; the contract app echoes it in the result.
            if (res := store.get_result(job.id)) is not None
            and json.loads(res.body)["body"].encode() in bodies
        ]
    finally:
        store.close()
    assert len(ours) == 40 and all(j.attempts == 1 for j in ours)
    ran_in = {(j.worker_id or "").split(":")[1] for j in ours}
    pids = {str(w.pid) for w in site.workers}
    assert ran_in <= pids
    assert len(ran_in) == 2, f"only {ran_in} of {pids} ran jobs"


def test_a_job_starts_within_milliseconds_not_a_poll_interval(site: Site) -> None:
    """Woken by NOTIFY: accept to result takes far less than the fallback poll."""
    took = []
    for _ in range(10):
        started = time.monotonic()
        r = httpx.post(site.asgi.base + "/slow", content=b"quick", headers=ALICE, timeout=10)
        assert r.status_code == 202
        deadline = time.monotonic() + 10
        while httpx.get(site.asgi.base + r.headers["location"], headers=ALICE).status_code != 303:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        took.append(time.monotonic() - started)
    took.sort()
    assert took[len(took) // 2] < FALLBACK_POLL / 5, took


# -- kill -9 of a worker mid-job ----------------------------------------------------------------


@pytest.mark.parametrize("door", ["asgi", "wsgi"])
def test_worker_killed_mid_job_fails_it_worker_lost(door: str, tmp_path: Path) -> None:
    """kill -9 of the worker running a job: the job turns failed/worker-lost within bound."""
    url, schema = postgres_schema_url(require_postgres())
    env = _env(url)
    store = _open_store(url)
    worker = WorkerProcess(APPS[door], env, tmp_path / "worker.log")
    try:
        kill_worker_mid_job(worker, store, door, env)
    finally:
        worker.kill()
        store.close()
        drop_postgres_schema(schema)


# -- the same worker on SQLite and Redis (polling) -----------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_store_worker_polls_stores_without_a_signal(kind: str, tmp_path: Path) -> None:
    """On a SQLite file (two workers) or Redis the worker polls, and every job runs once."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        extra: dict[str, str] = {}
    else:
        from tests.services import require_redis

        url = require_redis()
        extra = {"ASYNC_ACCEPT_REDIS_NAMESPACE": f"queue-{uuid.uuid4().hex[:10]}"}
    env = _env(url, **extra)
    with web_app("asgi", env) as web:
        store = web.store
        workers = [
            WorkerProcess(APPS["wsgi"], env, tmp_path / f"w{i}.log", "--concurrency", "2")
            for i in range(2 if kind == "sqlite" else 1)
        ]
        try:
            for w in workers:
                w.start(store)
            locs = [web.accept("/slow", content=f"p{i}".encode()) for i in range(8)]
            for loc in locs:
                done = web.wait(loc, lambda r: r.status_code == 303, timeout=20)
                assert done.status_code == 303
            jobs = store.list_jobs(None, 100, None)
            assert len(jobs) == 8 and all(j.attempts == 1 for j in jobs)
        finally:
            for w in workers:
                w.stop()
            if kind == "redis":
                from tests.services import wipe_redis_namespace

                wipe_redis_namespace(url, extra["ASYNC_ACCEPT_REDIS_NAMESPACE"])


# -- in process ---------------------------------------------------------------------------------


def test_store_executor_needs_a_shared_store() -> None:
    """executor='store' with the memory store is a ConfigurationError naming shared stores."""
    with pytest.raises(ConfigurationError, match="store"):
        web = web_app("asgi", {"ASYNC_ACCEPT_STORE": "memory://", "ASYNC_ACCEPT_EXECUTOR": "store"})
        with web:
            pass


def test_store_executor_resolves_by_name_and_refuses_submits_when_stopped() -> None:
    """'store' names the StoreExecutor; submit before start raises ExecutorError."""
    executor = resolve_executor("store?notify=0", "wsgi")
    assert isinstance(executor, StoreExecutor) and executor.notify is False
    assert executor.out_of_process and executor.supports == {"asgi", "wsgi"}
    with pytest.raises(ExecutorError):
        executor.submit("job")
    assert executor.flush(0.1) is True


def test_store_worker_polls_fast_without_a_listener_and_slowly_with_one() -> None:
    """The poll interval defaults to POLL_INTERVAL, or FALLBACK_POLL with LISTEN/NOTIFY."""

    class Plain:
        def list_jobs(self, *a: Any) -> list[Any]:
            return []

    class Listening(Plain):
        def listener(self) -> Any:
            raise AssertionError("not started here")

    assert StoreWorker(print, Plain()).poll_interval == POLL_INTERVAL  # type: ignore[arg-type]
    assert StoreWorker(print, Listening()).poll_interval == FALLBACK_POLL  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        StoreWorker(print, Plain(), concurrency=0)  # type: ignore[arg-type]
