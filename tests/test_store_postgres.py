"""The PostgreSQL store beyond the shared contract: URL options, the versioned
schema, the missing-package error, and what the database itself guarantees
(processes racing one idempotency key, the queue's wake-up)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from async_accept.errors import ConfigurationError, MissingDependencyError
from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.stores import resolve_store

REQUEST = CapturedRequest("POST", "/render", b"", [], b"body")


def _job(now: float, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "status": JobStatus.QUEUED,
        "owner": "o",
        "created_at": now,
        "updated_at": now,
        "expires_at": now + 3600,
        "deadline_at": now + 60,
        "sla": 30.0,
    }
    fields.update(kw)
    return Job(**fields)


def test_url_options_are_ours_and_the_rest_goes_to_libpq() -> None:
    """schema/pool options are parsed and stripped; other query options reach libpq."""
    from async_accept.stores.postgres import parse_url

    s = parse_url(
        "postgres://u:secret@db.example:5433/app?schema=jobs&pool_max=20&pool_min=2"
        "&pool_timeout=1.5&sslmode=require"
    )
    assert (s.schema, s.pool_min, s.pool_max, s.pool_timeout) == ("jobs", 2, 20, 1.5)
    assert s.conninfo.startswith("postgresql://u:secret@db.example:5433/app?")
    assert "sslmode=require" in s.conninfo and "schema" not in s.conninfo
    assert "connect_timeout=5" in s.conninfo
    assert "secret" not in s.redacted() and s.channel == "jobs.queued"


@pytest.mark.parametrize(
    "query",
    ["schema=bad-name", "schema=x;drop", "pool_max=0", "pool_min=5&pool_max=2", "migrate=maybe"],
)
def test_bad_url_options_are_configuration_errors(query: str) -> None:
    """A bad option fails at construction with a message naming it."""
    with pytest.raises(ConfigurationError):
        resolve_store(f"postgresql://postgres@127.0.0.1/test?{query}")


def test_missing_psycopg_names_the_pip_line() -> None:
    """Without psycopg, the store URL raises MissingDependencyError with the extra to install."""
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "from async_accept.stores import resolve_store\n"
        "from async_accept.errors import MissingDependencyError\n"
        "try:\n"
        "    resolve_store('postgresql://postgres@127.0.0.1/test')\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'async-accept[postgres]'" in out.stdout
    assert issubclass(MissingDependencyError, ConfigurationError)


def test_resolve_store_understands_both_schemes(pg_url: tuple[str, str]) -> None:
    """postgresql:// and postgres:// both give a PostgresStore on the named schema."""
    from async_accept.stores.postgres import PostgresOutbox, PostgresStore

    url, schema = pg_url
    for spec in (url, url.replace("postgresql://", "postgres://", 1)):
        store = resolve_store(spec)
        try:
            assert isinstance(store, PostgresStore) and store.schema == schema
            assert isinstance(store.default_outbox(), PostgresOutbox)
        finally:
            store.close()


def test_schema_is_versioned_and_a_newer_one_is_refused(pg_url: tuple[str, str]) -> None:
    """First use creates the tables at SCHEMA_VERSION; a schema from a newer release is refused."""
    import psycopg

    from async_accept.stores.postgres import SCHEMA_VERSION, PostgresStore, upgrade

    url, schema = pg_url
    PostgresStore.from_url(url).close()
    base = url.split("?")[0]
    with psycopg.connect(base, autocommit=True) as conn:
        assert upgrade(conn, schema) == (SCHEMA_VERSION, SCHEMA_VERSION)  # nothing to do
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)', (99,))
    with pytest.raises(ConfigurationError, match="newer async_accept"):
        PostgresStore.from_url(url)


