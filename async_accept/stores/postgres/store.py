"""The PostgreSQL job store: shared by every process, on any machine, that reaches the database.

Layout (schema ``?schema=``, default ``async_accept``; versioned, see
:mod:`.connection`):

``jobs``
    One row per job, one column per :class:`~async_accept.job.Job` field
    (``meta`` as ``jsonb``, ``error`` as JSON text), plus ``seq``, the creation
    order. A status read is one primary-key lookup that never touches a body.
``job_bodies``
    The captured request and the handler's response (meta JSON + ``bytea``),
    deleted with their job (``ON DELETE CASCADE``).
``workers``
    The worker registry that the health endpoint reads.

Every state change is one statement (data-modifying CTEs where a change
touches two tables: create writes the job and its request, finish the state
and the result) and compare-and-set: ``UPDATE ... WHERE id = %s AND status =
...``. A claim locks the row with ``FOR UPDATE SKIP LOCKED``, so racing
claimers never wait for each other and exactly one wins. Connections are
autocommit, so no transaction is ever held open between round trips.

:class:`PostgresStore` is blocking (psycopg + ``psycopg_pool``);
:attr:`PostgresStore.aio` is the :class:`AsyncPostgresStore` twin on psycopg's
own asyncio connections, one pool per event loop. Every failure of the
database surfaces as :class:`~async_accept.errors.StoreError` (a 503 on the
request path); pools drop broken connections and reconnect by themselves, so
a database restart needs no restart of the web or worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from ...errors import StoreError
from ...job import CapturedRequest, CapturedResponse, Job, JobStatus
from .._perloop import PerLoop
from ..base import EVERY, WORKER_RETENTION, AsyncStoreBase, Outcome, OwnedQuery, Progress, StoreBase
from ..outbox_base import Outbox
from . import connection as pg
from .batch import AsyncBatcher, Batcher, Create, create_many, create_many_async
from .batch import Outcome as BatchOutcome
from .connection import PostgresSettings, parse_url
from .outbox import PostgresOutbox, aend_with_notices, end_with_notices, insert_notice
from .signals import PostgresChangeSignal, QueueListener
from .sql import (
    Statements,
    claimed,
    counts,
    dumps,
    finish_query,
    in_order,
    list_query,
    one,
    owned_query,
    progress_args,
    row_to_job,
    workers,
)

__all__ = ["AsyncPostgresStore", "PostgresStore"]

log = logging.getLogger("async_accept")

T = TypeVar("T")
Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]

#: Rows deleted per statement by ``purge_expired``: each batch commits on its own,
#: so a large purge never holds many row locks for long.
PURGE_BATCH = 500
_CLOSE_TIMEOUT = 5.0

#: Pools inherited through ``fork()``: kept referenced and never closed, since
#: closing (or garbage-collecting) a connection inherited from the parent would
#: end the parent's session on the shared socket.
_FORK_ORPHANS: list[Any] = []


def _store_error(settings: PostgresSettings, exc: BaseException) -> StoreError:
    return StoreError(f"PostgreSQL store ({settings.schema}): {type(exc).__name__}: {exc}")


def _transient(exc: BaseException) -> bool:
    """A failure of the connection itself (not a timeout waiting for one): worth one
    more try on another connection when the call is safe to repeat."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, (psycopg_pool.PoolTimeout, pg.PoolTimeout)
    )


def _wrapped(settings: PostgresSettings, outs: list[BatchOutcome]) -> list[BatchOutcome]:
    """A batch's outcomes, the database's refusals as StoreError."""
    return [_store_error(settings, out) if isinstance(out, psycopg.Error) else out for out in outs]


# -- the blocking store -------------------------------------------------------------------------


