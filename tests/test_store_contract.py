"""The store contract: one suite that every job store passes (memory, SQLite, Redis).

The ``store`` fixture is parametrized over the stores; every test here runs
against each of them. Tests below the contract pin what only the SQLite store
promises: several OS processes sharing one file, locks surfacing as
StoreError, and the schema version.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import multiprocessing
import os
import queue
import random
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from async_accept.errors import ConfigurationError, StoreError
from async_accept.job import (
    CapturedRequest,
    CapturedResponse,
    Job,
    JobStatus,
    new_job_id,
)
from async_accept.stores import AsyncStore, Store, as_async
from async_accept.stores.base import WORKER_RETENTION, OwnedQuery
from async_accept.stores.memory import MemoryStore
from async_accept.stores.sqlite import SCHEMA_VERSION, SQLiteStore

TTL = 3600.0

REQUEST = CapturedRequest(
    "POST",
    "/render/caf\u00e9",
    b"pages=3&x=%FF",
    [
        (b"content-type", b"application/octet-stream"),
        (b"x-binary", bytes(range(32, 256))),
        (b"x-repeated", b"1"),
        (b"x-repeated", b"2"),
    ],
    bytes(range(256)) * 4,
    root_path="/app",
    raw_path=b"/render/caf%C3%A9",
    scheme="https",
    http_version="2",
    server=("api.example", 443),
    client=("203.0.113.9", 51234),
)
RESPONSE = CapturedResponse(
    201,
    [(b"location", b"/things/1"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
    b"\x89PNG\r\n\x1a\n\x00\xff" * 100,
)
ERROR = {"type": "urn:async-accept:problem:handler-error", "title": "Boom", "status": 500}
MIB = random.Random(7).randbytes(1 << 20)


def _redis_store() -> Iterator[Store]:
    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    if importlib.util.find_spec("async_accept.stores.redis") is None:
        pytest.skip("redis store not written yet")
    from async_accept.stores.redis import RedisStore

    namespace = "test-" + uuid.uuid4().hex
    store = RedisStore.from_url(url, namespace=namespace)
    try:
        yield store
    finally:
        store.close()
        wipe_redis_namespace(url, namespace)


def _postgres_store() -> Iterator[Store]:
    from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres

    url, schema = postgres_schema_url(require_postgres())
    from async_accept.stores.postgres import PostgresStore

    store = PostgresStore.from_url(url)
    try:
        yield store
    finally:
        store.close()
        drop_postgres_schema(schema)


_AWAITED = frozenset(
    name
    for name in dir(AsyncStore)
    if not name.startswith("_") and asyncio.iscoroutinefunction(getattr(AsyncStore, name))
) | {"mark_dispatched"}


class AwaitedStore:
    """A store driven through its awaitable face (``as_async``) from a loop in
    another thread, so every contract test also pins what the ASGI side sees."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.aio = as_async(store)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __getattr__(self, name: str) -> Any:
        if name not in _AWAITED:
            return getattr(self.inner, name)
        method = getattr(self.aio, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(method(*args, **kwargs), self.loop)
            return future.result(timeout=30)

        return call

    def stop(self) -> None:
        aclose = getattr(self.aio, "aclose", None)
        if aclose is not None:  # Redis, PostgreSQL: their asyncio clients belong to this loop
            asyncio.run_coroutine_threadsafe(aclose(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def _memory_store(tmp_path: Path) -> Iterator[Store]:
    store = MemoryStore()
    try:
        yield store
    finally:
        store.close()


#: The store contract runs against every entry. A new backend is one more entry: a
#: function of the test's tmp_path that yields a fresh, empty store and closes it
#: afterwards. ``sqlite-without-returning`` is the SQLite store as it runs on
#: SQLite < 3.35 (no ``UPDATE ... RETURNING``).
BACKENDS: dict[str, Callable[[Path], Iterator[Store]]] = {
    "memory": _memory_store,
    "sqlite": lambda tmp_path: _sqlite_store(tmp_path, returning=True),
    "sqlite-without-returning": lambda tmp_path: _sqlite_store(tmp_path, returning=False),
    "sqlite-namespaced": lambda tmp_path: _sqlite_namespaced_store(tmp_path),
    "redis": lambda tmp_path: _redis_store(),
    "postgres": lambda tmp_path: _postgres_store(),
}
#: Also called through their awaitable face (``as_async``: SQLite's group commit,
#: Redis' asyncio client), as ``<name>-awaited``.
AWAITED = ["sqlite", "sqlite-namespaced", "redis", "postgres"]
STORES = [*BACKENDS, *(f"{name}-awaited" for name in AWAITED)]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store (see BACKENDS), fresh and empty; ``-awaited`` ones are called
    through their awaitable face."""
    name = request.param
    awaited = name.endswith("-awaited")
    for s in BACKENDS[name.removesuffix("-awaited")](tmp_path):
        if not awaited:
            yield s
            continue
        face = AwaitedStore(s)
        try:
            yield cast(Store, face)
        finally:
            face.stop()


def _sqlite_store(tmp_path: Path, *, returning: bool) -> Iterator[Store]:
    sqlite_store = SQLiteStore(str(tmp_path / "jobs.db"))
    if not returning:
        sqlite_store._returning = False
    try:
        yield sqlite_store
    finally:
        sqlite_store.close()


#: Idempotency keys, owners and routes the tests use, held by neighbours of the
#: namespaced SQLite store (see below).
NEIGHBOUR_KEYS = ("k", "k1", "k2", "p", "cross", "race", "owner:POST:/render:key-1")


def _sqlite_namespaced_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store in namespace ``tenant-a`` of a file whose default namespace and
    namespace ``other`` already hold jobs: live ones (queued, processing, ended) holding
    every idempotency key the tests use, and expired ones. The contract's counts,
    lists, purges and idempotency answers hold only if nothing of theirs leaks in."""
    path = str(tmp_path / "jobs.db")
    t = time.time()
    for ns in (None, "other"):
        neighbour = SQLiteStore(path, namespace=ns)
        try:
            for key in NEIGHBOUR_KEYS:
                neighbour.create(make_job(t, idempotency_key=key, route="POST /x"), REQUEST)
            running = created(neighbour, t)
            neighbour.claim(running.id, "neighbour", t)
            ended = created(neighbour, t)
            neighbour.cancel(ended.id, t)
            neighbour.create(make_job(t - 2 * TTL), REQUEST)  # expired, not purged
            neighbour.worker_heartbeat("neighbour-worker", t, {"pid": 1})
            neighbour.save_run_time("POST /a", '{"mean": 9.0}')
        finally:
            neighbour.close()
    store = SQLiteStore(path, namespace="tenant-a")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def now() -> float:
    """A base time for a test: now, as a server's clock would give it."""
    return time.time()


def make_job(now: float, ttl: float = TTL, **kw: Any) -> Job:
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


def created(store: Store, now: float, request: CapturedRequest = REQUEST, **kw: Any) -> Job:
    job, was_created = store.create(make_job(now, **kw), request)
    assert was_created
    return job


def claimed(store: Store, now: float, worker: str = "w1", **kw: Any) -> Job:
    job = created(store, now, **kw)
    out = store.claim(job.id, worker, now)
    assert out is not None
    return out


# -- the Protocol ------------------------------------------------------------------------


def test_store_implements_the_protocol(store: Store) -> None:
    """Every store is a ``Store`` and says whether processes share it and whether it blocks."""
    assert isinstance(store, Store)
    assert store.shared is (not isinstance(store, MemoryStore))
    assert store.blocking is (not isinstance(store, MemoryStore))


# -- create / get ------------------------------------------------------------------------


def test_default_outbox_keeps_deliveries_beside_the_store(store: Store) -> None:
    """store.default_outbox() gives the webhook outbox that lives where the jobs do."""
    from async_accept.outbox import Delivery, Outbox, new_message_id

    box = getattr(store, "default_outbox")()  # noqa: B009 - not part of the Store protocol
    assert isinstance(box, Outbox)
    try:
        delivery = Delivery(
            id=new_message_id(),
            url="https://example.com/hook",
            payload="{}",
            created_at=1.0,
            next_at=1.0,
        )
        assert box.enqueue(delivery).id == delivery.id
        stored = box.get(delivery.id)
        assert stored is not None and stored.payload == "{}"
    finally:
        box.close()


def test_create_then_get_round_trips_every_field(store: Store, now: float) -> None:
    """Every Job attribute, set to a non-default value, comes back from get() unchanged."""
    job = make_job(
        now,
        started_at=now + 1.25,
        finished_at=now + 2.5,
        percent=42.5,
        message="rendering p\u00e4ges",
        eta=12.75,
        progress_at=now + 1.5,
        cancel_requested=True,
        worker_id="host:123:abcd",
        heartbeat_at=now + 1.75,
        error={"type": "urn:x", "detail": ["nested", {"n": 1}], "none": None},
        result_status=202,
        result_location="/things/9",
        route="POST /render",
        idempotency_key="owner:POST:/render:key-1",
        fingerprint="f" * 64,
        attempts=3,
        meta={"traceparent": "00-abc-def-01", "n": 1.5, "list": [1, "two"]},
    )
    stored, was_created = store.create(job, REQUEST)
    assert was_created
    assert stored == job
    assert store.get(job.id, now) == job


def test_create_returns_the_job_and_defaults_round_trip(store: Store, now: float) -> None:
    """A job with only the required fields reads back with the same defaults."""
    job = make_job(now)
    assert store.create(job, REQUEST) == (job, True)
    got = store.get(job.id, now)
    assert got == job
    assert got is not None and got.meta == {} and got.error is None and got.attempts == 0


def test_get_of_an_unknown_job_is_none(store: Store, now: float) -> None:
    """Reads of an id that was never created return None."""
    assert store.get("no-such-job", now) is None
    assert store.get_request("no-such-job") is None
    assert store.get_result("no-such-job") is None


def test_repeated_create_of_the_same_job_is_a_no_op(store: Store, now: float) -> None:
    """Creating a job whose id exists changes nothing: the id is random, so it is a repeat."""
    job = created(store, now)
    assert store.claim(job.id, "w1", now) is not None
    assert store.create(job, REQUEST)[1] is True
    got = store.get(job.id, now)
    assert got is not None and got.status is JobStatus.PROCESSING
    assert store.count_by_status()[JobStatus.PROCESSING] == 1
    assert store.count_by_status()[JobStatus.QUEUED] == 0


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(REQUEST, id="binary"),
        pytest.param(CapturedRequest("GET", "/"), id="empty"),
        pytest.param(
            CapturedRequest("PUT", "/upload", headers=[(b"content-type", b"x/y")], body=MIB),
            id="1MiB",
        ),
    ],
)
def test_request_round_trips_byte_for_byte(
    store: Store, now: float, request_: CapturedRequest
) -> None:
    """The captured request (every attribute, body byte for byte) comes back as stored."""
    job = created(store, now, request=request_)
    assert store.get_request(job.id) == request_


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(RESPONSE, id="binary"),
        pytest.param(CapturedResponse(204), id="empty"),
        pytest.param(CapturedResponse(200, [(b"content-type", b"x/y")], MIB), id="1MiB"),
    ],
)
def test_result_round_trips_byte_for_byte(
    store: Store, now: float, response: CapturedResponse
) -> None:
    """The handler's response kept by finish() comes back byte for byte."""
    job = claimed(store, now)
    assert store.get_result(job.id) is None
    done = store.finish(job.id, "w1", now + 1, JobStatus.COMPLETED, response=response)
    assert done is not None and done.result_status == response.status
    assert store.get_result(job.id) == response
    assert store.get_request(job.id) is None  # a completed job's request is gone


