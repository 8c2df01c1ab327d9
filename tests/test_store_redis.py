"""The Redis store beyond the shared contract: its asyncio twin, races between
threads and processes, key TTLs, and behaviour while Redis is down."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

redis = pytest.importorskip("redis")

from async_accept.errors import ConfigurationError, StoreError  # noqa: E402
from async_accept.job import (  # noqa: E402
    CapturedRequest,
    CapturedResponse,
    Job,
    JobStatus,
    new_job_id,
)
from async_accept.stores import Store, as_async, resolve_store  # noqa: E402
from async_accept.stores.redis import AsyncRedisStore, RedisStore  # noqa: E402
from tests.services import free_port, require_redis, wipe_redis_namespace  # noqa: E402

pytestmark = pytest.mark.redis

NOW = 1_000_000.0
REQUEST = CapturedRequest(
    "POST",
    "/render",
    b"pages=3",
    [(b"content-type", b"application/octet-stream"), (b"x-caf\xe9", b"\xff")],
    b"\x00\x01binary\xff\xfe body",
    root_path="/app",
)
RESPONSE = CapturedResponse(201, [(b"location", b"/things/1")], b"\x89PNG\r\n\x1a\n\x00")


def make_job(now: float = NOW, ttl: float = 3600.0, **kw: Any) -> Job:
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "status": JobStatus.QUEUED,
        "owner": "owner-hmac",
        "created_at": now,
        "updated_at": now,
        "expires_at": now + ttl,
        "deadline_at": now + 60.0,
        "sla": 30.0,
    }
    fields.update(kw)
    return Job(**fields)


wipe = wipe_redis_namespace


@pytest.fixture
def url() -> str:
    return require_redis()


@pytest.fixture
def store(url: str) -> Iterator[RedisStore]:
    namespace = "test-" + uuid.uuid4().hex
    s = RedisStore.from_url(url, namespace=namespace)
    yield s
    s.close()
    wipe(url, namespace)


@pytest.fixture
def raw(url: str) -> Iterator[Any]:
    """A plain client for looking at the keys the store wrote."""
    client = redis.Redis.from_url(url)
    yield client
    client.close()


# -- layout and fields -------------------------------------------------------------------


def test_every_job_field_and_binary_bodies_round_trip(store: RedisStore) -> None:
    """Every Job attribute, and request/response bodies byte for byte, come back unchanged."""
    job = make_job(
        route="POST /render",
        idempotency_key="owner|POST|/render|k",
        fingerprint="f" * 64,
        meta={"webhook": "https://example.test/hook", "n": [1, 2.5, None]},
        percent=0.1 + 0.2,
        message="",
        eta=1e-7,
    )
    stored, created = store.create(job, REQUEST)
    assert created and stored == job
    assert store.get(job.id, NOW) == job
    assert store.get_request(job.id) == REQUEST
    assert store.get_result(job.id) is None

    store.claim(job.id, "w", NOW + 1)
    done = store.finish(
        job.id, "w", NOW + 2, JobStatus.FAILED, RESPONSE, {"type": "x", "status": 500}, "/loc"
    )
    assert done is not None
    assert done.error == {"type": "x", "status": 500}
    assert (done.result_status, done.result_location, done.percent) == (201, "/loc", job.percent)
    assert store.get(job.id, NOW + 3) == done
    assert store.get_result(job.id) == RESPONSE


def test_a_requeued_job_can_be_dispatched_again_at_once(store: RedisStore) -> None:
    """A requeue clears the dispatch mark (the claim used it up): the job's re-send goes out."""
    job = make_job()
    store.create(job, REQUEST)
    assert store.mark_dispatched([job.id], NOW, NOW - 60) == [job.id]
    assert store.claim(job.id, "w", NOW + 1) is not None
    assert store.requeue(job.id, "w", NOW + 2) is not None
    assert store.mark_dispatched([job.id], NOW + 2, NOW + 2 - 60) == [job.id]


def test_keys_get_a_redis_ttl_at_expires_at(store: RedisStore, raw: Any) -> None:
    """The job hash and its idempotency key expire in Redis at the job's expires_at."""
    now = time.time()
    job = make_job(now=now, ttl=600.0, idempotency_key="ttl-key")
    store.create(job, REQUEST)
    job_ttl = raw.pttl(f"{store.namespace}:job:{job.id}")
    idem_ttl = raw.pttl(f"{store.namespace}:idem:ttl-key")
    assert 590_000 < job_ttl <= 600_000
    assert 590_000 < idem_ttl <= 600_000
    assert raw.get(f"{store.namespace}:idem:ttl-key") == job.id.encode()


