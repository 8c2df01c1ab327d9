"""The awaitable faces of a blocking-API store (what :func:`~async_accept.stores.as_async`
returns for a store without its own ``aio``).

Every method of the contract is written out once, in :class:`ForwardingAsyncStore`,
as a call of the store's method through :meth:`ForwardingAsyncStore._call`; the
faces differ only in how that call is made: directly (a store that never blocks)
or in a thread pool (one that does I/O). The store's method is looked up on each
call, so a method replaced at run time (tests, instrumentation) is honoured.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from ..job import CapturedRequest, CapturedResponse, Job, JobStatus
from .base import EVERY, AsyncStoreBase, Outcome, OwnedQuery, Progress, Store

__all__ = ["ForwardingAsyncStore", "InlineAsyncStore", "ThreadedAsyncStore"]

P = ParamSpec("P")
T = TypeVar("T")


class ForwardingAsyncStore(AsyncStoreBase):
    """The contract, awaitable, over a synchronous store; subclasses say how a
    call is made (:meth:`_call`)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    async def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return await self._call(self._store.create, job, request)

    async def get(self, job_id: str, now: float) -> Job | None:
        return await self._call(self._store.get, job_id, now)

    async def get_request(self, job_id: str) -> CapturedRequest | None:
        return await self._call(self._store.get_request, job_id)

    async def get_result(self, job_id: str) -> CapturedResponse | None:
        return await self._call(self._store.get_result, job_id)

    async def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._call(self._store.claim, job_id, worker_id, now)

    async def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        return await self._call(self._store.claim_with_request, job_id, worker_id, now)

    async def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._call(self._store.heartbeat, job_id, worker_id, now)

    async def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        return await self._call(self._store.set_progress, job_id, worker_id, now, *progress)

    async def _finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> Job | None:
        return await self._call(self._store.finish, job_id, worker_id, now, *outcome)

    async def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        if lease is None:
            return await self._call(self._store.fail, job_id, expected, now, error)
        return await self._call(self._store.fail, job_id, expected, now, error, lease)

    async def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        return await self._call(self._store.cancel, job_id, now)

    async def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        if lease is None:
            return await self._call(self._store.requeue, job_id, worker_id, now)
        return await self._call(self._store.requeue, job_id, worker_id, now, lease)

    async def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> list[str]:
        return await self._call(self._store.mark_dispatched, job_ids, now, stale_before)

    async def retry(self, job_id: str, now: float) -> Job | None:
        return await self._call(self._store.retry, job_id, now)

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        return await self._call(self._store.list_jobs, status, limit, created_before, newest)

    async def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        return await self._call(self._store.list_owned, owner, now, query)

    async def count_by_status(self) -> dict[JobStatus, int]:
        return await self._call(self._store.count_by_status)

    async def purge_expired(self, now: float) -> int:
        return await self._call(self._store.purge_expired, now)

    async def delete(self, job_id: str) -> bool:
        return await self._call(self._store.delete, job_id)

    async def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        return await self._call(self._store.worker_heartbeat, worker_id, now, info)

    async def list_workers(self, now: float) -> list[dict[str, Any]]:
        return await self._call(self._store.list_workers, now)


class InlineAsyncStore(ForwardingAsyncStore):
    """Async face of a non-blocking (in-memory) store: calls it directly."""

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return fn(*args, **kwargs)


class ThreadedAsyncStore(ForwardingAsyncStore):
    """Async face of a blocking store: every call runs in a small thread pool,
    so the event loop never waits on disk or network I/O."""

    def __init__(self, store: Store, pool: ThreadPoolExecutor) -> None:
        super().__init__(store)
        self._pool = pool

    def _executor(self) -> ThreadPoolExecutor:
        return self._pool

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(
                self._executor(), functools.partial(fn, *args, **kwargs)
            )
        return await loop.run_in_executor(self._executor(), fn, *args)
