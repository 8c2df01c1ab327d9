"""The liveness watch (engine/liveness.py): worker-lost judged by a lease that stayed
unchanged for worker_lost_after of the judge's own monotonic, writable time."""

from __future__ import annotations

import time
from typing import Any

from async_accept.engine import Engine
from async_accept.engine.liveness import Liveness
from async_accept.engine.ops import ExecutorCall, Gen, StoreCall
from async_accept.job import CapturedRequest, Job, JobStatus
from async_accept.options import build_options
from async_accept.stores.memory import MemoryStore
from tests.fakeclock import FakeMonotonic

SECRET = "liveness-secret-0123456789abcdef-0123456789"
LOST_AFTER = 2.0
BEAT = 0.25


def watch() -> tuple[Liveness, FakeMonotonic]:
    clock = FakeMonotonic()
    return Liveness(LOST_AFTER, BEAT, clock), clock


def running(heartbeat_at: float = 5.0, worker: str = "w1", attempts: int = 1) -> Job:
    return Job(
        id="job-1",
        status=JobStatus.PROCESSING,
        owner="o",
        created_at=0.0,
        updated_at=0.0,
        expires_at=1e12,
        deadline_at=1e12,
        sla=30.0,
        worker_id=worker,
        attempts=attempts,
        heartbeat_at=heartbeat_at,
        started_at=0.0,
    )


def beats(w: Liveness, clock: FakeMonotonic, seconds: float, step: float = BEAT) -> None:
    """``seconds`` pass with the judge's own beats landing every ``step``."""
    end = clock.now + seconds
    while clock.now < end - 1e-9:
        clock.now += step
        w.landed()


def test_an_unchanged_lease_over_the_window_is_lost() -> None:
    """A lease unchanged for worker_lost_after of writable time: the job's worker is lost."""
    w, clock = watch()
    w.landed()
    job = running()
    assert not w.lost(job)  # first sight starts the watch
    beats(w, clock, LOST_AFTER - 0.5)
    assert not w.lost(job)
    beats(w, clock, 1.0)
    assert w.lost(job)


def test_a_changing_lease_is_alive_however_old_its_wall_clock_value() -> None:
    """A heartbeat value that keeps changing is alive, even 9 s (or a day) behind our clock."""
    w, clock = watch()
    w.landed()
    skewed = time.time() - 86400.0  # the worker's clock is a day behind
    for i in range(40):
        assert not w.lost(running(heartbeat_at=skewed + i * BEAT))
        beats(w, clock, BEAT)


def test_a_fresh_judge_waits_one_full_window() -> None:
    """A lease first seen now is never lost at once, whatever its wall-clock age."""
    w, clock = watch()
    beats(w, clock, 60.0)  # the judge has been up (and writing) for a minute
    job = running(heartbeat_at=1.0)  # a lease written "decades ago"
    assert not w.lost(job)
    beats(w, clock, LOST_AFTER - 0.5)
    assert not w.lost(job)
    beats(w, clock, 1.0)
    assert w.lost(job)


def test_a_new_attempt_or_worker_restarts_the_watch() -> None:
    """Another worker or attempt with the same heartbeat value is a new lease."""
    w, clock = watch()
    w.landed()
    assert not w.lost(running(worker="w1"))
    beats(w, clock, LOST_AFTER + 1)
    assert not w.lost(running(worker="w2"))
    assert not w.lost(running(worker="w2", attempts=2))
    beats(w, clock, LOST_AFTER + 1)
    assert w.lost(running(worker="w2", attempts=2))


def test_a_stalled_store_is_not_counted() -> None:
    """15 s in which the judge's own beats could not land count for nothing."""
    w, clock = watch()
    w.landed()
    job = running()
    assert not w.lost(job)
    beats(w, clock, 0.5)
    clock.now += 15.0  # a write lock held by another process: our beat waits
    w.landed()  # ... and lands when it is released
    assert not w.lost(job)
    beats(w, clock, LOST_AFTER - 1.0)
    assert not w.lost(job)
    beats(w, clock, 1.5)
    assert w.lost(job)  # silent for a whole window of a writable store: lost


def test_failed_own_beats_are_not_counted() -> None:
    """Beats failing (a busy timeout, an outage) stop the count, even in short gaps."""
    w, clock = watch()
    w.landed()
    job = running()
    assert not w.lost(job)
    for _ in range(40):  # 10 s of failures between landings
        clock.now += BEAT
        w.failed()
        clock.now += 0.01
        w.landed()
    assert w.writable_seconds < 0.6
    assert not w.lost(job)


def test_without_own_beats_nothing_is_ever_lost() -> None:
    """A process whose own beats never land (no sweeper, or a dead store) judges no one lost."""
    w, clock = watch()
    job = running()
    assert not w.lost(job)
    clock.now += 3600.0
    assert not w.lost(job)


def test_two_own_beats_must_land_after_first_sight() -> None:
    """Time credited before the lease was seen is not the lease's."""
    w, clock = watch()
    w.landed()
    clock.now += w.max_gap  # one long but countable gap ...
    job = running()
    assert not w.lost(job)  # ... seen at its very end
    w.landed()
    assert w.writable_seconds >= w.max_gap
    assert not w.lost(job)


