"""A dead Celery/RQ worker's jobs are sent again soon: the worker registry watch
(executors/liveness.py) and the remote executor's dispatch cutoff."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from async_accept.executors.liveness import WorkerWatch
from async_accept.executors.remote import RemoteExecutor
from async_accept.job import CapturedRequest, Job, JobStatus, new_job_id
from async_accept.stores.memory import MemoryStore


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def entry(wid: str, beat: float, **info: Any) -> dict[str, Any]:
    row = {"id": wid, "last_heartbeat": beat, "role": "worker", "consumes": True}
    row.update({"executor": "celery", "state": "running", "pid": 1, "host": "h"})
    row.update(info)
    return row


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watch(clock: Clock) -> WorkerWatch:
    return WorkerWatch("celery", lost_after=10, beat_every=2, forget_after=60, monotonic=clock)


def test_a_worker_whose_beat_stops_changing_is_lost(watch: WorkerWatch, clock: Clock) -> None:
    """Unchanged for lost_after (this process's monotonic clock): lost, cutoff mid-window."""
    now = 5000.0
    assert watch.observe([entry("a", now)], now) is None
    clock.t += 2
    assert watch.observe([entry("a", now + 2)], now + 2) is None  # it beats: alive
    clock.t += 9
    assert watch.observe([entry("a", now + 2)], now + 11) is None  # 9 s silent: not yet
    clock.t += 2
    # 11 s silent: died at least lost_after - beat_every = 8 s ago; the cutoff is 4 s ago.
    assert watch.observe([entry("a", now + 2)], now + 13) == pytest.approx(now + 9)
    assert watch.losses == 1
    clock.t += 20
    assert watch.observe([entry("a", now + 2)], now + 33) == pytest.approx(now + 9)
    assert watch.losses == 1  # one loss, one cutoff move


def test_wall_clocks_do_not_decide_a_loss(watch: WorkerWatch, clock: Clock) -> None:
    """A worker whose registry time is far behind ours but keeps beating is alive."""
    now = 5000.0
    for i in range(10):
        watch.observe([entry("a", now - 300 + i)], now + i * 3)  # its clock: 5 min behind
        clock.t += 3
    assert watch.cutoff is None and watch.losses == 0


def test_a_goodbye_is_not_a_loss(watch: WorkerWatch, clock: Clock) -> None:
    """A worker that beat 'stopped' (a warm shutdown gives back its messages) is not lost."""
    now = 5000.0
    watch.observe([entry("a", now)], now)
    watch.observe([entry("a", now + 1, state="stopped")], now + 1)
    clock.t += 60
    assert watch.observe([entry("a", now + 1, state="stopped")], now + 61) is None


def test_other_processes_are_not_watched(watch: WorkerWatch, clock: Clock) -> None:
    """Web processes and workers of another executor falling silent change nothing."""
    now = 5000.0
    rows = [entry("web", now, role="web"), entry("rq", now, executor="rq")]
    watch.observe(rows, now)
    clock.t += 30
    assert watch.observe(rows, now + 30) is None


def test_a_worker_dead_long_before_we_looked_is_not_a_new_loss(
    watch: WorkerWatch, clock: Clock
) -> None:
    """First seen silent for longer than forget_after: redispatch_after already covered it."""
    now = 5000.0
    watch.observe([entry("old", now - 600)], now)
    clock.t += 30
    assert watch.observe([entry("old", now - 600)], now + 30) is None


def test_a_worker_that_comes_back_can_be_lost_again(watch: WorkerWatch, clock: Clock) -> None:
    """A worker silent, then beating again, then silent again: two losses."""
    now = 5000.0
    watch.observe([entry("a", now)], now)
    clock.t += 11
    assert watch.observe([entry("a", now)], now + 11) is not None
    clock.t += 1
    watch.observe([entry("a", now + 12)], now + 12)  # it answers again (a stalled store)
    clock.t += 11
    assert watch.observe([entry("a", now + 12)], now + 23) == pytest.approx(now + 19)
    assert watch.losses == 2


# -- the remote executor ----------------------------------------------------------------------


class Recording(RemoteExecutor):
    """A remote executor whose broker is a list."""

    name = "celery"

    def __init__(self, **options: Any) -> None:
        super().__init__("tests.e2e_app:wsgi_app", **options)
        self.sent: list[str] = []

    def _publish(self, job_ids: list[str]) -> None:
        self.sent.extend(job_ids)


@pytest.fixture
def hand_over() -> Iterator[tuple[Recording, MemoryStore]]:
    store = MemoryStore()
    options = SimpleNamespace(heartbeat_interval=0.05, worker_lost_after=0.4)
    runtime = SimpleNamespace(store=store, engine=SimpleNamespace(clock=time.time, options=options))
    executor = Recording(redispatch_after=60)
    executor.start(runtime, None)  # type: ignore[arg-type]
    try:
        yield executor, store
    finally:
        executor.shutdown(2)
        store.close()


def queued(store: MemoryStore, n: int) -> list[str]:
    now = time.time()
    ids = []
    for _ in range(n):
        job = Job(new_job_id(), JobStatus.QUEUED, "o", now, now, now + 600, now + 600, 30)
        store.create(job, CapturedRequest("POST", "/slow"))
        ids.append(job.id)
    return ids


def wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_jobs_dispatched_before_a_worker_died_are_sent_again(
    hand_over: tuple[Recording, MemoryStore],
) -> None:
    """A worker stops beating: jobs dispatched before are re-sent once, long before
    redispatch_after; a job dispatched after the loss is not."""
    executor, store = hand_over
    info = {"role": "worker", "consumes": True, "executor": "celery", "state": "running"}
    store.worker_heartbeat("w1", time.time(), info)
    before = queued(store, 3)
    for job_id in before:
        executor.submit(job_id)
    assert executor.flush(5)
    assert sorted(executor.sent) == sorted(before)
    for job_id in before:  # a sweeper, while the worker lives: nothing goes out again
        executor.submit(job_id)
    assert executor.flush(5) and len(executor.sent) == 3
    # w1 is killed (no more beats); w2 lives on.
    deadline = time.monotonic() + 10
    while executor._watch is not None and executor._watch.cutoff is None:
        store.worker_heartbeat("w2", time.time(), info)
        assert time.monotonic() < deadline, "the loss was never noticed"
        time.sleep(0.05)
    after = queued(store, 1)
    executor.submit(after[0])
    assert executor.flush(5)
    for job_id in [*before, *after]:  # the next sweep
        executor.submit(job_id)
    assert executor.flush(5)
    assert sorted(executor.sent) == sorted([*before, *before, *after])
    for job_id in [*before, *after]:  # and the one after: re-marked, nothing more
        executor.submit(job_id)
    assert executor.flush(5)
    assert len(executor.sent) == 7


def test_a_second_message_for_a_claimed_job_does_not_run_it(
    hand_over: tuple[Recording, MemoryStore],
) -> None:
    """A re-sent job already claimed elsewhere is neither published nor claimable again."""
    executor, store = hand_over
    (job_id,) = queued(store, 1)
    executor.submit(job_id)
    assert executor.flush(5)
    assert store.claim(job_id, "worker-a", time.time()) is not None
    assert store.claim(job_id, "worker-b", time.time()) is None  # the second message: dropped
    executor._watch.cutoff = time.time() + 1  # type: ignore[union-attr]  # a worker died
    executor.submit(job_id)
    assert executor.flush(5)
    assert executor.sent == [job_id]  # processing: not queued, so not re-sent