def test_request_is_kept_only_while_the_job_may_run(store: Store, now: float) -> None:
    """Completed or canceled: the captured request is deleted; failed: kept for a retry."""
    done = claimed(store, now)
    store.finish(done.id, "w1", now + 1, JobStatus.COMPLETED, response=RESPONSE)
    assert store.get_request(done.id) is None
    queued = created(store, now)
    after, changed = store.cancel(queued.id, now + 1)
    assert changed and after is not None and after.status is JobStatus.CANCELED
    assert store.get_request(queued.id) is None
    running = claimed(store, now)
    store.cancel(running.id, now + 1)
    store.finish(running.id, "w1", now + 2, JobStatus.CANCELED)
    assert store.get_request(running.id) is None
    failed = claimed(store, now)
    store.finish(failed.id, "w1", now + 1, JobStatus.FAILED, error=ERROR)
    assert store.get_request(failed.id) == REQUEST


def test_returned_objects_are_copies(store: Store, now: float) -> None:
    """Mutating a job, request or result a store handed out does not change the store."""
    job = make_job(now, meta={"a": 1}, error={"b": 2})
    store.create(job, CapturedRequest("POST", "/", headers=[(b"a", b"1")], body=b"x"))
    job.meta["a"] = 99
    got = store.get(job.id, now)
    assert got is not None
    got.meta["a"] = 100
    got.status = JobStatus.FAILED
    request = store.get_request(job.id)
    assert request is not None
    request.headers.append((b"b", b"2"))
    again = store.get(job.id, now)
    assert again is not None and again.meta == {"a": 1} and again.status is JobStatus.QUEUED
    assert store.get_request(job.id) == CapturedRequest(
        "POST", "/", headers=[(b"a", b"1")], body=b"x"
    )


# -- expiry ------------------------------------------------------------------------------


def test_expired_jobs_are_invisible(store: Store, now: float) -> None:
    """Once now >= expires_at, get() returns None even before purge_expired runs."""
    job = created(store, now, ttl=10.0)
    assert store.get(job.id, now + 9.999) is not None
    assert store.get(job.id, now + 10.0) is None
    assert store.get(job.id, now + 11.0) is None


def test_expired_jobs_cannot_change_state(store: Store, now: float) -> None:
    """Every compare-and-set refuses a job that has expired: it is gone."""
    queued = created(store, now, ttl=10.0)
    running = claimed(store, now, ttl=10.0)
    later = now + 10.0
    assert store.claim(queued.id, "w1", later) is None
    assert store.cancel(queued.id, later) == (None, False)
    assert store.fail(queued.id, [JobStatus.QUEUED], later, ERROR) is None
    assert store.heartbeat(running.id, "w1", later) is None
    assert store.set_progress(running.id, "w1", later, 50.0, None, None) is None
    assert store.requeue(running.id, "w1", later) is None
    assert store.finish(running.id, "w1", later, JobStatus.COMPLETED) is None
    assert store.get(queued.id, now)
    still = store.get(running.id, now)
    assert still is not None and still.status is JobStatus.PROCESSING


