"""The asyncio twin of the Redis store (``RedisStore.aio``), on ``redis.asyncio``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...errors import MissingDependencyError, StoreError
from ...job import CapturedRequest, CapturedResponse, Job, JobStatus
from .._perloop import PerLoop
from ..base import EVERY, AsyncStoreBase, Outcome, OwnedQuery, Progress
from .layout import _Call, _Layout, _store_error
from .scripts import SOURCES

try:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without redis installed
    raise MissingDependencyError("The Redis store", "redis", "redis") from exc

T = TypeVar("T")


#: Round trips one event loop keeps in flight to Redis at most. Calls made while
#: that many are out wait, then go together in one pipeline (one write, one
#: read, one pooled connection): under load, many requests share a round trip.
_MAX_IN_FLIGHT = 4
#: Calls sent in one pipeline at most.
_PIPELINE_MAX = 64


_CLOSE_TIMEOUT = 5.0

# -- the asyncio twin ---------------------------------------------------------------------


@dataclass
class _LoopClient:
    """The async client (and its scripts) one event loop uses."""

    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    scripts: dict[str, AsyncScript]
    #: round trips in flight (direct calls and pipelines)
    active: int = 0
    #: calls waiting for a pipeline, with the futures their callers await
    pending: list[tuple[_Call[Any], asyncio.Future[Any]]] = field(default_factory=list)
    drains: set[asyncio.Task[None]] = field(default_factory=set)


class AsyncRedisStore(AsyncStoreBase):
    """The awaitable face of :class:`RedisStore` (``store.aio``), on ``redis.asyncio``.

    asyncio connections belong to the event loop that opened them, so each
    loop that uses the store gets its own client (see :class:`PerLoop`), closed
    when its loop shuts down, when :meth:`aclose` is awaited on that loop, or by
    :meth:`RedisStore.close`, whichever comes first.
    """

    def __init__(self, layout: _Layout, factory: Callable[[], aioredis.Redis]) -> None:
        self._layout = layout
        self._factory = factory
        self._clients: PerLoop[_LoopClient] = PerLoop(
            self._open,
            self._close,
            closed_error=lambda: StoreError("Redis store: the store was closed"),
            close_timeout=_CLOSE_TIMEOUT,
        )

    def __repr__(self) -> str:
        return f"<AsyncRedisStore namespace={self._layout.ns!r}>"

    @property
    def _loops(self) -> dict[asyncio.AbstractEventLoop, _LoopClient]:
        return self._clients.by_loop

    def _open(self, loop: asyncio.AbstractEventLoop) -> _LoopClient:
        client = self._factory()
        scripts = {name: client.register_script(src) for name, src in SOURCES.items()}
        return _LoopClient(loop, client, scripts)

    @staticmethod
    async def _close(lc: _LoopClient) -> None:
        with contextlib.suppress(RedisError, OSError):
            await lc.client.aclose(close_connection_pool=True)

    async def _connection(self) -> _LoopClient:
        return await self._clients.get()

    async def _run(self, call: _Call[T]) -> T:
        try:
            lc = await self._connection()
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        if lc.active >= _MAX_IN_FLIGHT:
            # Busy: wait for a pipeline to carry this call with the others.
            future: asyncio.Future[Any] = lc.loop.create_future()
            lc.pending.append((call, future))
            return call.parse(await future)
        lc.active += 1
        try:
            raw = await self._send_one(lc, call)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        finally:
            lc.active -= 1
            if lc.pending and lc.active < _MAX_IN_FLIGHT:
                self._start_drain(lc)
        return call.parse(raw)

    @staticmethod
    async def _send_one(lc: _LoopClient, call: _Call[Any]) -> Any:
        if call.script is None:
            return await lc.client.hmget(call.keys[0], call.args)
        return await lc.scripts[call.script](keys=call.keys, args=call.args)

    def _start_drain(self, lc: _LoopClient) -> None:
        lc.active += 1
        task = lc.loop.create_task(self._drain(lc))
        lc.drains.add(task)
        task.add_done_callback(lc.drains.discard)

    async def _drain(self, lc: _LoopClient) -> None:
        """Send the waiting calls, a pipeline at a time, until none is left."""
        try:
            while lc.pending:
                batch = lc.pending[:_PIPELINE_MAX]
                del lc.pending[:_PIPELINE_MAX]
                await self._send_pipeline(lc, batch)
        finally:
            lc.active -= 1
            if lc.pending and lc.active < _MAX_IN_FLIGHT and not lc.loop.is_closed():
                self._start_drain(lc)

    async def _send_pipeline(
        self, lc: _LoopClient, batch: list[tuple[_Call[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            pipe = lc.client.pipeline(transaction=False)
            for call, _ in batch:
                if call.script is None:
                    pipe.hmget(call.keys[0], call.args)
                else:
                    sha = lc.scripts[call.script].sha
                    pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
            results = await pipe.execute(raise_on_error=False)
            for i, raw in enumerate(results):
                if isinstance(raw, NoScriptError):  # Redis restarted or flushed its scripts
                    try:
                        results[i] = await self._send_one(lc, batch[i][0])
                    except (RedisError, OSError) as exc:
                        results[i] = exc
        except (RedisError, OSError) as exc:
            results = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is closing): tell the waiters
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreError("Redis store: the call was cancelled"))
            raise
        for (_, future), raw in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled; the command ran anyway
                continue
            if isinstance(raw, (RedisError, OSError)):
                error = _store_error(raw)
                error.__cause__ = raw
                future.set_exception(error)
            else:
                future.set_result(raw)

    async def aclose(self) -> None:
        """Close the client of the running event loop (other loops close on shutdown)."""
        await self._clients.aclose()

    def _close_from_sync(self) -> None:
        self._clients.close_all()

    async def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return await self._run(self._layout.create(job, request))

    async def get(self, job_id: str, now: float) -> Job | None:
        return await self._run(self._layout.get(job_id, now))

    async def get_request(self, job_id: str) -> CapturedRequest | None:
        return await self._run(self._layout.get_request(job_id))

    async def get_result(self, job_id: str) -> CapturedResponse | None:
        return await self._run(self._layout.get_result(job_id))

    async def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._run(self._layout.claim(job_id, worker_id, now))

    async def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        return await self._run(self._layout.claim_with_request(job_id, worker_id, now))

    async def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._run(self._layout.heartbeat(job_id, worker_id, now))

    async def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        return await self._run(self._layout.set_progress(job_id, worker_id, now, progress))

    async def _finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> Job | None:
        return await self._run(self._layout.finish(job_id, worker_id, now, outcome))

    async def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        return await self._run(self._layout.fail(job_id, expected, now, error, lease))

    async def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        return await self._run(self._layout.cancel(job_id, now))

    async def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        return await self._run(self._layout.requeue(job_id, worker_id, now, lease))

    async def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> list[str]:
        if not job_ids:
            return []
        return await self._run(self._layout.mark_dispatched(job_ids, now, stale_before))

    async def retry(self, job_id: str, now: float) -> Job | None:
        return await self._run(self._layout.retry(job_id, now))

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        return await self._run(self._layout.list_jobs(status, limit, created_before, newest))

    async def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        if query.limit <= 0:
            return []
        return await self._run(self._layout.list_owned(owner, now, query))

    async def count_by_status(self) -> dict[JobStatus, int]:
        return await self._run(self._layout.count_by_status())

    async def purge_expired(self, now: float) -> int:
        total, more = 0, True
        while more:
            purged, more = await self._run(self._layout.purge_batch(now))
            total += purged
        return total

    async def delete(self, job_id: str) -> bool:
        return await self._run(self._layout.delete(job_id))

    async def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        await self._run(self._layout.worker_heartbeat(worker_id, now, info))

    async def list_workers(self, now: float) -> list[dict[str, Any]]:
        return await self._run(self._layout.list_workers(now))