def test_forgotten_and_idle_jobs_leave_the_watch() -> None:
    """Ended jobs are forgotten; jobs nobody looked at for long are pruned."""
    w, clock = watch()
    assert not w.lost(running())
    assert w.watching("job-1")
    w.forget("job-1")
    assert not w.watching("job-1")
    assert not w.lost(running())
    clock.now += 3600.0
    other = running()
    other.id = "job-2"
    w.lost(other)  # any look prunes what went unseen
    assert not w.watching("job-1") and w.watching("job-2")


def test_only_processing_jobs_with_a_lease_are_watched() -> None:
    """Queued jobs and leases without a heartbeat are never lost (nor watched)."""
    w, _clock = watch()
    queued = running()
    queued.status = JobStatus.QUEUED
    assert not w.lost(queued)
    unbeaten = running()
    unbeaten.heartbeat_at = None
    assert not w.lost(unbeaten)
    assert not w.watching("job-1")


# -- the engine's deadman switch over the watch -------------------------------------------


def drive(gen: Gen[Any], store: MemoryStore) -> Any:
    """Run an engine generator's store calls on ``store`` (executor calls are dropped)."""
    value: Any = None
    while True:
        try:
            op = gen.send(value)
        except StopIteration as stop:
            return stop.value
        value = None
        if isinstance(op, StoreCall):
            op.result = op.run(store)
        elif not isinstance(op, ExecutorCall):  # pragma: no cover - not used by the deadman
            raise AssertionError(op)


def engine_and_job(heartbeat_at: float) -> tuple[Engine, MemoryStore, Job, FakeMonotonic]:
    engine = Engine(
        build_options(secret_key=SECRET, worker_lost_after=LOST_AFTER, heartbeat_interval=BEAT)
    )
    clock = FakeMonotonic()
    engine.liveness.clock = clock
    store = MemoryStore()
    now = time.time()
    job = Job(
        id="job-e",
        status=JobStatus.QUEUED,
        owner="o",
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
        deadline_at=now + 600,
        sla=300.0,
    )
    store.create(job, CapturedRequest("POST", "/x"))
    claimed = store.claim(job.id, "far-away", heartbeat_at)
    assert claimed is not None
    return engine, store, claimed, clock


def test_a_worker_whose_clock_is_9s_behind_is_not_lost() -> None:
    """The verdict never subtracts a worker's heartbeat from our clock: 9 s of skew is fine."""
    engine, store, job, clock = engine_and_job(time.time() - 9.0)
    engine.liveness.landed()
    for i in range(20):
        seen = store.get(job.id, time.time())
        assert seen is not None
        assert drive(engine.apply_deadman(seen, time.time()), store).status is (
            JobStatus.PROCESSING
        )
        beats(engine.liveness, clock, BEAT)
        store.heartbeat(job.id, "far-away", time.time() - 9.0 + i * 0.001 + 0.001)
    final = store.get(job.id, time.time())
    assert final is not None and final.status is JobStatus.PROCESSING


def test_a_silent_worker_is_failed_worker_lost() -> None:
    """A lease unchanged for the window (with the store writable) ends worker-lost."""
    engine, store, job, clock = engine_and_job(time.time())
    engine.liveness.landed()
    assert drive(engine.apply_deadman(job, time.time()), store).status is JobStatus.PROCESSING
    beats(engine.liveness, clock, LOST_AFTER + 0.5)
    ended = drive(engine.apply_deadman(job, time.time()), store)
    assert ended.status is JobStatus.FAILED
    assert ended.error["type"].endswith("worker-lost")
    assert not engine.liveness.watching(job.id)


def test_a_beat_landing_after_the_read_keeps_the_job() -> None:
    """The fail is a compare-and-set on the lease watched: a late beat wins over the verdict."""
    engine, store, job, clock = engine_and_job(time.time())
    engine.liveness.landed()
    drive(engine.apply_deadman(job, time.time()), store)
    beats(engine.liveness, clock, LOST_AFTER + 0.5)
    read = store.get(job.id, time.time())  # the judge reads the stale lease ...
    assert read is not None
    assert store.heartbeat(job.id, "far-away", time.time() + 1) is not None  # ... a beat lands
    after = drive(engine.apply_deadman(read, time.time()), store)
    assert after.status is JobStatus.PROCESSING


def test_the_deadline_stays_a_wall_clock_promise() -> None:
    """Past deadline_at on the judge's clock a job fails deadline-exceeded at once."""
    engine, store, job, _clock = engine_and_job(time.time())
    ended = drive(engine.apply_deadman(job, job.deadline_at + 1), store)
    assert ended.status is JobStatus.FAILED
    assert ended.error["type"].endswith("deadline-exceeded")


def test_a_status_read_without_watch_history_declares_no_one_lost() -> None:
    """A process that never saw the job doesn't fail it on a read, however old its
    heartbeat by this process's wall clock: the read starts the watch."""
    engine, store, job, clock = engine_and_job(time.time() - 3600.0)
    beats(engine.liveness, clock, 60.0)  # a warm sweeper, its beats landing
    read = drive(engine.apply_deadman(job, time.time()), store)
    assert read.status is JobStatus.PROCESSING
    assert engine.liveness.watching(job.id)


def test_a_forked_child_starts_its_watch_afresh() -> None:
    """after_fork() forgets the parent's leases and writable time: the child waits a window."""
    w, clock = watch()
    w.landed()
    assert not w.lost(running())
    beats(w, clock, LOST_AFTER + 1)
    w.after_fork()
    assert w.writable_seconds == 0.0 and w.beats_landed == 0
    assert not w.watching("job-1")
    assert not w.lost(running())