def test_migrate_false_leaves_the_schema_to_the_dba(pg_url: tuple[str, str]) -> None:
    """With ?migrate=false a missing schema is a ConfigurationError naming `db upgrade`;
    after applying the printed DDL the store works."""
    import psycopg

    from async_accept.stores.postgres import PostgresStore, ddl

    url, schema = pg_url
    with pytest.raises(ConfigurationError, match="db upgrade"):
        PostgresStore.from_url(url + "&migrate=false").list_jobs()
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        conn.execute(ddl(schema))
    store = PostgresStore.from_url(url + "&migrate=false")
    try:
        assert store.count_by_status()[JobStatus.QUEUED] == 0
    finally:
        store.close()


def _create_with_key(url: str, key: str, now: float, barrier: Any, out: Any) -> None:
    """Child process body: create one job with ``key`` once the others are ready."""
    from async_accept.stores.postgres import PostgresStore

    store = PostgresStore.from_url(url)
    try:
        barrier.wait(timeout=60)
        job, created = store.create(_job(now, idempotency_key=key), REQUEST)
    finally:
        store.close()
    out.put((job.id, created))


def test_processes_racing_one_idempotency_key_make_one_job(pg_url: tuple[str, str]) -> None:
    """Six processes creating with one key at once: one creates, all get that job."""
    url, _ = pg_url
    from async_accept.stores.postgres import PostgresStore

    PostgresStore.from_url(url).close()  # the schema exists before the race
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(6), ctx.Queue()
    now = time.time()
    procs = [
        ctx.Process(target=_create_with_key, args=(url, "k", now, barrier, out)) for _ in range(6)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * 6
    assert sum(created for _, created in results) == 1
    assert len({job_id for job_id, _ in results}) == 1


def test_notify_queued_wakes_a_listener(pg_url: tuple[str, str]) -> None:
    """A listener waits until notify_queued() is called, and times out without one."""
    from async_accept.stores.postgres import PostgresStore

    url, _ = pg_url
    store = PostgresStore.from_url(url)
    listener = store.listener()
    try:
        assert listener.wait(0.2) is False
        timer = threading.Timer(0.2, store.notify_queued)
        timer.start()
        started = time.monotonic()
        assert listener.wait(10) is True
        assert time.monotonic() - started < 5
        timer.join()
    finally:
        listener.close()
        store.close()


def test_queued_ids_are_the_claimable_jobs_oldest_first(pg_url: tuple[str, str]) -> None:
    """queued_ids() lists queued, live, not cancel-requested jobs in creation order."""
    from async_accept.stores.postgres import PostgresStore

    url, _ = pg_url
    store = PostgresStore.from_url(url)
    try:
        now = time.time()
        a = store.create(_job(now), REQUEST)[0]
        b = store.create(_job(now + 1), REQUEST)[0]
        taken = store.create(_job(now), REQUEST)[0]
        store.claim(taken.id, "w", now)
        store.create(_job(now, cancel_requested=True), REQUEST)
        store.create(_job(now - 20, expires_at=now - 1), REQUEST)
        assert store.queued_ids(now, 10) == [a.id, b.id]
        assert store.queued_ids(now, 1) == [a.id]
    finally:
        store.close()


def test_cli_db_sql_prints_the_ddl_of_the_named_schema(capsys: Any) -> None:
    """`async-accept db sql --schema x` prints one transaction creating x's tables, versioned."""
    from async_accept.cli import main

    assert main(["db", "sql", "--schema", "jobs_x"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-- async_accept schema 'jobs_x'")
    assert "BEGIN;" in out and out.rstrip().endswith("COMMIT;")
    assert 'CREATE TABLE "jobs_x".jobs' in out
    assert 'INSERT INTO "jobs_x".schema_version (version) VALUES (1);' in out


def test_cli_db_upgrade_creates_then_reports_up_to_date(
    pg_url: tuple[str, str], capsys: Any
) -> None:
    """`async-accept db upgrade` creates the tables once; run again it has nothing to do."""
    from async_accept.cli import main
    from async_accept.stores.postgres import SCHEMA_VERSION

    url, _ = pg_url
    assert main(["db", "upgrade", "--store", url]) == 0
    assert f"upgraded from version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--store", url]) == 0
    assert "up to date" in capsys.readouterr().out
    store = resolve_store(url + "&migrate=false")
    try:
        assert store.list_jobs() == []
    finally:
        store.close()


def test_cli_db_upgrade_of_an_unreachable_database_fails_cleanly(capsys: Any) -> None:
    """A database that does not answer is exit status 1 with the store's message."""
    from async_accept.cli import main
    from tests.services import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    assert main(["db", "upgrade", "--store", url]) == 1
    assert "the store failed" in capsys.readouterr().err


@pytest.mark.parametrize("in_ci", [True, False])
def test_missing_postgres_fails_in_ci_and_skips_elsewhere_with_the_start_command(
    in_ci: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """require_postgres() with nothing on 5432: a failure in CI, a skip elsewhere, both
    naming how to start the server."""
    from tests import services

    monkeypatch.setattr(services, "_port_open", lambda host, port: False)
    monkeypatch.setattr(services, "IN_CI", in_ci)
    expected = pytest.fail.Exception if in_ci else pytest.skip.Exception
    with pytest.raises(expected, match="pg_ctlcluster <version> main start"):
        services.require_postgres()


def test_requeue_of_a_cancel_requested_job_drops_its_request(pg_url: tuple[str, str]) -> None:
    """A job handed back after its cancel was requested ends canceled, and like every
    job that can't run again it loses its captured request; a plain requeue keeps it."""
    from async_accept.stores.postgres import PostgresStore

    url, _ = pg_url
    store = PostgresStore.from_url(url)
    try:
        now = time.time()
        kept = store.create(_job(now), REQUEST)[0]
        store.claim(kept.id, "w", now)
        again = store.requeue(kept.id, "w", now + 1)
        assert again is not None and again.status is JobStatus.QUEUED
        assert store.get_request(kept.id) == REQUEST
        gone = store.create(_job(now), REQUEST)[0]
        store.claim(gone.id, "w", now)
        store.cancel(gone.id, now + 1)
        ended = store.requeue(gone.id, "w", now + 2)
        assert ended is not None and ended.status is JobStatus.CANCELED
        assert store.get_request(gone.id) is None
    finally:
        store.close()


def test_change_signal_names_visible_changes_not_heartbeats(pg_url: tuple[str, str]) -> None:
    """The trigger announces a claim or progress of a job, never a bare heartbeat."""
    from async_accept.stores.postgres import PostgresStore

    url, _ = pg_url
    store = PostgresStore.from_url(url)
    signal = store.change_signal()
    wake = threading.Event()
    try:
        now = time.time()
        job = store.create(_job(now), REQUEST)[0]
        assert signal.changed([job.id], 0.1, wake) == [job.id]  # listening from now on
        store.claim(job.id, "w", now)
        assert set(signal.changed([job.id], 2.0, wake)) == {job.id}
        store.heartbeat(job.id, "w", now + 1)
        assert set(signal.changed([job.id], 0.3, wake)) == set()
        store.set_progress(job.id, "w", now + 2, 50.0, "half", None)
        assert set(signal.changed([job.id], 2.0, wake)) == {job.id}
    finally:
        signal.close()
        store.close()


def test_a_version_2_schema_is_upgraded_to_indexed_owner_lookups(pg_url: tuple[str, str]) -> None:
    """A database left at schema 2 (owner matched without an index) is brought to the
    current version on first use; its jobs are then listed by either owner hash, and
    the owner lookup is answered from the owner indexes."""
    import psycopg

    from async_accept.stores.base import OwnedQuery
    from async_accept.stores.postgres import SCHEMA_VERSION, PostgresStore, ddl
    from async_accept.stores.postgres.sql import Statements, owned_query

    url, schema = pg_url
    base = url.split("?")[0]
    now = time.time()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(ddl(schema, 0, 2))
        for i, owner in enumerate(["cred cookie", "cred", "other cookie", "other"]):
            conn.execute(
                f'INSERT INTO "{schema}".jobs (id, status, owner, created_at, updated_at, '
                "expires_at, deadline_at, sla) VALUES (%s, 'queued', %s, %s, %s, %s, %s, 1)",
                (f"job{i}", owner, now + i, now + i, now + 3600, now + 60),
            )
    store = PostgresStore.from_url(url)
    try:
        assert [j.id for j in store.list_owned("cred", now)] == ["job1", "job0"]
        assert [j.id for j in store.list_owned("cookie", now)] == ["job2", "job0"]
        later = OwnedQuery(limit=1, before=(now + 1, "job1"))
        assert [j.id for j in store.list_owned("cred", now, later)] == ["job0"]
    finally:
        store.close()
    with psycopg.connect(base, autocommit=True) as conn:
        versions = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))
        conn.execute("SET enable_seqscan = off")
        query, args = owned_query(Statements(schema), "cred", now, OwnedQuery(limit=20))
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, args).fetchall())
        assert "jobs_owner1_created" in plan and "jobs_owner2_created" in plan


