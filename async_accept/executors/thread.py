"""Run jobs in a pool of daemon threads in the web process."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, ExecutorError
from .base import BaseExecutor

if TYPE_CHECKING:
    from .base import JobHost

log = logging.getLogger("async_accept")

_STOP = ""


class ThreadExecutor(BaseExecutor):
    """Jobs run in ``max_workers`` daemon threads of this process.

    A thread can't be interrupted: a handler past its job's deadline (a zombie,
    see zombies.py) keeps its thread until it returns, and no other job runs
    there meanwhile, so never more than ``max_workers`` handlers run at once.
    Daemon threads, not ``concurrent.futures``: at interpreter exit a pool
    would wait for every queued job, hanging a server's shutdown. Jobs still
    queued when the process stops stay ``queued`` in the store and are picked
    up again when a process starts (or failed by the deadman switch).
    """

    name = "thread"

    def __init__(self, max_workers: int = 8) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers={max_workers!r} must be a whole number >= 1")
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._runtime: JobHost | None = None
        self._closed = False

    def start(self, runtime: JobHost, loop: asyncio.AbstractEventLoop | None) -> None:
        self._runtime = runtime
        self._closed = False
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.max_workers:
            t = threading.Thread(
                target=self._work, name=f"async-accept-worker-{len(self._threads)}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def after_fork(self) -> None:
        self._queue = queue.SimpleQueue()
        self._pending = set()
        self._lock = threading.Lock()
        self._threads = []

    def submit(self, job_id: str) -> None:
        if self._closed or self._runtime is None:
            raise ExecutorError("the thread executor is not running")
        with self._lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put(job_id)

    def is_pending(self, job_id: str) -> bool:
        return job_id in self._pending

    def cancel(self, job_id: str) -> None:
        """Threads can't be interrupted: the handler sees ``cancel_requested``."""

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id == _STOP:
                return
            runtime = self._runtime
            try:
                # Stopping: the job stays queued in the store for the next process.
                if runtime is not None and not runtime.draining:
                    runtime.run_job(job_id)
            except BaseException:  # the pool keeps its thread whatever happens
                log.exception("async_accept: job %s crashed its worker thread", job_id)
            finally:
                with self._lock:
                    self._pending.discard(job_id)

    def shutdown(self, timeout: float) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        # One deadline for all: a thread held by a zombie would make each join wait in turn.
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