def test_ttl_is_never_shorter_than_the_jobs_lifetime(store: RedisStore, raw: Any) -> None:
    """A caller clock behind the server's (here: far in the past) never makes Redis drop a
    job its caller still sees alive: the TTL is at least expires_at - created_at."""
    job = make_job(now=1000.0, ttl=300.0)
    store.create(job, REQUEST)
    assert 290_000 < raw.pttl(f"{store.namespace}:job:{job.id}") <= 300_000
    assert store.get(job.id, 1000.0 + 299) is not None


def test_get_is_one_short_call_that_never_reads_bodies(store: RedisStore, raw: Any) -> None:
    """get() is one round trip with a few arguments, and its reply holds no body."""
    job = make_job()
    store.create(job, CapturedRequest("POST", "/big", body=b"x" * 1_000_000))
    sent: list[tuple[Any, ...]] = []
    replies: list[Any] = []
    real = store._client.execute_command

    def spy(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        reply = real(*args, **kwargs)
        replies.append(reply)
        return reply

    store._client.execute_command = spy  # type: ignore[method-assign]
    try:
        assert store.get(job.id, NOW) == job
    finally:
        del store._client.execute_command
    assert len(sent) == 1
    assert sent[0][0] == "EVALSHA" and len(sent[0]) <= 5
    assert sum(len(v) for v in replies[0] if isinstance(v, bytes)) < 10_000


def test_expired_jobs_vanish_and_purge_removes_every_key(store: RedisStore, raw: Any) -> None:
    """Past expires_at a job is invisible to every CAS; purge_expired deletes its hash,
    index entries and idempotency key, and nothing else."""
    old = make_job(ttl=10.0, idempotency_key="old")
    young = make_job(ttl=1000.0)
    store.create(old, REQUEST)
    store.create(young, REQUEST)
    late = NOW + 10.0
    assert store.get(old.id, late) is None
    assert store.claim(old.id, "w", late) is None
    assert store.cancel(old.id, late) == (None, False)
    assert store.fail(old.id, {JobStatus.QUEUED}, late, {"type": "x"}) is None
    assert store.purge_expired(late) == 1
    assert store.purge_expired(late) == 0
    ns = store.namespace
    assert raw.exists(f"{ns}:job:{old.id}", f"{ns}:idem:old") == 0
    assert [j.id for j in store.list_jobs()] == [young.id]
    assert raw.zcard(f"{ns}:expiry") == 1
    assert store.count_by_status()[JobStatus.QUEUED] == 1


def test_purge_goes_through_more_than_one_batch(store: RedisStore) -> None:
    """purge_expired deletes every expired job, however many (batches of 500 per script)."""
    for _ in range(1203):
        store.create(make_job(ttl=1.0), CapturedRequest("GET", "/"))
    assert store.purge_expired(NOW + 1) == 1203
    assert store.count_by_status() == dict.fromkeys(JobStatus, 0)


def test_jobs_redis_expired_drop_out_of_the_indexes(store: RedisStore, raw: Any) -> None:
    """When Redis itself dropped a job hash (its TTL fired), lists, counts and purges skip
    and clean the leftover index entries."""
    gone, kept = make_job(ttl=5.0), make_job(ttl=5.0)
    store.create(gone, REQUEST)
    store.create(kept, REQUEST)
    raw.delete(f"{store.namespace}:job:{gone.id}")  # what the Redis TTL does
    assert [j.id for j in store.list_jobs(JobStatus.QUEUED)] == [kept.id]
    assert store.count_by_status()[JobStatus.QUEUED] == 1
    assert store.delete(gone.id) is False
    assert store.purge_expired(NOW + 5) == 1


def test_list_keeps_creation_order_for_equal_timestamps(store: RedisStore) -> None:
    """Jobs created at the same instant are listed in creation order, across states."""
    jobs = [make_job() for _ in range(12)]
    for job in jobs:
        store.create(job, REQUEST)
    store.claim(jobs[3].id, "w", NOW)
    store.cancel(jobs[7].id, NOW)
    assert [j.id for j in store.list_jobs()] == [j.id for j in jobs]
    assert [j.id for j in store.list_jobs(limit=5)] == [j.id for j in jobs[:5]]
    assert [j.id for j in store.list_jobs(JobStatus.QUEUED, limit=3)] == [
        jobs[0].id,
        jobs[1].id,
        jobs[2].id,
    ]
    assert store.list_jobs(limit=0) == []


def test_created_before_is_exclusive(store: RedisStore) -> None:
    """list_jobs(created_before=t) lists jobs created strictly before t."""
    a, b = make_job(now=NOW), make_job(now=NOW + 1)
    store.create(a, REQUEST)
    store.create(b, REQUEST)
    assert [j.id for j in store.list_jobs(created_before=NOW + 1)] == [a.id]
    assert [j.id for j in store.list_jobs(JobStatus.QUEUED, created_before=NOW + 1.5)] == [
        a.id,
        b.id,
    ]


def test_repeated_create_of_the_same_job_is_a_no_op(store: RedisStore) -> None:
    """A create that redis-py retried after a lost reply records the job once."""
    job = make_job()
    assert store.create(job, REQUEST) == (job, True)
    assert store.create(job, REQUEST) == (job, True)
    assert store.count_by_status()[JobStatus.QUEUED] == 1


def test_idempotency_key_of_an_expired_or_deleted_job_is_free(store: RedisStore) -> None:
    """An idempotency key only holds while its job lives: after expiry or delete, a new
    create with it records a new job."""
    first = make_job(ttl=10.0, idempotency_key="k")
    store.create(first, REQUEST)
    second = make_job(now=NOW + 10.0, idempotency_key="k")
    assert store.create(second, REQUEST) == (second, True)
    assert store.delete(second.id) is True
    third = make_job(now=NOW + 11.0, idempotency_key="k")
    assert store.create(third, REQUEST) == (third, True)


def test_namespaces_do_not_see_each_other(store: RedisStore, url: str) -> None:
    """Two stores on one Redis with different namespaces share nothing."""
    other = RedisStore.from_url(url, namespace="test-" + uuid.uuid4().hex)
    try:
        job = make_job(idempotency_key="same")
        store.create(job, REQUEST)
        twin = make_job(idempotency_key="same")
        assert other.create(twin, REQUEST) == (twin, True)
        assert other.get(job.id, NOW) is None
        assert other.count_by_status()[JobStatus.QUEUED] == 1
    finally:
        other.close()
        wipe(url, other.namespace)


def test_finish_refuses_a_non_terminal_status(store: RedisStore) -> None:
    """finish() with queued/processing is a programming error, not a silent write."""
    job = make_job()
    store.create(job, REQUEST)
    store.claim(job.id, "w", NOW)
    with pytest.raises(ValueError, match="terminal"):
        store.finish(job.id, "w", NOW, JobStatus.QUEUED)


# -- construction ------------------------------------------------------------------------


def test_resolve_store_builds_a_shared_blocking_store(url: str) -> None:
    """'redis://...' resolves to a RedisStore that says it is shared and blocking, whose
    async face is its native twin."""
    s = resolve_store(url)
    try:
        assert isinstance(s, RedisStore)
        assert s.shared and s.blocking
        assert as_async(s) is s.aio
    finally:
        s.close()


def test_from_url_refuses_bad_urls_and_decoding_clients() -> None:
    """Wrong schemes and decode_responses=True fail at construction."""
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisStore.from_url("http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="bytes"):
        RedisStore.from_url("redis://127.0.0.1:6379/15", decode_responses=True)
    with pytest.raises(ConfigurationError, match="bytes"):
        RedisStore(redis.Redis(decode_responses=True))
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisStore.from_url("redis://127.0.0.1:6379/15", namespace="")


def test_rediss_url_uses_tls_on_both_clients() -> None:
    """rediss:// gives TLS connections to the sync client and to the asyncio twin
    (checked without connecting)."""
    s = RedisStore.from_url("rediss://127.0.0.1:6380/0")
    try:
        assert s._client.connection_pool.connection_class is redis.connection.SSLConnection
        twin = s.aio._factory()
        assert twin.connection_pool.connection_class is redis.asyncio.SSLConnection
    finally:
        s.close()


def test_store_from_clients_derives_or_uses_the_async_client(url: str) -> None:
    """RedisStore(client) derives an asyncio twin on the same server; async_client=
    is used as given."""
    namespace = "test-" + uuid.uuid4().hex
    s = RedisStore(redis.Redis.from_url(url), namespace=namespace)
    given = redis.asyncio.Redis.from_url(url)
    s2 = RedisStore(redis.Redis.from_url(url), async_client=given, namespace=namespace)
    try:
        job = make_job()
        s.create(job, REQUEST)

        async def main() -> None:
            assert await s.aio.get(job.id, NOW) == job
            assert await s2.aio.get(job.id, NOW) == job
            assert s2.aio._loops[asyncio.get_running_loop()].client is given

        asyncio.run(main())
    finally:
        s.close()
        s2.close()
        wipe(url, namespace)


def test_missing_redis_package_names_the_extra() -> None:
    """Without redis-py, importing the store raises MissingDependencyError with the pip line."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None
        from async_accept.errors import MissingDependencyError
        try:
            import async_accept.stores.redis
        except MissingDependencyError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'async-accept[redis]'" in out.stdout


def test_closed_store_refuses_calls(url: str) -> None:
    """After close() every call raises StoreError."""
    s = RedisStore.from_url(url, namespace="test-" + uuid.uuid4().hex)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError):
        s.get("x", NOW)
    with pytest.raises(StoreError):
        asyncio.run(s.aio.get("x", NOW))


# -- the asyncio twin --------------------------------------------------------------------


def test_async_twin_implements_every_method(store: RedisStore) -> None:
    """store.aio runs every store method natively on redis.asyncio, with the same results."""
    a = store.aio

    async def main() -> None:
        job = make_job(idempotency_key="ak")
        assert await a.create(job, REQUEST) == (job, True)
        dup = make_job(idempotency_key="ak")
        assert await a.create(dup, REQUEST) == (job, False)
        assert await a.get(job.id, NOW) == job
        assert await a.get(job.id, job.expires_at) is None
        assert await a.get_request(job.id) == REQUEST
        assert await a.get_result(job.id) is None

        claimed = await a.claim(job.id, "w1", NOW + 1)
        assert claimed is not None
        assert (claimed.status, claimed.worker_id, claimed.attempts) == (
            JobStatus.PROCESSING,
            "w1",
            1,
        )
        assert claimed.started_at == claimed.heartbeat_at == NOW + 1
        assert await a.claim(job.id, "w2", NOW + 1) is None

        beat = await a.heartbeat(job.id, "w1", NOW + 2)
        assert beat is not None and beat.heartbeat_at == NOW + 2
        assert await a.heartbeat(job.id, "w2", NOW + 2) is None

        prog = await a.set_progress(job.id, "w1", NOW + 3, 40.0, "rendering", 12.5)
        assert prog is not None
        assert (prog.percent, prog.message, prog.eta) == (40.0, "rendering", 12.5)
        assert prog.progress_at == prog.updated_at == NOW + 3
        assert await a.set_progress(job.id, "w2", NOW + 3, 1.0, None, None) is None

        assert await a.requeue(job.id, "w2", NOW + 4) is None
        back = await a.requeue(job.id, "w1", NOW + 4)
        assert back is not None and back.status is JobStatus.QUEUED
        again = await a.claim(job.id, "w3", NOW + 5)
        assert again is not None and again.attempts == 2

        after, changed = await a.cancel(job.id, NOW + 6)
        assert changed and after is not None
        assert after.status is JobStatus.PROCESSING and after.cancel_requested
        assert await a.cancel(job.id, NOW + 6) == (after, False)

        done = await a.finish(job.id, "w3", NOW + 7, JobStatus.COMPLETED, RESPONSE)
        assert done is not None
        assert (done.status, done.percent, done.result_status) == (JobStatus.COMPLETED, 100.0, 201)
        assert done.eta is None and done.error is None
        assert await a.finish(job.id, "w3", NOW + 7, JobStatus.FAILED) is None
        assert await a.get_result(job.id) == RESPONSE
        _, changed = await a.cancel(job.id, NOW + 8)
        assert not changed

        queued = make_job(now=NOW + 1)
        await a.create(queued, REQUEST)
        failed = await a.fail(queued.id, {JobStatus.PROCESSING}, NOW + 9, {"type": "x"})
        assert failed is None
        failed = await a.fail(queued.id, {JobStatus.QUEUED}, NOW + 9, {"type": "x"})
        assert failed is not None and failed.status is JobStatus.FAILED
        assert failed.error == {"type": "x"} and failed.finished_at == NOW + 9

        gone = make_job(now=NOW + 2, ttl=5.0)
        await a.create(gone, REQUEST)
        canceled, changed = await a.cancel(gone.id, NOW + 3)
        assert changed and canceled is not None and canceled.status is JobStatus.CANCELED
        assert await a.cancel("unknown", NOW) == (None, False)

        assert [j.id for j in await a.list_jobs()] == [job.id, queued.id, gone.id]
        assert [j.id for j in await a.list_jobs(JobStatus.FAILED)] == [queued.id]
        assert await a.list_jobs(created_before=NOW) == []
        counts = await a.count_by_status()
        assert counts == {
            JobStatus.QUEUED: 0,
            JobStatus.PROCESSING: 0,
            JobStatus.COMPLETED: 1,
            JobStatus.FAILED: 1,
            JobStatus.CANCELED: 1,
        }
        assert await a.purge_expired(NOW + 7) == 1

        assert await a.retry(job.id, NOW + 10) is None  # completed, not failed
        retried = await a.retry(queued.id, NOW + 10)
        assert retried is not None and retried.status is JobStatus.QUEUED
        assert retried.error is None and retried.finished_at is None
        assert retried.deadline_at == NOW + 10 + 2 * queued.sla
        ids = [queued.id, job.id, "unknown"]
        assert await a.mark_dispatched(ids, NOW + 10, NOW + 5) == [queued.id]
        assert await a.mark_dispatched(ids, NOW + 11, NOW + 5) == []
        assert await a.mark_dispatched(ids, NOW + 12, NOW + 11) == [queued.id]
        assert await a.mark_dispatched([], NOW, NOW) == []
        assert await a.delete(queued.id) is True
        assert await a.delete(queued.id) is False
        assert [j.id for j in await a.list_jobs()] == [job.id]

        await a.worker_heartbeat("proc-1", NOW, {"pid": 1})
        await a.worker_heartbeat("proc-2", NOW + 1, {"pid": 2})
        await a.worker_heartbeat("proc-1", NOW + 2, {"pid": 11})
        assert await a.list_workers(NOW + 2) == [
            {"pid": 11, "id": "proc-1", "last_heartbeat": NOW + 2},
            {"pid": 2, "id": "proc-2", "last_heartbeat": NOW + 1},
        ]
        await a.aclose()

    asyncio.run(main())


def test_async_twin_works_across_event_loops_and_closes_cleanly(store: RedisStore) -> None:
    """Each event loop gets its own connections, closed when that loop shuts down, so
    repeated asyncio.run() and AnyIO portals work and leave no unclosed sockets."""
    from anyio.from_thread import start_blocking_portal

    job = make_job()
    store.create(job, REQUEST)

    async def read() -> Job | None:
        return await store.aio.get(job.id, NOW)

    assert asyncio.run(read()) == job
    assert asyncio.run(read()) == job
    with start_blocking_portal() as portal:
        assert portal.call(read) == job
        assert len(store.aio._loops) == 1
    assert store.aio._loops == {}
    gc.collect()  # an unclosed transport would warn here, and warnings are errors


def test_close_closes_the_twin_of_a_loop_still_running(url: str) -> None:
    """close() from another thread closes the asyncio connections of a loop that is
    still running, on that loop."""
    from anyio.from_thread import start_blocking_portal

    s = RedisStore.from_url(url, namespace="test-" + uuid.uuid4().hex)
    with start_blocking_portal() as portal:
        portal.call(s.aio.count_by_status)
        lc = next(iter(s.aio._loops.values()))
        s.close()
        assert s.aio._loops == {}
        pool = lc.client.connection_pool
        assert not any(c.is_connected for c in pool._available_connections)


def test_close_from_a_coroutine_closes_that_loops_twin(url: str) -> None:
    """close() called inside a coroutine closes that loop's asyncio connections without
    blocking it."""
    s = RedisStore.from_url(url, namespace="test-" + uuid.uuid4().hex)

    async def main() -> None:
        await s.aio.count_by_status()
        pool = s.aio._loops[asyncio.get_running_loop()].client.connection_pool
        s.close()
        for _ in range(100):
            if not s.aio._loops:
                break
            await asyncio.sleep(0.01)
        assert s.aio._loops == {}
        assert not any(c.is_connected for c in pool._available_connections)

    asyncio.run(main())


def test_async_calls_run_concurrently_on_one_loop(store: RedisStore) -> None:
    """Many awaited calls at once on one loop all succeed (a pool, not one connection)."""
    jobs = [make_job() for _ in range(50)]

    async def main() -> list[tuple[Job, bool]]:
        results = await asyncio.gather(*(store.aio.create(j, REQUEST) for j in jobs))
        claims = await asyncio.gather(*(store.aio.claim(j.id, "w", NOW) for j in jobs))
        assert all(c is not None for c in claims)
        return results

    assert all(created for _, created in asyncio.run(main()))
    assert store.count_by_status()[JobStatus.PROCESSING] == 50


@pytest.mark.parametrize("derived", [False, True], ids=["from_url", "from_client"])
def test_more_concurrent_calls_than_pooled_connections_wait_instead_of_failing(
    url: str, raw: Any, derived: bool
) -> None:
    """A burst larger than the asyncio pool queues for a connection: no MaxConnectionsError."""
    namespace = "test-" + uuid.uuid4().hex
    name = "pool-" + uuid.uuid4().hex[:8]
    if derived:
        client = redis.Redis.from_url(url, max_connections=3, client_name=name)
        s = RedisStore(client, namespace=namespace)
    else:
        s = RedisStore.from_url(url, namespace=namespace, max_connections=3, client_name=name)
    jobs = [make_job() for _ in range(120)]

    async def main() -> tuple[int, int]:
        results = await asyncio.gather(*(s.aio.create(j, REQUEST) for j in jobs))
        opened = sum(1 for c in raw.client_list() if c.get("name") == name)
        return sum(created for _, created in results), opened

    try:
        created, opened = asyncio.run(main())
        assert created == 120
        assert 1 <= opened <= 3
        assert s.count_by_status()[JobStatus.QUEUED] == 120
    finally:
        s.close()
        wipe(url, namespace)


# -- races -------------------------------------------------------------------------------


def test_16_threads_racing_one_idempotency_key_create_one_job(store: RedisStore) -> None:
    """16 threads creating with the same idempotency key: exactly one creates, every
    other one gets that same job back."""
    barrier = threading.Barrier(16)
    results: list[tuple[Job, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer() -> None:
        job = make_job(idempotency_key="race")
        try:
            barrier.wait(timeout=10)
            out = store.create(job, REQUEST)
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(out)

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(results) == 16
    winners = [job for job, created in results if created]
    assert len(winners) == 1
    assert {job.id for job, _ in results} == {winners[0].id}
    assert store.count_by_status()[JobStatus.QUEUED] == 1


CLAIMER = """
import json, sys, time
from async_accept.stores.redis import RedisStore
url, namespace, worker, start, *ids = sys.argv[1:]
store = RedisStore.from_url(url, namespace=namespace)
while time.time() < float(start):
    time.sleep(0.001)
won = [i for i in ids if store.claim(i, worker, 1_000_000.0) is not None]
store.close()
print(json.dumps(won))
"""


def test_two_processes_racing_to_claim_50_jobs_claim_each_once(store: RedisStore, url: str) -> None:
    """Two OS processes claiming the same 50 jobs at the same moment: each job is
    claimed by exactly one of them, once."""
    jobs = [make_job() for _ in range(50)]
    for job in jobs:
        store.create(job, REQUEST)
    ids = [j.id for j in jobs]
    start = time.time() + 2.0  # both interpreters are up by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, store.namespace, worker, str(start), *ids],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in ("proc-a", "proc-b")
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    won_a, won_b = (set(json.loads(out)) for out, _ in outs)
    assert not won_a & won_b
    assert won_a | won_b == set(ids)
    for job_id in ids:
        job = store.get(job_id, NOW)
        assert job is not None and job.attempts == 1
        assert job.worker_id == ("proc-a" if job_id in won_a else "proc-b")


# -- Redis down --------------------------------------------------------------------------


class ThrowawayRedis:
    """A redis-server process of our own, on a free port and a unix socket."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.socket = tmp / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                str(self.socket),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    if not redis_server_available():
        pytest.skip("redis-server is not on PATH")
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def redis_server_available() -> bool:
    try:
        subprocess.run(["redis-server", "--version"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def every_call(job: Job) -> list[tuple[str, Callable[[Any], Any]]]:
    """(name, f(store_face)) for every method of the store contract."""
    return [
        ("create", lambda s: s.create(job, REQUEST)),
        ("get", lambda s: s.get(job.id, NOW)),
        ("get_request", lambda s: s.get_request(job.id)),
        ("get_result", lambda s: s.get_result(job.id)),
        ("claim", lambda s: s.claim(job.id, "w", NOW)),
        ("claim_with_request", lambda s: s.claim_with_request(job.id, "w", NOW)),
        ("heartbeat", lambda s: s.heartbeat(job.id, "w", NOW)),
        ("set_progress", lambda s: s.set_progress(job.id, "w", NOW, 5.0, "m", 1.0)),
        ("finish", lambda s: s.finish(job.id, "w", NOW, JobStatus.COMPLETED, RESPONSE)),
        ("fail", lambda s: s.fail(job.id, {JobStatus.QUEUED}, NOW, {"type": "x"})),
        ("cancel", lambda s: s.cancel(job.id, NOW)),
        ("requeue", lambda s: s.requeue(job.id, "w", NOW)),
        ("list_jobs", lambda s: s.list_jobs()),
        ("list_owned", lambda s: s.list_owned(job.owner, NOW)),
        ("count_by_status", lambda s: s.count_by_status()),
        ("purge_expired", lambda s: s.purge_expired(NOW)),
        ("delete", lambda s: s.delete(job.id)),
        ("mark_dispatched", lambda s: s.mark_dispatched([job.id], NOW, NOW)),
        ("retry", lambda s: s.retry(job.id, NOW)),
        ("worker_heartbeat", lambda s: s.worker_heartbeat("w", NOW, {})),
        ("list_workers", lambda s: s.list_workers(NOW)),
    ]


def test_redis_down_raises_store_error_then_recovers(throwaway: ThrowawayRedis) -> None:
    """While Redis is down every call, sync and async, raises StoreError within the socket
    timeouts; once it is back the same store object works again (scripts reloaded)."""
    s = RedisStore.from_url(throwaway.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        assert s.create(make_job(), REQUEST)[1]
        asyncio.run(s.aio.count_by_status())  # the twin has pooled connections too

        throwaway.kill()
        job = make_job()
        contract = {n for n in dir(Store) if not n.startswith("_")} - {"close"}
        assert {name for name, _ in every_call(job)} == contract
        for name, call in every_call(job):
            started = time.monotonic()
            with pytest.raises(StoreError, match="Redis"):
                call(s)
            assert time.monotonic() - started < 3, name

        async def async_calls_fail() -> None:
            for name, call in every_call(job):
                started = time.monotonic()
                with pytest.raises(StoreError, match="Redis"):
                    await call(s.aio)
                assert time.monotonic() - started < 3, name

        asyncio.run(async_calls_fail())

        throwaway.start()  # same port, empty: no data, no cached scripts
        assert s.create(job, REQUEST) == (job, True)
        claimed = s.claim(job.id, "w", NOW)
        assert claimed is not None and claimed.status is JobStatus.PROCESSING

        async def async_works_again() -> None:
            assert (await s.aio.get(job.id, NOW)) == claimed
            assert await s.aio.heartbeat(job.id, "w", NOW + 1) is not None

        asyncio.run(async_works_again())
    finally:
        s.close()


def test_redis_that_stops_answering_times_out_into_store_error(
    throwaway: ThrowawayRedis,
) -> None:
    """A Redis that hangs (process stopped) yields StoreError after socket_timeout,
    not a hung request."""
    import signal

    s = RedisStore.from_url(throwaway.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        s.count_by_status()
        assert throwaway.proc is not None
        throwaway.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="Timeout"):
                s.get("x", NOW)
            assert time.monotonic() - started < 2
        finally:
            throwaway.proc.send_signal(signal.SIGCONT)
        assert s.get("x", NOW) is None
    finally:
        s.close()


def test_unix_socket_url(throwaway: ThrowawayRedis) -> None:
    """unix:// URLs work for the sync store and its asyncio twin."""
    s = RedisStore.from_url(f"unix://{throwaway.socket}?db=0")
    try:
        job = make_job()
        assert s.create(job, REQUEST) == (job, True)
        assert asyncio.run(s.aio.get(job.id, NOW)) == job
    finally:
        s.close()


# -- pipelining of concurrent awaited calls ----------------------------------------------


def record_pipelines(s: RedisStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the pipelines the asyncio twin sends from now on."""
    sizes: list[int] = []
    original = AsyncRedisStore._send_pipeline

    async def recorder(self: AsyncRedisStore, lc: Any, batch: list[Any]) -> None:
        sizes.append(len(batch))
        await original(self, lc, batch)

    monkeypatch.setattr(AsyncRedisStore, "_send_pipeline", recorder)
    return sizes


def test_concurrent_awaited_calls_share_pipelines(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 calls at once on one loop: most ride in pipelines, each gets its own answer."""
    sizes = record_pipelines(store, monkeypatch)
    jobs = [make_job() for _ in range(150)]

    async def main() -> None:
        created = await asyncio.gather(*(store.aio.create(j, REQUEST) for j in jobs))
        assert all(c for _, c in created)
        got = await asyncio.gather(*(store.aio.get(j.id, NOW) for j in jobs))
        assert [g.id if g else None for g in got] == [j.id for j in jobs]

    asyncio.run(main())
    assert sizes and max(sizes) > 1
    assert sum(sizes) > 150


def test_one_failing_call_in_a_pipeline_fails_alone(store: RedisStore, raw: Any) -> None:
    """A call Redis refuses (a key of the wrong type) raises StoreError; the rest answer."""
    jobs = [make_job() for _ in range(40)]
    for j in jobs:
        store.create(j, REQUEST)
    broken = jobs[17]
    raw.delete(store._layout.job_key(broken.id))
    raw.set(store._layout.job_key(broken.id), b"not a hash")

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(store.aio.get(j.id, NOW) for j in jobs), return_exceptions=True
        )

    results = asyncio.run(main())
    assert isinstance(results[17], StoreError)
    assert all(isinstance(r, Job) for i, r in enumerate(results) if i != 17)


def test_pipelines_reload_scripts_redis_forgot(throwaway: ThrowawayRedis) -> None:
    """After SCRIPT FLUSH, pipelined script calls load the scripts again and succeed."""
    s = RedisStore.from_url(throwaway.url)
    jobs = [make_job() for _ in range(60)]
    try:

        async def main() -> None:
            first = await asyncio.gather(*(s.aio.create(j, REQUEST) for j in jobs[:30]))
            assert all(c for _, c in first)
            flusher = redis.Redis.from_url(throwaway.url)
            flusher.script_flush()
            flusher.close()
            again = await asyncio.gather(*(s.aio.create(j, REQUEST) for j in jobs[30:]))
            assert all(c for _, c in again)

        asyncio.run(main())
        assert s.count_by_status()[JobStatus.QUEUED] == 60
    finally:
        s.close()


def test_redis_down_fails_every_waiting_call_quickly(throwaway: ThrowawayRedis) -> None:
    """Redis gone: a burst of awaited calls each raises StoreError, none hangs."""
    s = RedisStore.from_url(throwaway.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        asyncio.run(s.aio.count_by_status())
        throwaway.kill()

        async def main() -> list[Any]:
            calls = [s.aio.get(new_job_id(), NOW) for _ in range(50)]
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)

        started = time.monotonic()
        results = asyncio.run(main())
        assert all(isinstance(r, StoreError) for r in results)
        assert time.monotonic() - started < 10
    finally:
        s.close()


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(message=TEXT, route=TEXT, meta=st.dictionaries(TEXT, TEXT, max_size=4))
def test_any_text_in_job_fields_round_trips_through_create(
    message: str, route: str, meta: dict[str, str]
) -> None:
    """Unicode, quotes, NULs and control characters in fields survive the JSON hand-off."""
    url = require_redis()
    namespace = "test-" + uuid.uuid4().hex
    s = RedisStore.from_url(url, namespace=namespace)
    try:
        job = make_job(message=message, route=route, meta=meta)
        assert s.create(job, REQUEST) == (job, True)
        assert s.get(job.id, NOW) == job

        async def via_twin() -> Job | None:
            other = make_job(message=message, route=route, meta=meta)
            await s.aio.create(other, REQUEST)
            return await s.aio.get(other.id, NOW)

        got = asyncio.run(via_twin())
        assert got is not None and (got.message, got.route, got.meta) == (message, route, meta)
    finally:
        s.close()
        wipe(url, namespace)


def test_an_owners_index_expires_with_its_longest_lived_job() -> None:
    """The per-owner sorted set gets the TTL of the owner's latest-expiring job, never less."""
    url = require_redis()
    ns = f"owner-ttl-{time.time_ns()}"
    store = RedisStore.from_url(url, namespace=ns)
    client = redis.Redis.from_url(url)
    try:
        now = time.time()
        store.create(make_job(now, 500, owner="o"), REQUEST)
        first = client.pttl(f"{ns}:owner:o")
        assert 400_000 < first <= 500_000
        store.create(make_job(now, 100, owner="o"), REQUEST)
        assert client.pttl(f"{ns}:owner:o") > 400_000  # a shorter-lived job doesn't shorten it
        store.create(make_job(now, 900, owner="o"), REQUEST)
        assert client.pttl(f"{ns}:owner:o") > 800_000
    finally:
        client.close()
        store.close()
        wipe(url, ns)