# -- claim -------------------------------------------------------------------------------


def test_claim_moves_a_queued_job_to_processing(store: Store, now: float) -> None:
    """claim() makes the job processing, owned by the worker, started and heartbeating now."""
    job = created(store, now)
    got = store.claim(job.id, "w1", now + 1)
    assert got is not None
    assert got.status is JobStatus.PROCESSING
    assert got.worker_id == "w1"
    assert got.started_at == now + 1 and got.heartbeat_at == now + 1
    assert got.attempts == 1
    assert store.get(job.id, now + 1) == got


def test_second_claim_fails(store: Store, now: float) -> None:
    """A job is claimed once: a second claim, by any worker, returns None."""
    job = created(store, now)
    assert store.claim(job.id, "w1", now) is not None
    assert store.claim(job.id, "w2", now) is None
    assert store.claim(job.id, "w1", now) is None
    got = store.get(job.id, now)
    assert got is not None and got.worker_id == "w1" and got.attempts == 1


def test_claim_of_unknown_or_canceled_job_fails(store: Store, now: float) -> None:
    """claim() refuses an unknown job and a canceled one."""
    assert store.claim("no-such-job", "w1", now) is None
    job = created(store, now)
    store.cancel(job.id, now)
    assert store.claim(job.id, "w1", now) is None
    got = store.get(job.id, now)
    assert got is not None and got.status is JobStatus.CANCELED


def test_claim_of_a_job_whose_cancel_was_requested_fails(store: Store, now: float) -> None:
    """A queued job carrying cancel_requested (e.g. requeued after a cancel) is never claimed."""
    job = claimed(store, now)
    assert store.cancel(job.id, now)[1] is True
    requeued = store.requeue(job.id, "w1", now)
    assert requeued is not None and requeued.cancel_requested
    assert store.claim(job.id, "w2", now) is None
    born_canceled = created(store, now, cancel_requested=True)
    assert store.claim(born_canceled.id, "w1", now) is None


# -- heartbeat / progress ----------------------------------------------------------------


def test_heartbeat_only_for_the_owner(store: Store, now: float) -> None:
    """heartbeat() refreshes the lease of the owning worker and refuses anyone else."""
    job = claimed(store, now)
    beat = store.heartbeat(job.id, "w1", now + 5)
    assert beat is not None and beat.heartbeat_at == now + 5
    assert store.heartbeat(job.id, "w2", now + 6) is None
    got = store.get(job.id, now)
    assert got is not None and got.heartbeat_at == now + 5


def test_heartbeat_of_a_job_not_processing_fails(store: Store, now: float) -> None:
    """heartbeat() refuses queued, finished and unknown jobs."""
    queued = created(store, now)
    assert store.heartbeat(queued.id, "w1", now) is None
    done = claimed(store, now)
    store.finish(done.id, "w1", now, JobStatus.COMPLETED)
    assert store.heartbeat(done.id, "w1", now) is None
    assert store.heartbeat("no-such-job", "w1", now) is None


def test_heartbeat_reports_a_requested_cancel(store: Store, now: float) -> None:
    """The worker sees cancel_requested in what heartbeat() returns."""
    job = claimed(store, now)
    beat = store.heartbeat(job.id, "w1", now)
    assert beat is not None and not beat.cancel_requested
    store.cancel(job.id, now)
    beat = store.heartbeat(job.id, "w1", now + 1)
    assert beat is not None and beat.cancel_requested


def test_set_progress_only_for_the_owner(store: Store, now: float) -> None:
    """set_progress() records percent/message/eta and refreshes the lease for the owner only."""
    job = claimed(store, now)
    got = store.set_progress(job.id, "w1", now + 2, 40.0, "rendering", 12.5)
    assert got is not None
    assert (got.percent, got.message, got.eta) == (40.0, "rendering", 12.5)
    assert got.progress_at == now + 2 and got.updated_at == now + 2
    assert got.heartbeat_at == now + 2
    assert store.set_progress(job.id, "w2", now + 3, 90.0, "hijack", None) is None
    assert store.get(job.id, now) == got
    assert store.set_progress(created(store, now).id, "w1", now, 1.0, None, None) is None


def test_set_progress_can_clear_its_fields(store: Store, now: float) -> None:
    """None for percent, message or eta clears what an earlier report set."""
    job = claimed(store, now)
    store.set_progress(job.id, "w1", now, 40.0, "rendering", 12.5)
    got = store.set_progress(job.id, "w1", now + 1, None, None, None)
    assert got is not None and (got.percent, got.message, got.eta) == (None, None, None)
    assert store.get(job.id, now) == got


# -- finish ------------------------------------------------------------------------------


def test_finish_completes_a_processing_job(store: Store, now: float) -> None:
    """finish(completed) by the owner stores the response and sets percent=100, finished_at."""
    job = claimed(store, now)
    store.set_progress(job.id, "w1", now, 40.0, "half", 5.0)
    done = store.finish(
        job.id, "w1", now + 3, JobStatus.COMPLETED, RESPONSE, result_location="/things/1"
    )
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.finished_at == now + 3 and done.updated_at == now + 3
    assert done.percent == 100.0 and done.eta is None
    assert done.result_status == 201 and done.result_location == "/things/1"
    assert done.error is None
    assert store.get(job.id, now + 3) == done
    assert store.get_result(job.id) == RESPONSE


def test_finish_failed_keeps_error_response_and_progress(store: Store, now: float) -> None:
    """finish(failed) stores the error and the 5xx response; percent is left as it was."""
    job = claimed(store, now)
    store.set_progress(job.id, "w1", now, 40.0, None, None)
    response = CapturedResponse(503, [(b"content-type", b"text/plain")], b"down")
    done = store.finish(job.id, "w1", now + 1, JobStatus.FAILED, response, error=ERROR)
    assert done is not None
    assert done.status is JobStatus.FAILED and done.error == ERROR
    assert done.result_status == 503 and done.percent == 40.0
    assert store.get_result(job.id) == response


def test_finish_canceled_without_a_response(store: Store, now: float) -> None:
    """A handler that stopped on a cancel finishes canceled, with no result."""
    job = claimed(store, now)
    store.cancel(job.id, now)
    done = store.finish(job.id, "w1", now + 1, JobStatus.CANCELED)
    assert done is not None and done.status is JobStatus.CANCELED
    assert done.result_status is None
    assert store.get_result(job.id) is None


