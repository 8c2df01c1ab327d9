"""The store contract, outbox part: a job's webhook deliveries are written by the
very call that ends it (same transaction, Lua script or lock), once the store's
own outbox is in use (``store.default_outbox()``).

Runs on every store of ``tests/test_store_contract.py`` (``STORES``: memory,
SQLite with and without RETURNING, Redis, PostgreSQL, and the awaitable faces).
"""

from __future__ import annotations

from typing import Any

import pytest

from async_accept.job import JobStatus
from async_accept.outbox import Outbox
from async_accept.stores import Store
from async_accept.stores.outbox_base import Delivery, DeliveryState, delivery_id
from tests.test_store_contract import ERROR, RESPONSE, claimed, created, now, store

__all__ = ["now", "store"]  # the contract's fixtures

HOOK = "https://hooks.example/route"
CALLBACK = "https://client.example/callback"
TARGETS = {"webhook": HOOK, "callback": CALLBACK}


@pytest.fixture
def box(store: Store) -> Any:
    """The store's own outbox: from now on the store records deliveries with ends."""
    outbox: Outbox = getattr(store, "default_outbox")()  # noqa: B009 - not in the protocol
    yield outbox
    outbox.close()


def recorded(box: Outbox, job_id: str) -> dict[str, Delivery]:
    """The job's deliveries, by URL."""
    out = {}
    for url in (HOOK, CALLBACK):
        d = box.get(delivery_id(job_id, url))
        if d is not None:
            out[url] = d
    return out


def assert_recorded(box: Outbox, job_id: str, now: float) -> None:
    got = recorded(box, job_id)
    assert set(got) == {HOOK, CALLBACK}
    for url, d in got.items():
        assert d.job_id == job_id and d.url == url
        assert d.state is DeliveryState.PENDING and d.attempts == 0
        assert d.payload == ""  # the runtime fills it in (or the dispatcher renders it)
        assert d.next_at <= now  # due at once
        assert d.client_supplied is (url == CALLBACK)


def test_finish_records_the_deliveries_in_the_same_call(
    store: Store, box: Outbox, now: float
) -> None:
    """finish() of a job with a webhook and a callback writes both deliveries with the end."""
    job = claimed(store, now, meta=dict(TARGETS))
    done = store.finish(job.id, "w1", now + 1, JobStatus.COMPLETED, RESPONSE)
    assert done is not None and done.status is JobStatus.COMPLETED
    assert_recorded(box, job.id, now)
    assert {d.id for d in box.due(now + 2, limit=10)} == {
        delivery_id(job.id, HOOK),
        delivery_id(job.id, CALLBACK),
    }


def test_every_end_records_the_deliveries(store: Store, box: Outbox, now: float) -> None:
    """fail, cancel of a queued job and a requeue that ends canceled record them too."""
    failed = claimed(store, now, meta=dict(TARGETS))
    assert store.fail(failed.id, {JobStatus.PROCESSING}, now, ERROR) is not None
    assert_recorded(box, failed.id, now)
    queued = created(store, now, meta=dict(TARGETS))
    job, changed = store.cancel(queued.id, now)
    assert changed and job is not None and job.status is JobStatus.CANCELED
    assert_recorded(box, queued.id, now)
    running = claimed(store, now, meta=dict(TARGETS))
    job, changed = store.cancel(running.id, now)
    assert changed and job is not None and job.status is JobStatus.PROCESSING
    assert recorded(box, running.id) == {}  # only asked: not over yet
    job = store.requeue(running.id, "w1", now)
    assert job is not None and job.status is JobStatus.CANCELED
    assert_recorded(box, running.id, now)


def test_a_call_that_ends_nothing_records_nothing(store: Store, box: Outbox, now: float) -> None:
    """A finish that loses the compare-and-set, a requeue back to the queue, a job without
    targets and a job whose submit failed at accept record no delivery."""
    job = claimed(store, now, meta=dict(TARGETS))
    assert store.finish(job.id, "other-worker", now, JobStatus.COMPLETED) is None
    assert store.requeue(job.id, "w1", now) is not None  # queued again
    assert recorded(box, job.id) == {}
    plain = claimed(store, now)
    assert store.finish(plain.id, "w1", now, JobStatus.COMPLETED) is not None
    refused = created(store, now, meta=dict(TARGETS))
    error = {"type": "urn:async-accept:problem:executor-unavailable", "status": 503}
    assert store.fail(refused.id, {JobStatus.QUEUED}, now, error) is not None
    assert recorded(box, refused.id) == {}
    assert box.list_deliveries() == []


def test_a_store_whose_outbox_is_not_used_records_nothing(store: Store, now: float) -> None:
    """Without default_outbox() (webhook_outbox= elsewhere) an end writes no delivery."""
    job = claimed(store, now, meta=dict(TARGETS))
    assert store.finish(job.id, "w1", now, JobStatus.COMPLETED) is not None
    outbox: Outbox = getattr(store, "default_outbox")()  # noqa: B009 - not in the protocol
    try:
        assert outbox.list_deliveries() == []
    finally:
        outbox.close()


def test_fill_payload_fills_an_empty_payload_once(store: Store, box: Outbox, now: float) -> None:
    """fill_payload() sets a recorded delivery's payload once; never one already set."""
    job = claimed(store, now, meta={"webhook": HOOK})
    assert store.finish(job.id, "w1", now, JobStatus.COMPLETED) is not None
    msg = delivery_id(job.id, HOOK)
    assert box.fill_payload(msg, '{"a":1}') is True
    assert box.fill_payload(msg, '{"a":2}') is False
    assert box.fill_payload("msg_unknown", "{}") is False
    stored = box.get(msg)
    assert stored is not None and stored.payload == '{"a":1}'