class PostgresStore(StoreBase):
    """Jobs in PostgreSQL, shared by every process on every machine that reaches it.

    Build it from a URL (``resolve_store("postgresql://user@host/db?schema=jobs")``
    or :meth:`from_url`). The tables are created on first use (``?migrate=false``
    leaves that to ``async-accept db upgrade``). :attr:`aio` is the awaitable twin.
    """

    shared = True
    blocking = True

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.schema = settings.schema
        self.channel = settings.channel
        self._sql = Statements(settings.schema)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._ready = False
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        #: the statement writing an ended job's notice, once default_outbox() made the
        #: outbox beside the jobs: from then on it runs in the transaction of each end
        self._notice_sql: str | None = None
        self._creates: Batcher[Create, tuple[Job, bool]] | None = None
        self._creates_pid = self._pid
        #: The native asyncio face (psycopg's async connections), picked up by ``as_async()``.
        self.aio = AsyncPostgresStore(self)
        try:
            self._ensure_schema()
        except StoreError as exc:
            # Not reachable now: every call tries again, so a web process may start
            # before its database does.
            log.warning("async_accept: PostgreSQL store not ready yet: %s", exc)

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """A store on a ``postgresql://`` (or ``postgres://``) URL (see ``parse_url``)."""
        return cls(parse_url(url))

    def __repr__(self) -> str:
        return f"<PostgresStore {self.settings.redacted()} schema={self.schema!r}>"

    # -- connections ----------------------------------------------------------------------

    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        """This process's connection pool (a new one after a fork)."""
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._closed:
                raise StoreError(f"{self!r} is closed")
            if self._pid != os.getpid():
                _FORK_ORPHANS.append(self._pool)
                self._pool = None
                self._pid = os.getpid()
            if self._pool is None:
                self._pool = pg.sync_pool(self.settings)
            return self._pool

    def _ensure_schema(self) -> None:
        try:
            with self.pool().connection() as conn:
                pg.ensure_schema(conn, self.settings)
        except psycopg.Error as exc:
            raise _store_error(self.settings, exc) from exc
        self._ready = True

    def _run(self, fn: Callable[[Conn], T], *, repeatable: bool = False) -> T:
        """``fn`` on a pooled connection; database failures become StoreError.

        A call that is safe to repeat (reads, create) gets a second try when its
        connection turned out dead (the server restarted since it was opened).
        """
        if not self._ready:
            self._ensure_schema()
        pool = self.pool()
        for attempt in (1, 2):
            try:
                with pool.connection() as conn:
                    return fn(conn)
            except psycopg.Error as exc:
                if _transient(exc):
                    with contextlib.suppress(psycopg.Error):
                        pool.check()  # drop the other connections that died with it
                    if repeatable and attempt == 1:
                        continue
                raise _store_error(self.settings, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _rows(self, query: str, args: Sequence[Any], *, repeatable: bool = False) -> list[Any]:
        def q(conn: Conn) -> list[Any]:
            return conn.execute(query, args).fetchall()

        return self._run(q, repeatable=repeatable)

    def _count(self, query: str, args: Sequence[Any]) -> int:
        def q(conn: Conn) -> int:
            return conn.execute(query, args).rowcount

        return self._run(q)

    # -- the contract ---------------------------------------------------------------------

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        # Group commit: creates racing in this process share one statement.
        return self._batcher().submit((job, request))

    def _batcher(self) -> Batcher[Create, tuple[Job, bool]]:
        creates = self._creates
        if creates is None or self._creates_pid != os.getpid():
            with self._lock:
                if self._creates is None or self._creates_pid != os.getpid():
                    self._creates = Batcher(self._create_many)
                    self._creates_pid = os.getpid()
                creates = self._creates
        return creates

    def _create_many(self, creates: list[Create]) -> list[BatchOutcome]:
        sql = self._sql
        outs = self._run(lambda conn: create_many(conn, sql, creates), repeatable=True)
        return _wrapped(self.settings, outs)

    def get(self, job_id: str, now: float) -> Job | None:
        return one(self._rows(self._sql.get, (job_id, now), repeatable=True))

    def get_request(self, job_id: str) -> CapturedRequest | None:
        rows = self._rows(self._sql.body, (job_id, "request"), repeatable=True)
        return CapturedRequest.from_meta_json(rows[0][0], bytes(rows[0][1])) if rows else None

    def get_result(self, job_id: str) -> CapturedResponse | None:
        rows = self._rows(self._sql.body, (job_id, "result"), repeatable=True)
        return CapturedResponse.from_meta_json(rows[0][0], bytes(rows[0][1])) if rows else None

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return one(self._rows(self._sql.claim, (worker_id, now, now, now, job_id, now)))

    def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        args = (worker_id, now, now, now, job_id, now)
        return claimed(self._rows(self._sql.claim_with_request, args))

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return one(self._rows(self._sql.heartbeat, (now, job_id, worker_id, now)))

    def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        return one(self._rows(self._sql.progress, progress_args(job_id, worker_id, now, progress)))

    def _finish(self, job_id: str, worker_id: str, now: float, outcome: Outcome) -> Job | None:
        query, args = finish_query(self._sql, job_id, worker_id, now, outcome)
        return self._ending(query, args, now)

    def _ending(self, query: str, args: Sequence[Any], now: float) -> Job | None:
        """A statement that may end a job, and the ended job's webhook notices
        written in the same transaction (when the outbox is beside the jobs)."""
        insert = self._notice_sql
        if insert is None:
            return one(self._rows(query, args))
        return self._run(lambda conn: end_with_notices(conn, (query, args), insert, now))

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        states = list(dict.fromkeys(JobStatus(s).value for s in expected))
        if not states:
            return None
        args = (dumps(error), now, now, job_id, states, now, lease, lease)
        return self._ending(self._sql.fail, args, now)

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        job = self._ending(self._sql.cancel, (now, now, job_id, now), now)
        if job is not None:
            return job, True
        return self.get(job_id, now), False

    def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        args = (now, now, job_id, worker_id, now, lease, lease)
        return self._ending(self._sql.requeue, args, now)

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        if not job_ids:
            return []
        mark = Jsonb(float(now))
        rows = self._rows(self._sql.mark_dispatched, (list(job_ids), now, stale_before, mark))
        return in_order(job_ids, rows)

    def retry(self, job_id: str, now: float) -> Job | None:
        return one(self._rows(self._sql.retry, (now, now, job_id, now)))

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        query, args = list_query(self._sql, status, limit, created_before, newest)
        return [row_to_job(r) for r in self._rows(query, args, repeatable=True)]

    def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        sql, args = owned_query(self._sql, owner, now, query)
        return [row_to_job(r) for r in self._rows(sql, args, repeatable=True)]

    def count_by_status(self) -> dict[JobStatus, int]:
        return counts(self._rows(self._sql.count, (), repeatable=True))

    def purge_expired(self, now: float) -> int:
        total = 0
        while True:
            n = self._count(self._sql.purge, (now, PURGE_BATCH))
            total += n
            if n < PURGE_BATCH:
                return total

    def delete(self, job_id: str) -> bool:
        return self._count(self._sql.delete, (job_id,)) > 0

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        self._count(self._sql.worker_heartbeat, (worker_id, now, dumps(info)))

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        cutoff = now - WORKER_RETENTION
        return workers(self._rows(self._sql.list_workers, (cutoff, cutoff)))

    # -- the store as a queue (executor="store") -------------------------------------------

    def queued_ids(self, now: float, limit: int) -> list[str]:
        """Ids of queued jobs (not cancel-requested, live), oldest first."""
        return [r[0] for r in self._rows(self._sql.queued, (now, limit), repeatable=True)]

    #: The database wakes the workers itself: a trigger (schema 4) sends the ``NOTIFY``
    #: in the very transaction that queues a job (create, retry, requeue), so the store
    #: executor sends no signal of its own (a round trip and a thread less per batch).
    #: Only for jobs a store worker claims (schema 5: ``meta["executor"]`` is "store"
    #: or absent): an in-process or broker executor's jobs queue without one.
    announces_queued = True

    def notify_queued(self) -> None:
        """Wake the workers listening for queued jobs (``NOTIFY``) now; queueing a job
        does it by itself (:attr:`announces_queued`)."""
        self._rows(self._sql.notify, (self.channel,))

    def listener(self) -> QueueListener:
        """A connection of its own that ``LISTEN``\\ s for :meth:`notify_queued`."""
        return QueueListener(self.settings)

    def change_signal(self) -> PostgresChangeSignal:
        """Job changes from every process (``LISTEN``; a trigger sends them)."""
        return PostgresChangeSignal(self.settings)

    def instance_id(self) -> str:
        """The random name this schema of this database got when it was created: the
        same for every process that reaches it, however it names the server."""
        rows = self._rows(f"SELECT id FROM {self._sql.schema_sql}.instance", (), repeatable=True)
        return str(rows[0][0])

    # -- learned run times (timings.py) ---------------------------------------------

    def load_run_times(self) -> dict[str, str]:
        return dict(self._rows(self._sql.load_run_times, (), repeatable=True))

    def save_run_time(self, route: str, data: str) -> None:
        self._count(self._sql.save_run_time, (route, data))

    def default_outbox(self) -> Outbox:
        """The webhook outbox beside the jobs: same database, schema and pool. From
        now on each statement that ends a job writes its notices in its transaction."""
        self._notice_sql = insert_notice(self.schema)
        return PostgresOutbox(self.schema, self._rows, self._count)

    def close(self) -> None:
        """Close this process's pools (blocking and asyncio). Unusable afterwards."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            forked = self._pid != os.getpid()
        self.aio._close_from_sync()
        if pool is not None:
            if forked:
                _FORK_ORPHANS.append(pool)  # the parent's: not ours to close
            else:
                pool.close(timeout=_CLOSE_TIMEOUT)


# -- the asyncio twin ---------------------------------------------------------------------------


@dataclass
class _LoopPool:
    """What one event loop uses: its connections and its group commit of creates."""

    pool: pg.AsyncConnections
    creates: AsyncBatcher[Create, tuple[Job, bool]]


class AsyncPostgresStore(AsyncStoreBase):
    """The awaitable face of :class:`PostgresStore` (``store.aio``), on psycopg's
    asyncio connections.

    Asyncio connections belong to the event loop that opened them, so each loop
    that uses the store gets its own pool (see :class:`PerLoop`), closed when
    that loop shuts down, when :meth:`aclose` is awaited on it, or by
    :meth:`PostgresStore.close`.
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._sql = store._sql
        self._pools: PerLoop[_LoopPool] = PerLoop(
            self._open,
            self._close,
            closed_error=lambda: StoreError(f"{self._store!r} is closed"),
            forked=lambda inherited: _FORK_ORPHANS.extend(lp.pool for lp in inherited),
            close_timeout=_CLOSE_TIMEOUT + 1,
        )

    def __repr__(self) -> str:
        return f"<AsyncPostgresStore schema={self._store.schema!r}>"

    def _open(self, loop: asyncio.AbstractEventLoop) -> _LoopPool:
        return _LoopPool(pg.AsyncConnections(self._store.settings), AsyncBatcher(self._create_many))

    @staticmethod
    async def _close(lp: _LoopPool) -> None:
        await lp.pool.close()

    async def _pool(self) -> pg.AsyncConnections:
        if self._store._closed:
            raise StoreError(f"{self._store!r} is closed")
        return (await self._pools.get()).pool

    async def _run(self, fn: Callable[[AConn], Awaitable[T]], *, repeatable: bool = False) -> T:
        store = self._store
        if not store._ready:
            await asyncio.to_thread(store._ensure_schema)
        pool = await self._pool()
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    return await fn(conn)
            except psycopg.Error as exc:
                if _transient(exc):
                    await pool.drop_idle()
                    if repeatable and attempt == 1:
                        continue
                raise _store_error(store.settings, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _rows(
        self, query: str, args: Sequence[Any], *, repeatable: bool = False
    ) -> list[Any]:
        async def q(conn: AConn) -> list[Any]:
            cur = await conn.execute(query, args)
            return await cur.fetchall()

        return await self._run(q, repeatable=repeatable)

    async def _count(self, query: str, args: Sequence[Any]) -> int:
        async def q(conn: AConn) -> int:
            return (await conn.execute(query, args)).rowcount

        return await self._run(q)

    async def aclose(self) -> None:
        """Close the pool of the running event loop (other loops close on shutdown)."""
        await self._pools.aclose()

    def _close_from_sync(self) -> None:
        self._pools.close_all()

    # -- the contract ---------------------------------------------------------------------

    async def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        if self._store._closed:
            raise StoreError(f"{self._store!r} is closed")
        return await (await self._pools.get()).creates.submit((job, request))

    async def _create_many(self, creates: list[Create]) -> list[BatchOutcome]:
        sql = self._sql

        async def q(conn: AConn) -> list[BatchOutcome]:
            return await create_many_async(conn, sql, creates)

        return _wrapped(self._store.settings, await self._run(q, repeatable=True))

    async def get(self, job_id: str, now: float) -> Job | None:
        return one(await self._rows(self._sql.get, (job_id, now), repeatable=True))

    async def get_request(self, job_id: str) -> CapturedRequest | None:
        rows = await self._rows(self._sql.body, (job_id, "request"), repeatable=True)
        return CapturedRequest.from_meta_json(rows[0][0], bytes(rows[0][1])) if rows else None

    async def get_result(self, job_id: str) -> CapturedResponse | None:
        rows = await self._rows(self._sql.body, (job_id, "result"), repeatable=True)
        return CapturedResponse.from_meta_json(rows[0][0], bytes(rows[0][1])) if rows else None

    async def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return one(await self._rows(self._sql.claim, (worker_id, now, now, now, job_id, now)))

    async def claim_with_request(
        self, job_id: str, worker_id: str, now: float
    ) -> tuple[Job, CapturedRequest | None] | None:
        args = (worker_id, now, now, now, job_id, now)
        return claimed(await self._rows(self._sql.claim_with_request, args))

    async def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return one(await self._rows(self._sql.heartbeat, (now, job_id, worker_id, now)))

    async def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        args = progress_args(job_id, worker_id, now, progress)
        return one(await self._rows(self._sql.progress, args))

    async def _finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> Job | None:
        query, args = finish_query(self._sql, job_id, worker_id, now, outcome)
        return await self._ending(query, args, now)

    async def _ending(self, query: str, args: Sequence[Any], now: float) -> Job | None:
        """The awaited twin of :meth:`PostgresStore._ending`."""
        insert = self._store._notice_sql
        if insert is None:
            return one(await self._rows(query, args))
        return await self._run(lambda conn: aend_with_notices(conn, (query, args), insert, now))

    async def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        states = list(dict.fromkeys(JobStatus(s).value for s in expected))
        if not states:
            return None
        args = (dumps(error), now, now, job_id, states, now, lease, lease)
        return await self._ending(self._sql.fail, args, now)

    async def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        job = await self._ending(self._sql.cancel, (now, now, job_id, now), now)
        if job is not None:
            return job, True
        return await self.get(job_id, now), False

    async def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        args = (now, now, job_id, worker_id, now, lease, lease)
        return await self._ending(self._sql.requeue, args, now)

    async def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> list[str]:
        if not job_ids:
            return []
        mark = Jsonb(float(now))
        args = (list(job_ids), now, stale_before, mark)
        return in_order(job_ids, await self._rows(self._sql.mark_dispatched, args))

    async def retry(self, job_id: str, now: float) -> Job | None:
        return one(await self._rows(self._sql.retry, (now, now, job_id, now)))

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        query, args = list_query(self._sql, status, limit, created_before, newest)
        return [row_to_job(r) for r in await self._rows(query, args, repeatable=True)]

    async def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        sql, args = owned_query(self._sql, owner, now, query)
        return [row_to_job(r) for r in await self._rows(sql, args, repeatable=True)]

    async def count_by_status(self) -> dict[JobStatus, int]:
        return counts(await self._rows(self._sql.count, (), repeatable=True))

    async def purge_expired(self, now: float) -> int:
        total = 0
        while True:
            n = await self._count(self._sql.purge, (now, PURGE_BATCH))
            total += n
            if n < PURGE_BATCH:
                return total

    async def delete(self, job_id: str) -> bool:
        return await self._count(self._sql.delete, (job_id,)) > 0

    async def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        await self._count(self._sql.worker_heartbeat, (worker_id, now, dumps(info)))

    async def list_workers(self, now: float) -> list[dict[str, Any]]:
        cutoff = now - WORKER_RETENTION
        return workers(await self._rows(self._sql.list_workers, (cutoff, cutoff)))