def test_claim_with_request_is_one_statement_in_both_twins(
    pg_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's claim and the captured request it needs come back from one statement
    (one round trip), blocking and awaited; a claimed job whose request is gone comes
    back with None for it; a job not claimable, as None."""
    import asyncio

    from async_accept.stores.postgres import PostgresStore

    url, schema = pg_url
    store = PostgresStore.from_url(url)
    statements: list[str] = []
    rows, arows = store._rows, store.aio._rows

    def counted(query: str, args: Any, **kw: Any) -> Any:
        statements.append(query)
        return rows(query, args, **kw)

    async def acounted(query: str, args: Any, **kw: Any) -> Any:
        statements.append(query)
        return await arows(query, args, **kw)

    monkeypatch.setattr(store, "_rows", counted)
    monkeypatch.setattr(store.aio, "_rows", acounted)
    try:
        now = time.time()
        blocking, awaited, bare = (store.create(_job(now), REQUEST)[0] for _ in range(3))
        statements.clear()
        claimed = store.claim_with_request(blocking.id, "w", now)
        assert claimed is not None and claimed[0].status is JobStatus.PROCESSING
        assert claimed[0].worker_id == "w" and claimed[1] == REQUEST
        got = asyncio.run(store.aio.claim_with_request(awaited.id, "w", now))
        assert got is not None and got[0].attempts == 1 and got[1] == REQUEST
        assert len(statements) == 2
        assert store.claim_with_request(blocking.id, "w2", now) is None
        store._count(f'DELETE FROM "{schema}".job_bodies WHERE job_id = %s', (bare.id,))
        alone = store.claim_with_request(bare.id, "w", now)
        assert alone is not None and alone[0].id == bare.id and alone[1] is None
    finally:
        store.close()


def test_async_connections_wait_for_a_slot_only_up_to_pool_timeout(
    pg_url: tuple[str, str],
) -> None:
    """With every connection of a loop's pool in use, the next call waits pool_timeout
    and fails with PoolTimeout; once one is back, a call takes it at once."""
    import asyncio

    from async_accept.stores.postgres import parse_url
    from async_accept.stores.postgres.connection import AsyncConnections, PoolTimeout

    url, _ = pg_url
    settings = parse_url(url + "&pool_max=1&pool_timeout=0.2")

    async def main() -> None:
        pool = AsyncConnections(settings)
        try:
            async with pool.connection() as held:
                with pytest.raises(PoolTimeout, match="pool_max=1"):
                    async with pool.connection():
                        pass
                await held.execute("SELECT 1")
            async with pool.connection() as again:
                assert again is held  # the idle one, reused
        finally:
            await pool.close()

    asyncio.run(main())