def test_finish_only_from_processing_by_the_owner(store: Store, now: float) -> None:
    """finish() refuses another worker, a queued job, an unknown job and a second finish."""
    job = claimed(store, now)
    assert store.finish(job.id, "w2", now, JobStatus.COMPLETED, RESPONSE) is None
    got = store.get(job.id, now)
    assert got is not None and got.status is JobStatus.PROCESSING
    assert store.get_result(job.id) is None
    queued = created(store, now)
    assert store.finish(queued.id, "w1", now, JobStatus.COMPLETED) is None
    assert store.finish("no-such-job", "w1", now, JobStatus.COMPLETED) is None
    assert store.finish(job.id, "w1", now, JobStatus.COMPLETED, RESPONSE) is not None
    other = CapturedResponse(200, [], b"second")
    assert store.finish(job.id, "w1", now + 1, JobStatus.FAILED, other, error=ERROR) is None
    assert store.get_result(job.id) == RESPONSE


def test_late_finish_after_fail_changes_nothing(store: Store, now: float) -> None:
    """A worker finishing after the deadman failed its job gets None; the verdict stands."""
    job = claimed(store, now)
    verdict = {"type": "urn:async-accept:problem:worker-lost", "status": 500}
    failed = store.fail(job.id, [JobStatus.PROCESSING], now + 100, verdict)
    assert failed is not None
    assert store.finish(job.id, "w1", now + 101, JobStatus.COMPLETED, RESPONSE) is None
    assert store.get(job.id, now + 101) == failed
    assert store.get_result(job.id) is None


def test_fail_with_a_lease_is_a_compare_and_set_on_the_heartbeat(store: Store, now: float) -> None:
    """fail(lease=) fails only while heartbeat_at is the lease read: a late beat keeps the job."""
    job = claimed(store, now)
    lost = {"type": "urn:async-accept:problem:worker-lost", "status": 500}
    assert job.heartbeat_at is not None
    beaten = store.heartbeat(job.id, "w1", now + 1.25)
    assert beaten is not None and beaten.heartbeat_at == now + 1.25
    stale = store.fail(job.id, [JobStatus.PROCESSING], now + 2, lost, lease=job.heartbeat_at)
    assert stale is None
    kept = store.get(job.id, now + 2)
    assert kept is not None and kept.status is JobStatus.PROCESSING
    failed = store.fail(job.id, [JobStatus.PROCESSING], now + 3, lost, lease=kept.heartbeat_at)
    assert failed is not None and failed.status is JobStatus.FAILED


def test_requeue_with_a_lease_is_a_compare_and_set_on_the_heartbeat(
    store: Store, now: float
) -> None:
    """requeue(lease=) hands a job back only while heartbeat_at is the lease read."""
    job = claimed(store, now)
    beaten = store.heartbeat(job.id, "w1", now + 0.1)
    assert beaten is not None
    assert store.requeue(job.id, "w1", now + 2, lease=job.heartbeat_at) is None
    still = store.get(job.id, now + 2)
    assert still is not None and still.status is JobStatus.PROCESSING
    again = store.requeue(job.id, "w1", now + 3, lease=beaten.heartbeat_at)
    assert again is not None and again.status is JobStatus.QUEUED


def test_finish_refuses_a_non_terminal_status(store: Store, now: float) -> None:
    """finish() with queued or processing is a programming error: ValueError, nothing written."""
    job = claimed(store, now)
    for status in (JobStatus.QUEUED, JobStatus.PROCESSING):
        with pytest.raises(ValueError):
            store.finish(job.id, "w1", now, status)
    got = store.get(job.id, now)
    assert got is not None and got.status is JobStatus.PROCESSING and got.finished_at is None


# -- fail --------------------------------------------------------------------------------


def test_fail_from_an_expected_state(store: Store, now: float) -> None:
    """fail() moves a job in one of the expected states to failed with the error."""
    queued = created(store, now)
    failed = store.fail(queued.id, [JobStatus.QUEUED, JobStatus.PROCESSING], now + 1, ERROR)
    assert failed is not None
    assert failed.status is JobStatus.FAILED and failed.error == ERROR
    assert failed.finished_at == now + 1 and failed.updated_at == now + 1
    assert store.get(queued.id, now) == failed
    running = claimed(store, now)
    failed = store.fail(running.id, {JobStatus.PROCESSING}, now + 1, ERROR)
    assert failed is not None and failed.status is JobStatus.FAILED


def test_fail_is_compare_and_set(store: Store, now: float) -> None:
    """fail() refuses unexpected, terminal and unknown jobs, and an empty expectation."""
    queued = created(store, now)
    assert store.fail(queued.id, [JobStatus.PROCESSING], now, ERROR) is None
    assert store.fail(queued.id, [], now, ERROR) is None
    got = store.get(queued.id, now)
    assert got is not None and got.status is JobStatus.QUEUED and got.error is None
    done = claimed(store, now)
    store.finish(done.id, "w1", now, JobStatus.COMPLETED, RESPONSE)
    assert store.fail(done.id, [JobStatus.QUEUED, JobStatus.PROCESSING], now, ERROR) is None
    got = store.get(done.id, now)
    assert got is not None and got.status is JobStatus.COMPLETED
    assert store.fail("no-such-job", [JobStatus.QUEUED], now, ERROR) is None


# -- cancel ------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_cancels_it(store: Store, now: float) -> None:
    """Queued -> canceled at once, changed=True; it is finished then."""
    job = created(store, now)
    after, changed = store.cancel(job.id, now + 1)
    assert changed is True
    assert after is not None and after.status is JobStatus.CANCELED
    assert after.cancel_requested and after.finished_at == now + 1
    assert store.get(job.id, now + 1) == after


def test_cancel_of_a_processing_job_requests_it(store: Store, now: float) -> None:
    """Processing stays processing with cancel_requested=True, changed=True."""
    job = claimed(store, now)
    after, changed = store.cancel(job.id, now + 1)
    assert changed is True
    assert after is not None and after.status is JobStatus.PROCESSING
    assert after.cancel_requested and after.finished_at is None
    assert after.worker_id == "w1"
    assert store.get(job.id, now + 1) == after


def test_second_cancel_changes_nothing(store: Store, now: float) -> None:
    """A cancel already requested, or a job already canceled: (job, False)."""
    running = claimed(store, now)
    first, _ = store.cancel(running.id, now)
    assert store.cancel(running.id, now + 1) == (first, False)
    queued = created(store, now)
    first, _ = store.cancel(queued.id, now)
    assert store.cancel(queued.id, now + 1) == (first, False)


def test_cancel_of_a_terminal_job_changes_nothing(store: Store, now: float) -> None:
    """Completed and failed jobs keep their state: (job, False)."""
    done = claimed(store, now)
    finished = store.finish(done.id, "w1", now, JobStatus.COMPLETED, RESPONSE)
    assert store.cancel(done.id, now + 1) == (finished, False)
    failed = store.fail(created(store, now).id, [JobStatus.QUEUED], now, ERROR)
    assert failed is not None
    assert store.cancel(failed.id, now + 1) == (failed, False)


def test_finish_wins_over_a_cancel_that_came_while_the_job_ran(store: Store, now: float) -> None:
    """A cancel requested while the handler ran does not stop its finish: the job ends
    completed with its result, and a later cancel changes nothing (never both)."""
    job = claimed(store, now)
    requested, changed = store.cancel(job.id, now + 1)
    assert changed and requested is not None and requested.cancel_requested
    done = store.finish(job.id, "w1", now + 2, JobStatus.COMPLETED, RESPONSE)
    assert done is not None and done.status is JobStatus.COMPLETED
    assert store.cancel(job.id, now + 3) == (done, False)
    assert store.get(job.id, now + 3) == done
    assert store.get_result(job.id) == RESPONSE


