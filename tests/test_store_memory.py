"""The memory store's frozen records: lossless, private, and nothing per job for the GC."""

from __future__ import annotations

import gc
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from async_accept.job import CapturedRequest, CapturedResponse, Job, JobStatus, new_job_id
from async_accept.stores.memory import MemoryStore
from tests.test_capture import HEADER_NAME, HEADER_VALUE, requests

NOW = 1_700_000_000.0
JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def make_job(**kw: Any) -> Job:
    fields: dict[str, Any] = {
        "id": new_job_id(),
        "status": JobStatus.QUEUED,
        "owner": "o",
        "created_at": NOW,
        "updated_at": NOW,
        "expires_at": NOW + 3600,
        "deadline_at": NOW + 60,
        "sla": 30.0,
    }
    fields.update(kw)
    return Job(**fields)


@given(
    req=requests,
    meta=st.dictionaries(st.text(max_size=8), JSON, max_size=4),
    error=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), JSON, max_size=4)),
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(HEADER_NAME.map(str.encode), HEADER_VALUE), max_size=8),
    body=st.binary(max_size=500),
    message=st.one_of(st.none(), st.text(max_size=30)),
)
def test_jobs_requests_and_results_come_back_equal(
    req: CapturedRequest,
    meta: dict[str, Any],
    error: dict[str, Any] | None,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    message: str | None,
) -> None:
    """Any job (JSON-shaped meta and error), request and result read back equal to what went in."""
    store = MemoryStore()
    job = make_job(meta=meta, message=message, idempotency_key="k", percent=0.1 + 0.2)
    assert store.create(job, req) == (job, True)
    assert store.get(job.id, NOW) == job
    assert store.get_request(job.id) == req
    store.claim(job.id, "w", NOW + 1)
    resp = CapturedResponse(status, headers, body)
    done = store.finish(job.id, "w", NOW + 2, JobStatus.FAILED, resp, error)
    assert done is not None and done.error == error and done.meta == meta
    assert store.get(job.id, NOW + 3) == done
    assert store.get_result(job.id) == resp


def test_callers_never_hold_the_stores_own_objects() -> None:
    """Mutating what went in, or what create, get or get_request gave back, changes no record."""
    store = MemoryStore()
    req = CapturedRequest("POST", "/r", headers=[(b"a", b"1")], body=b"x")
    job = make_job(meta={"n": [1, 2]})
    created, _ = store.create(job, req)
    job.meta["n"].append(3)
    req.headers.append((b"b", b"2"))
    created.meta["x"] = 1
    got = store.get(job.id, NOW)
    assert got is not None and got.meta == {"n": [1, 2]}
    got.meta.clear()
    got.status = JobStatus.FAILED
    again = store.get(job.id, NOW)
    assert again is not None and again.meta == {"n": [1, 2]} and again.status is JobStatus.QUEUED
    stored_req = store.get_request(job.id)
    assert stored_req is not None and stored_req.headers == [(b"a", b"1")]
    stored_req.headers.clear()
    assert store.get_request(job.id) == CapturedRequest(
        "POST", "/r", headers=[(b"a", b"1")], body=b"x"
    )


def test_stored_jobs_add_nothing_for_the_garbage_collector_to_walk() -> None:
    """2,000 finished jobs with requests and results leave the GC's tracked objects about flat."""
    store = MemoryStore()
    req = CapturedRequest("POST", "/r", headers=[(b"content-type", b"application/json")])
    resp = CapturedResponse(200, [(b"content-type", b"application/json")], b"{}")
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(2000):
        job = make_job(meta={"dispatched_at": NOW}, route="POST /r")
        store.create(job, req)
        store.claim(job.id, "w", NOW)
        store.finish(job.id, "w", NOW, JobStatus.COMPLETED, resp)
    del job
    gc.collect()
    grown = len(gc.get_objects()) - before
    # Dataclass records cost ~10 tracked objects per job (20,000 here).
    assert grown < 200, grown


def test_a_requeued_job_can_be_dispatched_again_at_once() -> None:
    """A requeue clears the dispatch mark (the claim used it up): the job's re-send goes out."""
    store = MemoryStore()
    job = make_job()
    store.create(job, CapturedRequest("POST", "/r"))
    assert store.mark_dispatched([job.id], NOW, NOW - 60) == [job.id]
    assert store.claim(job.id, "w", NOW + 1) is not None
    assert store.requeue(job.id, "w", NOW + 2) is not None
    assert store.mark_dispatched([job.id], NOW + 2, NOW + 2 - 60) == [job.id]
