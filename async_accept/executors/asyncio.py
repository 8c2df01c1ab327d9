"""Run jobs as tasks on the server's event loop (ASGI apps)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import ConfigurationError, ExecutorError
from .base import BaseExecutor

if TYPE_CHECKING:
    from .base import JobHost


class AsyncioExecutor(BaseExecutor):
    """Each job is a task on the server's loop, at most ``max_concurrency`` at once.

    Cancel really cancels: a running job's task gets ``CancelledError`` at
    its next ``await``. Sync endpoints still run in the framework's thread
    pool, as they would in a request.

    A job holds its slot until its handler returned, whatever its deadline
    says: a handler that swallows the cancel at its deadline, or waits on a
    thread (which can't be interrupted), is a zombie (zombies.py) and keeps its
    slot, so never more than ``max_concurrency`` handlers run at once.
    """

    name = "asyncio"
    supports = frozenset({"asgi"})

    def __init__(self, max_concurrency: int = 100) -> None:
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ConfigurationError(
                f"max_concurrency={max_concurrency!r} must be a whole number >= 1"
            )
        self.max_concurrency = max_concurrency
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runtime: JobHost | None = None
        self._sem: asyncio.Semaphore | None = None
        self._closed = False

    def start(self, runtime: JobHost, loop: asyncio.AbstractEventLoop | None) -> None:
        if loop is None:
            raise ConfigurationError(
                "the asyncio executor runs jobs on an ASGI server's event loop; "
                "use executor='thread' for WSGI apps"
            )
        self._runtime = runtime
        self._loop = loop
        self._closed = False

    def after_fork(self) -> None:
        self._tasks = {}
        self._loop = None
        self._sem = None

    def submit(self, job_id: str) -> None:
        loop = self._loop
        if self._closed or loop is None or loop.is_closed():
            raise ExecutorError("the asyncio executor is not running")
        if job_id in self._tasks:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn(job_id)
        else:
            loop.call_soon_threadsafe(self._spawn, job_id)

    def _spawn(self, job_id: str) -> None:
        if job_id in self._tasks or self._runtime is None:
            return
        task = asyncio.ensure_future(self._run(job_id))
        self._tasks[job_id] = task

        def forget(_task: asyncio.Task[None], job_id: str = job_id) -> None:
            self._tasks.pop(job_id, None)

        task.add_done_callback(forget)

    async def _run(self, job_id: str) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_concurrency)
        async with self._sem:
            assert self._runtime is not None
            if self._runtime.draining:
                return  # stopping: the job stays queued in the store for the next process
            await self._runtime.arun_job(job_id)

    def is_pending(self, job_id: str) -> bool:
        return job_id in self._tasks

    def cancel(self, job_id: str) -> None:
        """The runtime cancels the job's handler itself; nothing more to do here."""

    def shutdown(self, timeout: float) -> None:
        self._closed = True

    async def ashutdown(self, timeout: float) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        if not tasks:
            return
        runtime = self._runtime
        # Zombies (past their deadline, their jobs ended) are not waited for: they may never end.
        waited = [
            task
            for job_id, task in list(self._tasks.items())
            if runtime is None or not runtime.is_zombie(job_id)
        ]
        if waited:
            await asyncio.wait(waited, timeout=timeout)
        pending = {t for t in tasks if not t.done()}
        for t in pending:
            t.cancel()
        if pending:
            # Cancelled jobs are handed back to the queue; bounded so shutdown can't hang.
            await asyncio.wait(pending, timeout=max(1.0, timeout))