def test_cancel_of_an_unknown_job(store: Store, now: float) -> None:
    """An unknown job: (None, False)."""
    assert store.cancel("no-such-job", now) == (None, False)


# -- requeue -----------------------------------------------------------------------------


def test_requeue_hands_a_job_back(store: Store, now: float) -> None:
    """requeue() by the owner makes the job queued again, unowned, claimable by another."""
    job = claimed(store, now)
    back = store.requeue(job.id, "w1", now + 1)
    assert back is not None
    assert back.status is JobStatus.QUEUED
    assert back.worker_id is None and back.heartbeat_at is None
    assert back.updated_at == now + 1
    again = store.claim(job.id, "w2", now + 2)
    assert again is not None and again.worker_id == "w2" and again.attempts == 2


def test_requeue_of_a_job_whose_cancel_was_requested_cancels_it(store: Store, now: float) -> None:
    """A handed-back job that a client asked to cancel ends canceled, not queued forever."""
    job = claimed(store, now)
    store.cancel(job.id, now + 1)
    back = store.requeue(job.id, "w1", now + 2)
    assert back is not None
    assert back.status is JobStatus.CANCELED and back.terminal
    assert back.finished_at == now + 2 and back.updated_at == now + 2
    assert back.worker_id is None
    got = store.get(job.id, now + 3)
    assert got is not None and got.status is JobStatus.CANCELED
    assert store.claim(job.id, "w2", now + 3) is None
    assert [j.id for j in store.list_jobs(JobStatus.CANCELED)] == [job.id]
    assert store.list_jobs(JobStatus.QUEUED) == []


def test_requeue_only_by_the_owner_of_a_processing_job(store: Store, now: float) -> None:
    """requeue() refuses another worker, a queued job, a finished job and an unknown one."""
    job = claimed(store, now)
    assert store.requeue(job.id, "w2", now) is None
    got = store.get(job.id, now)
    assert got is not None and got.status is JobStatus.PROCESSING
    assert store.requeue(created(store, now).id, "w1", now) is None
    store.finish(job.id, "w1", now, JobStatus.COMPLETED)
    assert store.requeue(job.id, "w1", now) is None
    assert store.requeue("no-such-job", "w1", now) is None


# -- mark_dispatched / retry ---------------------------------------------------------------


def test_mark_dispatched_marks_only_queued_jobs_in_the_given_order(
    store: Store, now: float
) -> None:
    """mark_dispatched() returns, in the order given, the queued jobs it marked."""
    a, b = created(store, now), created(store, now)
    running = claimed(store, now)
    canceled = created(store, now)
    store.cancel(canceled.id, now)
    cancel_requested = created(store, now, cancel_requested=True)
    expired = created(store, now - 20, ttl=10.0)
    failed = store.fail(created(store, now).id, [JobStatus.QUEUED], now, ERROR)
    assert failed is not None
    ids = [b.id, running.id, canceled.id, "no-such-job", cancel_requested.id, expired.id]
    ids += [failed.id, a.id]
    assert store.mark_dispatched(ids, now, now - 60) == [b.id, a.id]
    assert store.mark_dispatched([], now, now) == []
    got = store.get(a.id, now)
    assert got is not None and got.status is JobStatus.QUEUED
    assert store.claim(a.id, "w1", now) is not None


def test_mark_dispatched_skips_a_recent_mark(store: Store, now: float) -> None:
    """A job marked at or after stale_before is not marked again; an older mark is renewed."""
    job = created(store, now)
    assert store.mark_dispatched([job.id], now, now - 60) == [job.id]
    assert store.mark_dispatched([job.id], now + 1, now) == []
    assert store.mark_dispatched([job.id], now + 30, now + 0.5) == [job.id]
    assert store.mark_dispatched([job.id], now + 31, now + 0.5) == []


def test_threads_marking_the_same_jobs_mark_each_once(store: Store, now: float) -> None:
    """8 threads marking the same 20 jobs at once: each job is marked by exactly one."""
    ids = [created(store, now).id for _ in range(20)]
    barrier = threading.Barrier(8)
    marked: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer() -> None:
        try:
            barrier.wait(timeout=30)
            got = store.mark_dispatched(ids, now, now - 60)
        except BaseException as exc:  # reported by the asserts below
            errors.append(exc)
            return
        with lock:
            marked.extend(got)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(marked) == sorted(ids)


def test_retry_puts_a_failed_job_back_in_the_queue(store: Store, now: float) -> None:
    """retry() makes a failed job queued again with the failed run's traces cleared."""
    job = claimed(store, now)
    store.set_progress(job.id, "w1", now, 40.0, "half", 5.0)
    store.finish(
        job.id, "w1", now + 1, JobStatus.FAILED, RESPONSE, error=ERROR, result_location="/x"
    )
    again = store.retry(job.id, now + 5)
    assert again is not None
    assert again.status is JobStatus.QUEUED
    assert again.updated_at == now + 5
    assert again.deadline_at == now + 5 + 2 * job.sla
    cleared = (
        again.worker_id,
        again.heartbeat_at,
        again.started_at,
        again.finished_at,
        again.percent,
        again.message,
        again.eta,
        again.progress_at,
        again.error,
        again.result_status,
        again.result_location,
    )
    assert cleared == (None,) * len(cleared)
    assert (again.id, again.owner, again.created_at, again.expires_at) == (
        job.id,
        job.owner,
        job.created_at,
        job.expires_at,
    )
    assert store.get(job.id, now + 5) == again
    assert store.get_result(job.id) is None
    assert store.get_request(job.id) == REQUEST
    second = store.claim(job.id, "w2", now + 6)
    assert second is not None and second.attempts == 2


def test_retry_clears_the_dispatch_mark(store: Store, now: float) -> None:
    """A retried job can be dispatched at once, however recent its earlier mark."""
    job = created(store, now)
    assert store.mark_dispatched([job.id], now, now - 60) == [job.id]
    store.fail(job.id, [JobStatus.QUEUED], now, ERROR)
    assert store.retry(job.id, now + 1) is not None
    assert store.mark_dispatched([job.id], now + 1, now) == [job.id]


def test_requeue_clears_the_dispatch_mark(store: Store, now: float) -> None:
    """A requeued job (a retry after worker-lost, a drain) can be dispatched at once:
    its claim used the earlier mark up."""
    job = created(store, now)
    assert store.mark_dispatched([job.id], now, now - 60) == [job.id]
    assert store.claim(job.id, "w", now + 1) is not None
    assert store.requeue(job.id, "w", now + 2) is not None
    assert store.mark_dispatched([job.id], now + 2, now + 2 - 60) == [job.id]


