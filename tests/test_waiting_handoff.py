"""The hand-over to a broker adds no delay to a lone job: an idle sender publishes at
once, and only a burst already forming waits ``flush_interval`` for its batch."""

from __future__ import annotations

import time

from tests.test_distributed import queued_jobs, recording


def published_after(executor: object, job_id: str, since: float, timeout: float = 5) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(job_id in batch for batch in executor.batches):  # type: ignore[attr-defined]
            return time.monotonic() - since
        time.sleep(0.002)
    raise AssertionError(f"job {job_id} was never published")


def test_a_lone_job_is_published_without_the_flush_interval() -> None:
    """With flush_interval=0.5, one job submitted to an idle sender goes out well before 0.5 s."""
    with recording(flush_interval=0.5) as (executor, store):
        (job_id,) = queued_jobs(store, 1)
        t0 = time.monotonic()
        executor.submit(job_id)
        assert published_after(executor, job_id, t0) < 0.25


def test_a_burst_still_goes_out_in_batches() -> None:
    """200 jobs submitted at once with flush_interval=0.2 go out in a handful of rounds."""
    with recording(batch_size=100, flush_interval=0.2) as (executor, store):
        ids = queued_jobs(store, 200)
        for job_id in ids:
            executor.submit(job_id)
        assert executor.flush(5)
        assert sorted(j for b in executor.batches for j in b) == sorted(ids)
        assert len(executor.batches) <= 4
