"""The SQLite store beyond the shared contract: the group commit of its awaitable face."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from async_accept.errors import StoreError
from async_accept.job import CapturedRequest, Job, JobStatus
from async_accept.stores import as_async
from async_accept.stores.sqlite import AsyncSQLiteStore, SQLiteStore
from tests.test_store_contract import make_job as contract_job

REQUEST = CapturedRequest("POST", "/work", b"", [(b"content-type", b"text/plain")], b"body")


def make_job(**kw: Any) -> Job:
    return contract_job(time.time(), **kw)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "jobs.db", timeout=0.2)
    yield s
    s.close()


def record_batches(store: SQLiteStore) -> list[int]:
    """Sizes of the multi-write transactions the store commits from now on."""
    sizes: list[int] = []
    original = store._run_together

    def recorder(conn: sqlite3.Connection, batch: list[Any]) -> None:
        sizes.append(len(batch))
        original(conn, batch)

    store._run_together = recorder  # type: ignore[method-assign]
    return sizes


def queue_together(store: SQLiteStore, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
    """Queue ``fns`` while the write lock is held, so they commit as one batch;
    the outcome of each (a value or the exception)."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        with store._write_lock:
            for fn in fns:
                future: asyncio.Future[Any] = loop.create_future()
                store._submit(fn, loop, future)
                futures.append(future)
        return await asyncio.gather(*futures, return_exceptions=True)

    return asyncio.run(main())


def test_the_awaitable_face_is_the_group_commit(store: SQLiteStore) -> None:
    """as_async() of a SQLite store is its own awaitable face, not a generic thread hop."""
    assert isinstance(as_async(store), AsyncSQLiteStore)
    assert as_async(store) is store.aio


def test_concurrent_awaited_creates_commit_together_and_all_land(store: SQLiteStore) -> None:
    """200 accepts at once on one loop share transactions, and every job is stored."""
    sizes = record_batches(store)
    jobs = [make_job() for _ in range(200)]

    async def main() -> list[tuple[Job, bool]]:
        return await asyncio.gather(*(store.aio.create(j, REQUEST) for j in jobs))

    results = asyncio.run(main())
    assert all(created for _, created in results)
    assert sizes and max(sizes) > 1
    assert store.count_by_status()[JobStatus.QUEUED] == 200
    assert all(store.get_request(j.id) == REQUEST for j in jobs[::20])


def test_a_failing_write_takes_back_only_its_own_changes(store: SQLiteStore) -> None:
    """In a batch, a write that raises is rolled back alone; the others commit."""
    first, last = make_job(), make_job()

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO workers (id, last_heartbeat) VALUES ('half', 1.0)")
        conn.execute("INSERT INTO workers (id, last_heartbeat) VALUES ('half', 2.0)")  # dup key

    sizes = record_batches(store)
    outcomes = queue_together(
        store,
        [store._op_create(first, REQUEST), half_then_fail, store._op_create(last, REQUEST)],
    )
    assert sizes == [3]
    assert outcomes[0] == (first, True) and outcomes[2] == (last, True)
    assert isinstance(outcomes[1], StoreError)
    assert isinstance(outcomes[1].__cause__, sqlite3.IntegrityError)
    assert store.get(first.id, time.time()) is not None
    assert store.get(last.id, time.time()) is not None
    assert store.list_workers(time.time()) == []


def test_a_batch_that_cannot_take_the_write_lock_fails_every_write(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """Another process holding the lock past the timeout: each write gets a StoreError,
    nothing is half-written, and writes succeed again once the lock is free."""
    jobs = [make_job() for _ in range(3)]
    other = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        outcomes = queue_together(store, [store._op_create(j, REQUEST) for j in jobs])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(o, StoreError) for o in outcomes)
    assert store.count_by_status()[JobStatus.QUEUED] == 0

    async def again() -> tuple[Job, bool]:
        return await store.aio.create(jobs[0], REQUEST)

    assert asyncio.run(again())[1] is True