def test_retry_only_of_a_failed_job_not_canceled(store: Store, now: float) -> None:
    """retry() refuses any job but a failed one that its client did not cancel."""
    queued = created(store, now)
    running = claimed(store, now)
    done = claimed(store, now)
    store.finish(done.id, "w1", now, JobStatus.COMPLETED, RESPONSE)
    canceled = created(store, now)
    store.cancel(canceled.id, now)
    for job in (queued, running, done, canceled):
        before = store.get(job.id, now)
        assert store.retry(job.id, now + 1) is None
        assert store.get(job.id, now + 1) == before
    asked = claimed(store, now)
    store.cancel(asked.id, now)
    store.fail(asked.id, [JobStatus.PROCESSING], now, ERROR)
    assert store.retry(asked.id, now + 1) is None
    short = created(store, now, ttl=10.0)
    store.fail(short.id, [JobStatus.QUEUED], now, ERROR)
    assert store.retry(short.id, now + 10.0) is None
    assert store.retry("no-such-job", now) is None


# -- list / count ------------------------------------------------------------------------


def test_list_jobs_oldest_first_with_filters_and_limit(store: Store, now: float) -> None:
    """list_jobs() is oldest first, filters by state and created_before (exclusive), obeys limit."""
    order = [3, 0, 4, 1, 2]
    jobs = {i: created(store, now + i) for i in order}
    store.claim(jobs[1].id, "w1", now)
    store.claim(jobs[3].id, "w1", now)
    ids = lambda found: [j.id for j in found]  # noqa: E731
    assert ids(store.list_jobs()) == [jobs[i].id for i in range(5)]
    assert ids(store.list_jobs(JobStatus.QUEUED)) == [jobs[i].id for i in (0, 2, 4)]
    assert ids(store.list_jobs(JobStatus.PROCESSING)) == [jobs[i].id for i in (1, 3)]
    assert store.list_jobs(JobStatus.FAILED) == []
    assert ids(store.list_jobs(created_before=now + 3)) == [jobs[i].id for i in range(3)]
    assert ids(store.list_jobs(JobStatus.QUEUED, created_before=now + 2)) == [jobs[0].id]
    assert ids(store.list_jobs(limit=2)) == [jobs[0].id, jobs[1].id]
    assert ids(store.list_jobs(JobStatus.QUEUED, limit=1)) == [jobs[0].id]
    assert store.list_jobs(limit=0) == []
    assert store.list_jobs()[1] == store.get(jobs[1].id, now)


def test_list_jobs_keeps_creation_order_for_equal_timestamps(store: Store, now: float) -> None:
    """Jobs created in the same instant list in the order they were created."""
    jobs = [created(store, now) for _ in range(8)]
    assert [j.id for j in store.list_jobs(JobStatus.QUEUED)] == [j.id for j in jobs]


def test_list_owned_is_one_owners_live_jobs_newest_first(store: Store, now: float) -> None:
    """list_owned() reads only the owner's live jobs, newest first, and obeys limit."""
    mine = [created(store, now + i, owner="alice") for i in (2, 0, 3, 1)]
    created(store, now + 5, owner="bob")
    created(store, now - TTL - 1, owner="alice", ttl=TTL)  # expired by now
    newest = sorted(mine, key=lambda j: j.created_at, reverse=True)
    assert [j.id for j in store.list_owned("alice", now)] == [j.id for j in newest]
    assert [j.id for j in store.list_owned("alice", now, OwnedQuery(limit=2))] == [
        j.id for j in newest[:2]
    ]
    assert store.list_owned("alice", now, OwnedQuery(limit=0)) == []
    assert store.list_owned("nobody", now) == []
    assert store.list_owned("alice", now)[0] == store.get(newest[0].id, now)


def test_list_owned_pages_with_a_cursor_through_equal_times(store: Store, now: float) -> None:
    """The (created_at, id) cursor continues after the last job seen, ties by id descending."""
    jobs = [created(store, now, owner="alice") for _ in range(5)]
    jobs += [created(store, now - 1, owner="alice") for _ in range(2)]
    expected = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)
    seen: list[str] = []
    before: tuple[float, str] | None = None
    while True:
        page = store.list_owned("alice", now, OwnedQuery(limit=3, before=before))
        if not page:
            break
        seen += [j.id for j in page]
        before = (page[-1].created_at, page[-1].id)
    assert seen == [j.id for j in expected]


def test_list_owned_filters_by_state_route_and_creation_time(store: Store, now: float) -> None:
    """status=, route= and created_after (inclusive) / created_before (exclusive) narrow it."""
    a = created(store, now, owner="o", route="POST /a")
    b = created(store, now + 1, owner="o", route="POST /b")
    c = created(store, now + 2, owner="o", route="POST /a")
    store.claim(b.id, "w1", now)
    ids = lambda found: [j.id for j in found]  # noqa: E731
    assert ids(store.list_owned("o", now, OwnedQuery(status=JobStatus.PROCESSING))) == [b.id]
    assert ids(store.list_owned("o", now, OwnedQuery(status=JobStatus.QUEUED))) == [c.id, a.id]
    assert ids(store.list_owned("o", now, OwnedQuery(route="POST /a"))) == [c.id, a.id]
    assert ids(store.list_owned("o", now, OwnedQuery(route="POST /zzz"))) == []
    assert ids(store.list_owned("o", now, OwnedQuery(created_after=now + 1))) == [c.id, b.id]
    assert ids(store.list_owned("o", now, OwnedQuery(created_before=now + 1))) == [a.id]
    assert ids(
        store.list_owned(
            "o", now, OwnedQuery(created_after=now, created_before=now + 2, route="POST /a")
        )
    ) == [a.id]
    assert ids(
        store.list_owned("o", now, OwnedQuery(before=(c.created_at, c.id), created_before=now + 5))
    ) == [
        b.id,
        a.id,
    ]


def test_list_owned_matches_either_hash_of_a_two_part_owner(store: Store, now: float) -> None:
    """An owner "<credential hash> <owner cookie hash>" is listed under each, not the pair."""
    both = created(store, now, owner="cred-a cookie-b")
    plain = created(store, now + 1, owner="cred-a")
    assert [j.id for j in store.list_owned("cred-a", now)] == [plain.id, both.id]
    assert [j.id for j in store.list_owned("cookie-b", now)] == [both.id]
    assert store.list_owned("cred-a cookie-b", now) == []
    assert store.delete(both.id)
    assert store.list_owned("cookie-b", now) == []


def test_list_owned_forgets_deleted_and_purged_jobs(store: Store, now: float) -> None:
    """A deleted or purged job leaves the owner's list."""
    kept = created(store, now, owner="o")
    gone = created(store, now + 1, owner="o")
    short = created(store, now + 2, owner="o", ttl=10)
    assert store.delete(gone.id)
    assert store.purge_expired(now + 20) == 1
    assert [j.id for j in store.list_owned("o", now + 20)] == [kept.id]
    assert short.id not in [j.id for j in store.list_owned("o", now)]


def test_list_jobs_newest_first_is_the_reverse_order(store: Store, now: float) -> None:
    """list_jobs(newest=True) reads from the newest end: reverse creation order, same filters."""
    jobs = [created(store, now + i) for i in range(4)] + [created(store, now + 4) for _ in range(3)]
    store.claim(jobs[1].id, "w1", now)
    expected = [j.id for j in reversed(jobs) if j.id != jobs[1].id]
    assert [j.id for j in store.list_jobs(JobStatus.QUEUED, 10, None, newest=True)] == expected
    assert [j.id for j in store.list_jobs(JobStatus.QUEUED, 2, None, newest=True)] == expected[:2]
    below = [j.id for j in store.list_jobs(JobStatus.QUEUED, 10, now + 4, newest=True)]
    assert below == [jobs[3].id, jobs[2].id, jobs[0].id]


