"""Schema 5: the PostgreSQL store wakes its store workers (``NOTIFY`` on
"<schema>.queued") only for jobs one of them will claim. A job handed to an
in-process executor (asyncio, thread) or a broker (Celery, RQ) notes it in its
meta and queues silently: its commit skips PostgreSQL's global notify lock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from async_accept.job import EXECUTOR_META, JobStatus
from tests.services import postgres_schema_at, postgres_schema_versions
from tests.test_postgres_queued_signal import QUIET, WAKE
from tests.test_store_contract import REQUEST, make_job

SECRET = "notify-executor-secret-0123456789abcdef"


def _work(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


@pytest.fixture
def store(pg_store: Any) -> Any:
    """The PostgreSQL store on a fresh schema (conftest's pg_store)."""
    return pg_store


@pytest.fixture
def listening(store: Any) -> Iterator[Any]:
    """A worker's LISTEN connection on the store's queued-job channel, quiet so far."""
    listener = store.listener()
    try:
        assert listener.wait(QUIET) is False
        yield listener
    finally:
        listener.close()


def _accept(url: str, executor: str) -> tuple[Any, str]:
    """POST a marked route through the WSGI middleware; the middleware and the job id."""
    from async_accept.wsgi import AsyncAcceptMiddleware

    mw = AsyncAcceptMiddleware(
        _work, secret_key=SECRET, store=url, executor=executor, routes={"POST /work": {}}
    )
    with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as client:
        r = client.post("/work", content=b"{}")
    assert r.status_code == 202, r.text
    return mw, r.json()["id"]


def _close(mw: Any) -> None:
    mw.runtime.shutdown()
    mw.store.close()


def test_an_accept_with_the_thread_executor_sends_no_notify(
    pg_url: tuple[str, str], store: Any, listening: Any
) -> None:
    """executor="thread": the job notes its executor, and neither its create nor its
    run (claim, finish) wakes a listening store worker."""
    mw, job_id = _accept(pg_url[0], "thread")
    try:
        deadline = time.monotonic() + WAKE
        while (job := store.get(job_id, time.time())) is None or not job.terminal:
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        assert job.status is JobStatus.COMPLETED and job.meta[EXECUTOR_META] == "thread"
        assert listening.wait(QUIET) is False
    finally:
        _close(mw)


def test_an_accept_with_the_store_executor_wakes_a_listening_worker(
    pg_url: tuple[str, str], store: Any, listening: Any
) -> None:
    """executor="store": the accept's own transaction wakes the worker, and the queued
    job says which executor it waits for."""
    mw, job_id = _accept(pg_url[0], "store")
    try:
        assert listening.wait(WAKE) is True
        job = store.get(job_id, time.time())
        assert job is not None and job.status is JobStatus.QUEUED
        assert job.meta[EXECUTOR_META] == "store"
    finally:
        _close(mw)


@pytest.mark.parametrize(
    ("executor", "wakes"),
    [("asyncio", False), ("thread", False), ("celery", False), ("store", True), (None, True)],
    ids=["asyncio", "thread", "celery", "store", "not-noted"],
)
def test_create_retry_and_requeue_wake_workers_only_for_store_jobs(
    store: Any, listening: Any, executor: str | None, wakes: bool
) -> None:
    """A create, a retry and a requeue NOTIFY for a job of the store executor (or one
    that notes no executor, as written before schema 5), and for no other."""
    now = time.time()
    meta = {} if executor is None else {EXECUTOR_META: executor}
    job = make_job(now, meta=meta)
    assert store.create(job, REQUEST)[1] is True
    assert listening.wait(WAKE if wakes else QUIET) is wakes
    assert store.claim(job.id, "w1", now) is not None
    assert store.fail(job.id, [JobStatus.PROCESSING], now, {"type": "x"}) is not None
    assert listening.wait(QUIET) is False  # a claim and a failure queue nothing
    assert store.retry(job.id, now) is not None
    assert listening.wait(WAKE if wakes else QUIET) is wakes
    assert store.claim(job.id, "w2", now) is not None
    requeued = store.requeue(job.id, "w2", now)
    assert requeued is not None and requeued.status is JobStatus.QUEUED
    assert listening.wait(WAKE if wakes else QUIET) is wakes


def test_a_batch_wakes_the_workers_when_it_holds_a_store_job(store: Any, listening: Any) -> None:
    """One statement inserting in-process jobs only sends no NOTIFY; one inserting them
    with a store job among them sends one."""
    from async_accept.stores.postgres.batch import create_many

    def batch(*kinds: str) -> None:
        now = time.time()
        creates = [(make_job(now, meta={EXECUTOR_META: kind}), REQUEST) for kind in kinds]
        with store.pool().connection() as conn:
            outcomes = create_many(conn, store._sql, creates)
        assert [o[1] for o in outcomes] == [True] * len(kinds)  # type: ignore[index]

    batch("asyncio", "thread", "rq")
    assert listening.wait(QUIET) is False
    batch("asyncio", "thread", "store", "asyncio")
    assert listening.wait(WAKE) is True


def test_a_version_4_schema_is_upgraded_to_wake_workers_only_for_store_jobs(
    pg_url: tuple[str, str],
) -> None:
    """A database at schema 4 is upgraded in place on first use: its queued job stays
    and still wakes the workers when requeued; a new in-process job queues silently,
    a new store job wakes them."""
    from async_accept.stores.postgres import SCHEMA_VERSION, PostgresStore

    url, schema = pg_url
    base = url.split("?")[0]
    now = time.time()
    postgres_schema_at(schema, 4, now, base)
    store = PostgresStore.from_url(url)
    listener = store.listener()
    try:
        assert store.queued_ids(now, 10) == ["old"]
        assert listener.wait(QUIET) is False
        store.create(make_job(now, meta={EXECUTOR_META: "asyncio"}), REQUEST)
        assert listener.wait(QUIET) is False
        store.create(make_job(now, meta={EXECUTOR_META: "store"}), REQUEST)
        assert listener.wait(WAKE) is True
        assert store.claim("old", "w1", now) is not None
        assert store.requeue("old", "w1", now) is not None
        assert listener.wait(WAKE) is True
    finally:
        listener.close()
        store.close()
    assert SCHEMA_VERSION == 5
    assert postgres_schema_versions(schema, base) == list(range(1, SCHEMA_VERSION + 1))


def test_cli_db_sql_since_4_prints_the_store_job_wake_up(capsys: Any) -> None:
    """`async-accept db sql --since 4` prints migration 5 alone: the new function body
    and the requeue trigger dropped and created with its executor condition."""
    from async_accept.cli import main

    assert main(["db", "sql", "--schema", "jobs", "--since", "4"]) == 0
    out = capsys.readouterr().out
    assert 'CREATE OR REPLACE FUNCTION "jobs".notify_queued()' in out
    assert "COALESCE(meta->>'executor', 'store') = 'store'" in out
    assert 'DROP TRIGGER jobs_requeued ON "jobs".jobs;' in out
    assert "COALESCE(NEW.meta->>'executor', 'store') = 'store'" in out
    assert "VALUES (5)" in out and "VALUES (4)" not in out
    assert "CREATE TRIGGER jobs_queued" not in out