def test_blocking_writers_and_awaited_writers_share_the_queue(store: SQLiteStore) -> None:
    """Threads calling create() and a loop awaiting aio.create() at once: all land once."""
    threaded = [make_job() for _ in range(80)]
    awaited = [make_job() for _ in range(80)]
    barrier = threading.Barrier(5)
    errors: list[BaseException] = []

    def writer(chunk: list[Job]) -> None:
        barrier.wait()
        try:
            for j in chunk:
                assert store.create(j, REQUEST)[1]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(threaded[i::4],)) for i in range(4)]
    for t in threads:
        t.start()

    async def main() -> list[tuple[Job, bool]]:
        barrier.wait()
        return await asyncio.gather(*(store.aio.create(j, REQUEST) for j in awaited))

    results = asyncio.run(main())
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert all(created for _, created in results)
    assert store.count_by_status()[JobStatus.QUEUED] == 160


def test_idempotency_key_raced_inside_one_batch_has_one_winner(store: SQLiteStore) -> None:
    """Two creates with one idempotency key in one transaction: one job, one holder."""
    a, b = make_job(idempotency_key="k1"), make_job(idempotency_key="k1")
    outcomes = queue_together(store, [store._op_create(a, REQUEST), store._op_create(b, REQUEST)])
    assert outcomes[0] == (a, True)
    holder, created = outcomes[1]
    assert created is False and holder.id == a.id
    assert store.count_by_status()[JobStatus.QUEUED] == 1


def test_awaited_writes_after_close_fail_cleanly(tmp_path: Path) -> None:
    """A closed store answers awaited writes with StoreError, it does not hang."""
    s = SQLiteStore(tmp_path / "jobs.db")
    s.close()

    async def main() -> None:
        await asyncio.wait_for(s.aio.create(make_job(), REQUEST), 5)

    with pytest.raises(StoreError):
        asyncio.run(main())


def test_a_method_replaced_at_run_time_is_honoured(store: SQLiteStore) -> None:
    """Instrumentation that replaces store.create is called by the awaitable face too."""
    calls: list[str] = []
    original = store.create

    def create(job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        calls.append(job.id)
        return original(job, request)

    store.create = create  # type: ignore[method-assign]
    job = make_job()

    async def main() -> tuple[Job, bool]:
        return await store.aio.create(job, REQUEST)

    assert asyncio.run(main())[1] is True
    assert calls == [job.id]


def test_concurrent_awaited_reads_share_thread_hops(store: SQLiteStore) -> None:
    """200 status reads at once take far fewer I/O-thread hops, each gets its own job."""
    jobs = [make_job() for _ in range(200)]
    for j in jobs:
        store.create(j, REQUEST)
    hops: list[int] = []
    original = store._flush_reads

    def counting() -> None:
        hops.append(1)
        original()

    store._flush_reads = counting  # type: ignore[method-assign]

    async def main() -> None:
        now = time.time()
        got = await asyncio.gather(*(store.aio.get(j.id, now) for j in jobs))
        assert [g.id if g else None for g in got] == [j.id for j in jobs]
        requests = await asyncio.gather(*(store.aio.get_request(j.id) for j in jobs[:50]))
        assert requests == [REQUEST] * 50
        assert await store.aio.get_result(jobs[0].id) is None

    asyncio.run(main())
    assert 1 <= len(hops) < 100


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_under_the_store_fails_every_call(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's file deleted or replaced while in use: reads and writes raise StoreError
    (a 503), never answer from an empty new file (a 404 for an accepted job)."""
    from async_accept.stores.sqlite import connection

    monkeypatch.setattr(connection, "FILE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "jobs.db"
    store = SQLiteStore(path, timeout=0.2)
    try:
        job, _ = store.create(make_job(), REQUEST)
        assert store.get(job.id, time.time()) is not None
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"jobs.db{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            sqlite3.connect(path).close()
        with pytest.raises(StoreError, match=how):
            store.get(job.id, time.time())
        with pytest.raises(StoreError, match=how):
            store.create(make_job(), REQUEST)
        with pytest.raises(StoreError):
            asyncio.run(as_async(store).get(job.id, time.time()))
    finally:
        store.close()