def test_count_by_status_has_every_state(store: Store, now: float) -> None:
    """count_by_status() names every JobStatus, zeros included, and counts each job once."""
    assert store.count_by_status() == dict.fromkeys(JobStatus, 0)
    created(store, now)
    created(store, now)
    claimed(store, now)
    store.cancel(created(store, now).id, now)
    counts = store.count_by_status()
    assert set(counts) == set(JobStatus)
    assert counts == {
        JobStatus.QUEUED: 2,
        JobStatus.PROCESSING: 1,
        JobStatus.COMPLETED: 0,
        JobStatus.FAILED: 0,
        JobStatus.CANCELED: 1,
    }


# -- purge / delete ----------------------------------------------------------------------


def test_purge_expired_removes_jobs_and_bodies(store: Store, now: float) -> None:
    """purge_expired(now) deletes jobs expired by now, with their bodies, and returns how many."""
    short = [claimed(store, now, ttl=10.0) for _ in range(2)]
    store.finish(short[0].id, "w1", now, JobStatus.COMPLETED, RESPONSE)
    keep = created(store, now, ttl=100.0)
    assert store.purge_expired(now + 9.0) == 0
    assert store.purge_expired(now + 10.0) == 2
    for job in short:
        assert store.get(job.id, now) is None
        assert store.get_request(job.id) is None
        assert store.get_result(job.id) is None
    assert store.get(keep.id, now + 10.0) == keep
    assert store.get_request(keep.id) == REQUEST
    assert store.purge_expired(now + 10.0) == 0
    assert store.count_by_status()[JobStatus.QUEUED] == 1
    assert store.count_by_status()[JobStatus.PROCESSING] == 0


def test_delete_removes_one_job(store: Store, now: float) -> None:
    """delete() removes the job and its bodies: True when it existed, False after."""
    job = claimed(store, now)
    store.finish(job.id, "w1", now, JobStatus.COMPLETED, RESPONSE)
    other = created(store, now)
    assert store.delete(job.id) is True
    assert store.get(job.id, now) is None
    assert store.get_request(job.id) is None
    assert store.get_result(job.id) is None
    assert store.delete(job.id) is False
    assert store.delete("no-such-job") is False
    assert store.get(other.id, now) == other


# -- idempotency keys --------------------------------------------------------------------


def test_same_idempotency_key_returns_the_existing_job(store: Store, now: float) -> None:
    """A create with a key a live job holds writes nothing and returns (that job, False)."""
    first = created(store, now, idempotency_key="k1")
    store.claim(first.id, "w1", now)
    second = make_job(now + 1, idempotency_key="k1")
    existing, was_created = store.create(second, CapturedRequest("POST", "/other"))
    assert was_created is False
    assert existing == store.get(first.id, now + 1)
    assert store.get(second.id, now + 1) is None
    assert store.get_request(second.id) is None
    assert store.get_request(first.id) == REQUEST
    assert created(store, now, idempotency_key="k2").idempotency_key == "k2"
    assert created(store, now).idempotency_key is None
    assert created(store, now).idempotency_key is None


def test_idempotency_key_of_an_expired_or_deleted_job_is_free(store: Store, now: float) -> None:
    """A key whose job expired (purged or not) or was deleted can be taken by a new job."""
    old = created(store, now, ttl=10.0, idempotency_key="k")
    newer = make_job(now + 10.0, idempotency_key="k")
    assert store.create(newer, REQUEST) == (newer, True)
    assert store.get(newer.id, now + 10.0) == newer
    assert store.get(old.id, now + 10.0) is None
    assert store.create(make_job(now + 11.0, idempotency_key="k"), REQUEST)[0] == newer
    assert store.delete(newer.id)
    newest = make_job(now + 12.0, idempotency_key="k")
    assert store.create(newest, REQUEST) == (newest, True)
    purged = created(store, now, ttl=1.0, idempotency_key="p")
    assert store.purge_expired(now + 1.0) >= 1
    assert store.get(purged.id, now) is None
    again = make_job(now + 1.0, idempotency_key="p")
    assert store.create(again, REQUEST) == (again, True)


