"""What the stores give issue 14, on every backend (and awaitable face): the claim that
brings the request with it, the learned run times, and the change signal."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from async_accept.feed import signal_for
from async_accept.job import CapturedRequest, JobStatus
from async_accept.stores import Store
from tests.test_store_contract import make_job, now, store  # noqa: F401 - fixtures

REQUEST = CapturedRequest("POST", "/slow", headers=[(b"x-a", b"1")], body=b"payload")


def test_claim_with_request_claims_and_returns_the_request(store: Store, now: float) -> None:  # noqa: F811
    """claim_with_request: the claimed job and its captured request; None once taken."""
    job = make_job(now)
    store.create(job, REQUEST)
    claimed = store.claim_with_request(job.id, "w1", now)
    assert claimed is not None
    got, request = claimed
    assert got.id == job.id and got.status is JobStatus.PROCESSING and got.worker_id == "w1"
    assert request is not None and request.body == b"payload" and request.path == "/slow"
    assert store.claim_with_request(job.id, "w2", now) is None
    assert store.claim_with_request("no-such-job", "w1", now) is None


def test_run_times_are_kept(store: Store) -> None:  # noqa: F811
    """save_run_time / load_run_times keep one JSON text per route, the last one written."""
    keeper: Any = store
    assert keeper.load_run_times() == {}
    keeper.save_run_time("POST /a", '{"mean": 1.0}')
    keeper.save_run_time("POST /a", '{"mean": 2.0}')
    keeper.save_run_time("", '{"mean": 3.0}')
    assert keeper.load_run_times() == {"POST /a": '{"mean": 2.0}', "": '{"mean": 3.0}'}


def test_the_change_signal_names_a_changed_job(store: Store, now: float) -> None:  # noqa: F811
    """A shared store's change signal reports a job another connection changed."""
    inner: Any = getattr(store, "inner", store)
    signal = signal_for(inner)
    if signal is None:
        pytest.skip("an in-process store: its changes reach the feed directly")
    job = make_job(now)
    store.create(job, REQUEST)
    wake = threading.Event()
    writer = threading.Timer(0.2, lambda: store.claim(job.id, "w1", time.time()))
    try:
        signal.changed([job.id], 0.5, wake)  # the first call settles (subscribes, reads)
        writer.start()
        seen: set[str] = set()
        deadline = time.monotonic() + 5
        while job.id not in seen and time.monotonic() < deadline:
            seen.update(signal.changed([job.id], 0.5, wake))
        assert job.id in seen
    finally:
        writer.join()  # the claim's reply may come after its published change
        signal.close()
