"""The PostgreSQL store's workers are woken by the database (schema 4): a trigger
NOTIFYs in the transaction that queues a job (create, batch of creates, retry,
requeue), so the store executor sends no signal of its own."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from async_accept.executors.store import StoreExecutor
from async_accept.job import Job, JobStatus
from tests.services import postgres_schema_at, postgres_schema_versions
from tests.test_store_contract import REQUEST, make_job

#: Generous bound on a wake-up that should come at once.
WAKE = 10.0
#: How long "no wake-up" is watched.
QUIET = 0.5


@pytest.fixture
def store(pg_store: Any) -> Any:
    """The PostgreSQL store on a fresh schema (conftest's pg_store)."""
    return pg_store


def _drain(listener: Any) -> None:
    while listener.wait(0.05):
        pass


def test_a_create_wakes_a_listener_without_any_signal_sent(store: Any) -> None:
    """store.create alone (no notify_queued) wakes a LISTENing worker."""
    listener = store.listener()
    try:
        assert listener.wait(QUIET) is False  # listening, nothing queued yet
        now = time.time()
        store.create(make_job(now), REQUEST)
        assert listener.wait(WAKE) is True
    finally:
        listener.close()


def test_a_batch_of_concurrent_creates_wakes_the_listener(store: Any) -> None:
    """Creates racing from 16 threads (group commit) all land and wake the listener."""
    listener = store.listener()
    try:
        assert listener.wait(QUIET) is False
        now = time.time()
        jobs = [make_job(now) for _ in range(16)]
        barrier = threading.Barrier(16)

        def create(job: Job) -> None:
            barrier.wait()
            store.create(job, REQUEST)

        threads = [threading.Thread(target=create, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert listener.wait(WAKE) is True
        assert len(store.queued_ids(time.time(), 100)) == 16
    finally:
        listener.close()


def test_retry_and_requeue_wake_the_listener_and_a_claim_does_not(store: Any) -> None:
    """A job queued again (retry of a failed one, requeue of a running one) wakes the
    workers; changes that queue nothing (claim, fail) don't."""
    listener = store.listener()
    try:
        assert listener.wait(QUIET) is False  # listening from here on
        now = time.time()
        job = make_job(now)
        store.create(job, REQUEST)
        assert listener.wait(WAKE) is True
        _drain(listener)
        assert store.claim(job.id, "w1", now) is not None
        assert store.fail(job.id, [JobStatus.PROCESSING], now, {"type": "x"}) is not None
        assert listener.wait(QUIET) is False
        assert store.retry(job.id, now) is not None
        assert listener.wait(WAKE) is True
        _drain(listener)
        assert store.claim(job.id, "w2", now) is not None
        assert listener.wait(QUIET) is False
        requeued = store.requeue(job.id, "w2", now)
        assert requeued is not None and requeued.status is JobStatus.QUEUED
        assert listener.wait(WAKE) is True
    finally:
        listener.close()


def test_the_store_executor_sends_no_signal_of_its_own_on_postgres(store: Any) -> None:
    """With a store that announces queued jobs, the store executor starts no signalling
    thread, whatever notify says; submits and flush still work."""
    for notify in (True, False):
        executor = StoreExecutor(notify=notify)
        executor.start(SimpleNamespace(store=store), None)
        try:
            assert executor._thread is None
            executor.submit("some-job")
            assert executor.flush(0.1) is True
        finally:
            executor.shutdown(1.0)


def test_a_version_3_schema_is_upgraded_to_wake_workers_from_the_database(
    pg_url: tuple[str, str],
) -> None:
    """A database at schema 3 gets the queued-job triggers on first use: its queued job
    stays, and the next create wakes a listener."""
    import psycopg

    from async_accept.stores.postgres import SCHEMA_VERSION, PostgresStore

    url, schema = pg_url
    base = url.split("?")[0]
    now = time.time()
    postgres_schema_at(schema, 3, now, base)
    store = PostgresStore.from_url(url)
    listener = store.listener()
    try:
        assert store.queued_ids(now, 10) == ["old"]
        assert listener.wait(QUIET) is False
        store.create(make_job(now + 1), REQUEST)
        assert listener.wait(WAKE) is True
    finally:
        listener.close()
        store.close()
    assert postgres_schema_versions(schema, base) == list(range(1, SCHEMA_VERSION + 1))
    with psycopg.connect(base, autocommit=True) as conn:
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND NOT t.tgisinternal ORDER BY tgname",
            (schema,),
        ).fetchall()
        assert [t for (t,) in triggers] == ["jobs_changed", "jobs_queued", "jobs_requeued"]


def test_cli_db_sql_prints_the_queued_job_triggers(capsys: Any) -> None:
    """`async-accept db sql --since 3` prints migration 4: the function and both triggers."""
    from async_accept.cli import main

    assert main(["db", "sql", "--schema", "jobs", "--since", "3"]) == 0
    out = capsys.readouterr().out
    assert 'CREATE FUNCTION "jobs".notify_queued()' in out
    assert "CREATE TRIGGER jobs_queued AFTER INSERT" in out
    assert "CREATE TRIGGER jobs_requeued AFTER UPDATE" in out
    assert "VALUES (4)" in out and "VALUES (3)" not in out
