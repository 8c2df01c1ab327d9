"""StoreWorker's rounds over a store that signals queued jobs: who looks, and when.

In-process fakes (no database): the store lists its queued jobs and counts the
looks; its listener returns when the test sends a notification.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from async_accept.executors.store import StoreWorker
from async_accept.job import Job, JobStatus
from tests.test_store_contract import make_job


class Listener:
    def __init__(self, notes: queue.Queue[bool]) -> None:
        self.notes = notes

    def wait(self, timeout: float) -> bool:
        try:
            return self.notes.get(timeout=timeout)
        except queue.Empty:
            return False

    def close(self) -> None:
        pass


class SignallingStore:
    """Queued jobs in a list; each look is counted with the thread that made it."""

    def __init__(self) -> None:
        self.queued: list[str] = []
        self.looks: list[str] = []
        self.notes: queue.Queue[bool] = queue.Queue()
        self.lock = threading.Lock()

    def list_jobs(self, status: JobStatus, limit: int, before: float | None) -> list[Job]:
        with self.lock:
            self.looks.append(threading.current_thread().name)
            return [make_job(time.time(), id=j) for j in self.queued[:limit]]

    def listener(self) -> Listener:
        return Listener(self.notes)

    def queue(self, *job_ids: str) -> None:
        with self.lock:
            self.queued.extend(job_ids)
        self.notes.put(True)  # the NOTIFY of the transaction that queued them


class Jobs:
    """start_job: each job a future the test ends; run_job must never be needed."""

    def __init__(self, store: SignallingStore) -> None:
        self.store = store
        self.started: dict[str, Future[Any]] = {}

    def start(self, job_id: str) -> Future[Any]:
        with self.store.lock:
            self.store.queued.remove(job_id)  # the claim
        future: Future[Any] = Future()
        self.started[job_id] = future
        return future

    def run(self, job_id: str) -> None:
        raise AssertionError("a job with a future needs no thread of the worker")


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


@contextlib.contextmanager
def _worker(
    owns: Callable[[Job], bool] | None = None,
) -> Iterator[tuple[StoreWorker, SignallingStore, Jobs]]:
    store = SignallingStore()
    jobs = Jobs(store)
    worker = StoreWorker(
        jobs.run,
        store,  # type: ignore[arg-type]
        concurrency=2,
        poll_interval=3600.0,  # no fallback poll during a test: every look is a signal's
        owns=owns,
        start_job=jobs.start,
    )
    thread = threading.Thread(target=worker.run, args=(5.0,), name="store-worker-loop")
    thread.start()
    try:
        _until(lambda: len(store.looks) == 1)  # the first look, at start
        yield worker, store, jobs
    finally:
        for future in jobs.started.values():
            if not future.done():
                future.set_result(None)
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def running() -> Iterator[tuple[StoreWorker, SignallingStore, Jobs]]:
    with _worker() as started:
        yield started


def test_a_notification_is_served_by_the_listener_thread(
    running: tuple[StoreWorker, SignallingStore, Jobs],
) -> None:
    """Jobs queued (a NOTIFY) are looked for and started by the listening thread itself,
    not by waking the worker's loop for them."""
    _, store, jobs = running
    store.queue("a")
    _until(lambda: "a" in jobs.started)
    assert store.looks[1:] == ["async-accept-listen"]


def test_a_started_job_holds_its_slot_until_its_future_ends(
    running: tuple[StoreWorker, SignallingStore, Jobs],
) -> None:
    """A job started through start_job keeps its slot while its future runs, with no
    thread of the worker's pool waiting for it; its end frees the slot."""
    worker, store, jobs = running
    store.queue("a")
    _until(lambda: "a" in jobs.started)
    assert set(worker._running) == {"a"} and worker._running["a"] is jobs.started["a"]
    jobs.started["a"].set_result(None)
    _until(lambda: not worker._running)


def test_a_job_end_looks_again_only_when_jobs_may_be_waiting(
    running: tuple[StoreWorker, SignallingStore, Jobs],
) -> None:
    """With a signalling store, a job's end costs no look when the last look found
    fewer jobs than free slots (new ones will signal); after a look that filled every
    slot, an end looks again and starts the job left waiting."""
    worker, store, jobs = running
    store.queue("a")
    _until(lambda: "a" in jobs.started)
    jobs.started["a"].set_result(None)
    _until(lambda: not worker._running)
    store.queue("b", "c", "d")  # three jobs, two slots
    _until(lambda: len(jobs.started) == 3)
    looks = len(store.looks)
    assert looks == 3  # at start, for "a", for "b"-"d": none after "a" ended
    first = next(j for j in ("b", "c", "d") if j in jobs.started)
    jobs.started[first].set_result(None)
    _until(lambda: len(jobs.started) == 4)
    assert len(store.looks) == looks + 1 and not store.queued


def test_a_job_end_looks_again_while_other_apps_jobs_are_queued() -> None:
    """Another app's jobs met by a look (never started here): a job's end looks again,
    since this app's own may be queued past them."""
    with _worker(owns=lambda job: not job.id.startswith("theirs")) as (worker, store, jobs):
        store.queue("theirs-1", "mine-1")
        _until(lambda: "mine-1" in jobs.started)
        looks = len(store.looks)
        jobs.started["mine-1"].set_result(None)
        _until(lambda: len(store.looks) == looks + 1)
        assert list(jobs.started) == ["mine-1"] and not worker._running