def test_16_threads_racing_one_idempotency_key_create_one_job(store: Store, now: float) -> None:
    """16 threads creating with one key at once: exactly one creates, all get that same job."""
    barrier = threading.Barrier(16)
    results: list[tuple[Job, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer() -> None:
        job = make_job(now, idempotency_key="race")
        try:
            barrier.wait(timeout=30)
            out = store.create(job, REQUEST)
        except BaseException as exc:  # reported by the asserts below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(out)

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 16
    winners = [job for job, was_created in results if was_created]
    assert len(winners) == 1
    assert {job.id for job, _ in results} == {winners[0].id}
    assert store.count_by_status()[JobStatus.QUEUED] == 1
    assert store.get_request(winners[0].id) == REQUEST


def test_threads_claiming_the_same_jobs_claim_each_once(store: Store, now: float) -> None:
    """8 threads racing to claim the same 40 jobs: every job is claimed exactly once."""
    jobs = [created(store, now) for _ in range(40)]
    barrier = threading.Barrier(8)
    won: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def racer(worker: str) -> None:
        try:
            barrier.wait(timeout=30)
            won[worker] = [j.id for j in jobs if store.claim(j.id, worker, now) is not None]
        except BaseException as exc:  # reported by the asserts below
            errors.append(exc)

    threads = [threading.Thread(target=racer, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    all_won = [job_id for ids in won.values() for job_id in ids]
    assert sorted(all_won) == sorted(j.id for j in jobs)
    for worker, ids in won.items():
        for job_id in ids:
            got = store.get(job_id, now)
            assert got is not None and got.worker_id == worker and got.attempts == 1


# -- worker registry ---------------------------------------------------------------------


def test_worker_registry(store: Store, now: float) -> None:
    """Workers list newest beat first, info replaced, forgotten after WORKER_RETENTION."""
    assert store.list_workers(now) == []
    store.worker_heartbeat("a", now, {"pid": 1, "executor": "thread"})
    store.worker_heartbeat("b", now + 1, {"pid": 2})
    store.worker_heartbeat("a", now + 2, {"pid": 1, "busy": 3})
    assert store.list_workers(now + 2) == [
        {"pid": 1, "busy": 3, "id": "a", "last_heartbeat": now + 2},
        {"pid": 2, "id": "b", "last_heartbeat": now + 1},
    ]
    assert [w["id"] for w in store.list_workers(now + 1.5 + WORKER_RETENTION)] == ["a"]
    assert store.list_workers(now + 1.5 + WORKER_RETENTION + 10) == []
    assert store.list_workers(now + 2) == []


# -- SQLite beyond the contract ------------------------------------------------------------


def _claim_in_process(
    path: str, ids: list[str], worker: str, now: float, barrier: Any, out: Any
) -> None:
    """Child process body: open the store, wait for the others, claim what it can."""
    store = SQLiteStore(path)
    try:
        barrier.wait(timeout=60)
        won = [job_id for job_id in ids if store.claim(job_id, worker, now) is not None]
    finally:
        store.close()
    out.put((worker, won))


def _create_in_process(path: str, job_json: str, request_json: str, out: Any) -> None:
    """Child process body: create one job (sent as JSON) and report whether it was created."""
    store = SQLiteStore(path)
    try:
        _, was_created = store.create(
            Job.from_json(job_json), CapturedRequest.from_json(request_json)
        )
    finally:
        store.close()
    out.put(was_created)


def _read_in_process(path: str, job_id: str, now: float, out: Any) -> None:
    """Child process body: read one job and its request back, as JSON."""
    store = SQLiteStore(path)
    try:
        job = store.get(job_id, now)
        request = store.get_request(job_id)
    finally:
        store.close()
    out.put((job and job.to_json(), request and request.to_json()))


def _run_processes(targets: list[tuple[Any, tuple[Any, ...]]]) -> list[Any]:
    """Start one spawned process per (function, args), each given a result queue as its
    last argument; return what they put there, in completion order."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, out)) for fn, args in targets]
    try:
        for p in procs:
            p.start()
        results: list[Any] = []
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=0.5))
            except queue.Empty:
                # A child that died before reporting must fail the test, not hang it.
                if all(p.exitcode is not None for p in procs) and out.empty():
                    break
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * len(procs)
        assert len(results) == len(procs)
        return results
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
            p.close()
        out.close()
        out.join_thread()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    yield store
    store.close()


def test_sqlite_processes_racing_to_claim_50_jobs_claim_each_once(
    sqlite_store: SQLiteStore, now: float
) -> None:
    """Three OS processes racing to claim the same 50 jobs: each job is claimed exactly once."""
    ids = [created(sqlite_store, now).id for _ in range(50)]
    barrier = multiprocessing.get_context("spawn").Barrier(3)
    results = _run_processes(
        [(_claim_in_process, (sqlite_store.path, ids, f"proc-{n}", now, barrier)) for n in range(3)]
    )
    won = dict(results)
    all_won = [job_id for claimed_ids in won.values() for job_id in claimed_ids]
    assert sorted(all_won) == sorted(ids)
    for worker, claimed_ids in won.items():
        for job_id in claimed_ids:
            job = sqlite_store.get(job_id, now)
            assert job is not None and job.worker_id == worker and job.attempts == 1


def test_sqlite_job_created_by_one_process_is_read_by_another(
    sqlite_store: SQLiteStore, now: float
) -> None:
    """A job created in one process reads back in another, both ways, bodies included."""
    job = make_job(now, idempotency_key="cross", meta={"a": [1, 2]})
    request = CapturedRequest("PUT", "/upload", headers=[(b"x", b"\xff")], body=MIB)
    # Open in this process first, so no connection of ours predates the write.
    assert sqlite_store.get(job.id, now) is None
    (was_created,) = _run_processes(
        [(_create_in_process, (sqlite_store.path, job.to_json(), request.to_json()))]
    )
    assert was_created is True
    assert sqlite_store.get(job.id, now) == job
    assert sqlite_store.get_request(job.id) == request
    assert sqlite_store.create(make_job(now, idempotency_key="cross"), request)[0] == job

    mine = created(sqlite_store, now, request=request)
    ((job_json, request_json),) = _run_processes(
        [(_read_in_process, (sqlite_store.path, mine.id, now))]
    )
    assert Job.from_json(job_json) == mine
    assert CapturedRequest.from_json(request_json) == request


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_store_works_in_a_forked_child(sqlite_store: SQLiteStore, now: float) -> None:
    """After fork() the child works on a connection of its own and the parent's still works."""
    job = created(sqlite_store, now)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        with contextlib.suppress(BaseException):
            claimed_job = sqlite_store.claim(job.id, "child", now)
            if claimed_job is not None and sqlite_store.get(job.id, now) == claimed_job:
                code = 0
            sqlite_store.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    got = sqlite_store.get(job.id, now)
    assert got is not None and got.worker_id == "child"
    assert sqlite_store.cancel(job.id, now)[1] is True


def test_sqlite_data_survives_reopening_the_file(tmp_path: Path, now: float) -> None:
    """A job, its request and its result are still there after the store is reopened."""
    path = str(tmp_path / "jobs.db")
    first = SQLiteStore(path)
    try:
        job = claimed(first, now)
        # A failed job keeps its request (a completed one's is deleted at once).
        done = first.finish(job.id, "w1", now, JobStatus.FAILED, RESPONSE, error=ERROR)
    finally:
        first.close()
    second = SQLiteStore(path)
    try:
        assert second.get(job.id, now) == done
        assert second.get_request(job.id) == REQUEST
        assert second.get_result(job.id) == RESPONSE
    finally:
        second.close()


def test_sqlite_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    """A path in a folder that does not exist fails at construction, naming the folder."""
    missing = tmp_path / "no" / "such"
    with pytest.raises(ConfigurationError, match="does not exist"):
        SQLiteStore(str(missing / "jobs.db"))
    assert not missing.exists()


def test_sqlite_bad_options_and_files_are_configuration_errors(tmp_path: Path) -> None:
    """A bad synchronous value, a folder as path, a non-database file: errors at construction."""
    with pytest.raises(ConfigurationError, match="synchronous"):
        SQLiteStore(str(tmp_path / "jobs.db"), synchronous="SOMETIMES")
    with pytest.raises(ConfigurationError):
        SQLiteStore(str(tmp_path))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigurationError):
        SQLiteStore(str(junk))


def test_sqlite_refuses_a_file_from_a_newer_schema(tmp_path: Path) -> None:
    """A file whose user_version is newer than this release is refused at construction."""
    path = tmp_path / "jobs.db"
    SQLiteStore(str(path)).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
    with pytest.raises(ConfigurationError, match="newer"):
        SQLiteStore(str(path))


def test_sqlite_uses_wal_and_the_given_synchronous(tmp_path: Path) -> None:
    """Connections run in WAL mode with the synchronous level asked for."""
    store = SQLiteStore(str(tmp_path / "jobs.db"), synchronous="full")
    try:
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_sqlite_locked_database_raises_store_error(tmp_path: Path, now: float) -> None:
    """A write lock held past the timeout raises StoreError (a 503 upstream), then recovers."""
    path = str(tmp_path / "jobs.db")
    store = SQLiteStore(path, timeout=0.05)
    try:
        job = created(store, now)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError, match="locked"):
                store.create(make_job(now), REQUEST)
            with pytest.raises(StoreError, match="locked"):
                store.claim(job.id, "w1", now)
            other.execute("ROLLBACK")
        assert store.claim(job.id, "w1", now) is not None
    finally:
        store.close()


def test_sqlite_closed_store_raises_store_error(tmp_path: Path, now: float) -> None:
    """After close(), every call raises StoreError, in this thread and in others."""
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    job = created(store, now)
    seen: list[BaseException] = []
    worker = threading.Thread(target=lambda: store.get(job.id, now))
    worker.start()
    worker.join()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get(job.id, now)

    def other_thread() -> None:
        try:
            store.claim(job.id, "w1", now)
        except StoreError as exc:
            seen.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert len(seen) == 1
    store.close()  # a second close is harmless
