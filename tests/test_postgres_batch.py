"""The PostgreSQL store's group commit: creates racing in one process (threads on
the blocking store, tasks on its asyncio twin) go to the database together, and
each caller still gets its own answer: no lost or duplicated job, idempotency
keys settled per job even when they collide inside one batch, errors reaching
only the callers they belong to."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from async_accept.errors import StoreError
from async_accept.job import CapturedRequest, Job
from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres
from tests.test_store_postgres import _job as base_job

REQUEST = CapturedRequest("POST", "/render", b"", [], b"body")


@pytest.fixture
def store() -> Iterator[Any]:
    """A PostgreSQL store on a fresh schema, dropped after the test."""
    from async_accept.stores.postgres import PostgresStore

    url, schema = postgres_schema_url(require_postgres())
    s = PostgresStore.from_url(url)
    try:
        yield s
    finally:
        s.close()
        drop_postgres_schema(schema)


def _job(now: float, key: str | None = None, **kw: Any) -> Job:
    return base_job(now, idempotency_key=key, **kw)


def _sizes(store: Any, twin: bool) -> list[int]:
    """Record the size of every batch the store (or its asyncio twin) sends."""
    sizes: list[int] = []
    target = store.aio if twin else store
    send = target._create_many

    if twin:

        async def spy_async(creates: list[Any]) -> Any:
            sizes.append(len(creates))
            return await send(creates)

        target._create_many = spy_async
    else:

        def spy(creates: list[Any]) -> Any:
            sizes.append(len(creates))
            return send(creates)

        target._create_many = spy
    return sizes


def _check(store: Any, jobs: list[Job], answers: list[tuple[Job, bool]]) -> None:
    """Every keyless job created once; per key one job created and handed to all."""
    now = time.time()
    by_key: dict[str, set[str]] = {}
    created_keys: dict[str, int] = {}
    for job, (got, created) in zip(jobs, answers, strict=True):
        if job.idempotency_key is None:
            assert created and got.id == job.id
            continue
        by_key.setdefault(job.idempotency_key, set()).add(got.id)
        created_keys[job.idempotency_key] = created_keys.get(job.idempotency_key, 0) + created
    assert all(len(ids) == 1 for ids in by_key.values())
    assert all(n == 1 for n in created_keys.values())
    stored = store.list_jobs(limit=10_000)
    keyless = sum(j.idempotency_key is None for j in jobs)
    assert len(stored) == keyless + len(by_key)
    for key, ids in by_key.items():
        (job_id,) = ids
        got = store.get(job_id, now)
        assert got is not None and got.idempotency_key == key
        assert store.get_request(job_id) == REQUEST


def test_threads_racing_creates_lose_and_duplicate_nothing(store: Any) -> None:
    """16 threads x 25 creates, keys colliding across and within batches: every keyless
    job stored once, one job per key given to every caller, creates sent in batches."""
    sizes = _sizes(store, twin=False)
    now = time.time()
    per_thread = [
        [_job(now, key=f"k{(t * 25 + i) % 30}" if i % 2 else None) for i in range(25)]
        for t in range(16)
    ]
    answers: list[list[tuple[Job, bool]]] = [[] for _ in per_thread]
    barrier = threading.Barrier(len(per_thread))

    def run(t: int) -> None:
        barrier.wait()
        for job in per_thread[t]:
            answers[t].append(store.create(job, REQUEST))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(len(per_thread))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    jobs = [j for js in per_thread for j in js]
    _check(store, jobs, [a for ans in answers for a in ans])
    assert sum(sizes) == len(jobs)


def test_tasks_racing_creates_go_in_one_statement_each_with_its_own_answer(store: Any) -> None:
    """60 tasks creating at once on one loop: the first goes alone, the rest queue and
    go together; keys collide inside that batch and a repeated create of one job
    stays one job."""
    sizes = _sizes(store, twin=True)
    now = time.time()
    jobs = [_job(now, key=f"k{i % 7}" if i % 3 else None) for i in range(60)]
    jobs.append(jobs[1])  # the same create repeated in the batch: still one job

    async def main() -> list[tuple[Job, bool]]:
        return list(await asyncio.gather(*(store.aio.create(j, REQUEST) for j in jobs)))

    answers = asyncio.run(main())
    assert sizes == [1, len(jobs) - 1]
    assert answers[-1] == (jobs[1], True)
    _check(store, jobs[:-1], answers[:-1])


def test_a_bad_create_fails_alone_and_the_rest_of_its_batch_is_stored(store: Any) -> None:
    """A create the database refuses (a NOT NULL column without a value) fails with
    StoreError for its caller only; the others of its batch get their jobs."""
    now = time.time()
    jobs = [_job(now) for _ in range(6)]
    jobs[3] = _job(now, owner=None)

    async def main() -> list[Any]:
        calls = (store.aio.create(j, REQUEST) for j in jobs)
        return list(await asyncio.gather(*calls, return_exceptions=True))

    answers = asyncio.run(main())
    assert isinstance(answers[3], StoreError)
    for i, job in enumerate(jobs):
        if i != 3:
            assert answers[i] == (job, True)
    assert {j.id for j in store.list_jobs()} == {j.id for i, j in enumerate(jobs) if i != 3}


def test_a_key_held_by_an_expired_job_is_taken_over_inside_a_batch(store: Any) -> None:
    """A key whose holder expired (not purged yet) goes to the batch's first create of
    it; the batch's later creates with that key get the new job."""
    now = time.time()
    old = _job(now - 7200, key="k", expires_at=now - 1)
    assert store.create(old, REQUEST) == (old, True)
    jobs = [_job(now) for _ in range(2)] + [_job(now, key="k") for _ in range(3)]

    async def main() -> list[tuple[Job, bool]]:
        return list(await asyncio.gather(*(store.aio.create(j, REQUEST) for j in jobs)))

    answers = asyncio.run(main())
    assert answers[2] == (jobs[2], True)
    assert answers[3][0].id == answers[4][0].id == jobs[2].id
    assert not answers[3][1] and not answers[4][1]
    assert store.get(old.id, now - 7200) is None


def test_every_caller_of_a_failed_batch_gets_the_store_error(store: Any) -> None:
    """When the database can't be reached, every waiting caller gets a StoreError."""
    from async_accept.stores.postgres import PostgresStore

    url = "postgresql://postgres@127.0.0.1:1/test?schema=nowhere&pool_timeout=0.5"
    down = PostgresStore.from_url(url)
    now = time.time()

    async def main() -> list[Any]:
        calls = (down.aio.create(_job(now), REQUEST) for _ in range(5))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    try:
        answers = asyncio.run(main())
    finally:
        down.close()
    assert all(isinstance(a, StoreError) for a in answers)
