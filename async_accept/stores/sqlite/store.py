"""The embedded default store: one SQLite file, shared by every process on the machine.

WAL journal (readers never block the writer), ``synchronous=NORMAL`` (durable
across process crashes; a power cut may lose the last transactions), a busy
timeout for concurrent writers, one connection per thread and per process
(re-opened after a fork). Every state change is a single conditional
``UPDATE ... WHERE id = ? AND status = ?`` (compare-and-set), so a job is
claimed once and a late worker can't overwrite a cancel or a deadman verdict.
Where a change needs more than one statement it runs in a ``BEGIN IMMEDIATE``
transaction.

Layout (``PRAGMA user_version`` = :data:`SCHEMA_VERSION`):

``jobs``
    One row per job, one column per :class:`~async_accept.job.Job` field
    (``error`` and ``meta`` as JSON). Rows stay small, so a status read is
    one primary-key lookup that never touches a body.
``job_bodies``
    The captured request (``kind = 'request'``) and the handler's response
    (``kind = 'result'``): meta JSON plus the body as a BLOB. Kept out of
    ``jobs`` because SQLite rewrites a whole row on every ``UPDATE``: a
    heartbeat would otherwise copy a 1 MiB upload each time. A trigger deletes
    them with their job.
``workers``
    The worker registry that the health endpoint reads.
``run_times``
    Each route's learned run time.

Every row carries its store's ``namespace`` (``''`` unless one was given) and
every statement is confined to it: apps sharing a file with namespaces of
their own never see, claim, sweep or purge each other's jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from ...errors import ConfigurationError, StoreError
from ...feed import DataVersionSignal
from ...job import CapturedRequest, CapturedResponse, Job, JobStatus
from ..adapters import ForwardingAsyncStore, ThreadedAsyncStore
from ..base import EVERY, WORKER_RETENTION, AsyncStore, Outcome, OwnedQuery, Progress, StoreBase
from ..namespaces import check_namespace
from ..outbox_base import Outbox
from .connection import SYNCHRONOUS_LEVELS, Connections
from .ops import SQLiteOps
from .outbox import SQLiteOutbox
from .schema import (
    _DELETE_REQUEST,
    _SCHEMA,
    _SELECT,
    OWNER1,
    OWNER2,
    SCHEMA_VERSION,
    _dumps,
    _immediate,
    _row_to_job,
    upgrade_from_2,
)

__all__ = ["HAS_RETURNING", "PURGE_BATCH", "AsyncSQLiteStore", "SQLiteStore"]

log = logging.getLogger("async_accept")

P = ParamSpec("P")
T = TypeVar("T")

#: ``UPDATE ... RETURNING`` needs SQLite 3.35 (2021); older ones (RHEL 9 ships
#: 3.34) read the row back inside a ``BEGIN IMMEDIATE`` transaction instead.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

#: Rows deleted per statement by :meth:`SQLiteStore.purge_expired`, so a large purge
#: never holds the write lock for long.
PURGE_BATCH = 500


class SQLiteStore(SQLiteOps, StoreBase):
    """Jobs in one SQLite file; safe for many threads and processes on one machine.

    ``path``'s folder must exist. ``timeout`` is how long a call waits for
    another process's write lock before failing with
    :class:`~async_accept.errors.StoreError`; ``synchronous`` is SQLite's
    ``PRAGMA synchronous`` (``NORMAL`` is durable across process crashes,
    ``FULL`` also across power cuts). ``namespace`` (1-64 letters, digits, ``_``,
    ``.``, ``-``; default none) keeps this store's jobs apart from those of other
    apps using the same file: ``sqlite:///jobs.db?namespace=billing``.
    """

    shared = True
    blocking = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        synchronous: str = "NORMAL",
        namespace: str | None = None,
    ) -> None:
        self.namespace = "" if namespace is None else check_namespace("SQLite", namespace)
        self.path = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise ConfigurationError(
                f"the SQLite store's folder {folder!r} does not exist: create it, or point "
                "store='sqlite:///...' at an existing folder"
            )
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS_LEVELS:
            raise ConfigurationError(
                f"SQLiteStore(synchronous={synchronous!r}): use OFF, NORMAL, FULL or EXTRA"
            )
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        self._returning = HAS_RETURNING
        self._conns = Connections(
            self.path,
            timeout=self.timeout,
            synchronous=self.synchronous,
            closed_message=f"{self!r} is closed",
            after_fork=self._forget_parent_connections,
        )
        self._init_group_commit()
        self._closed = False
        #: The awaitable face (picked up by ``as_async()``): writes join the group
        #: commit without tying up a thread each; reads run in two I/O threads.
        self.aio: AsyncStore = AsyncSQLiteStore(self)
        try:
            self._setup(self._conn())
        except sqlite3.Error as exc:
            self.close()
            raise ConfigurationError(f"cannot open the SQLite store {self.path!r}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        if self.namespace:
            return f"SQLiteStore({self.path!r}, namespace={self.namespace!r})"
        return f"SQLiteStore({self.path!r})"

    def _setup(self, conn: sqlite3.Connection) -> None:
        with _immediate(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.path} was written by a newer async_accept (schema {version} > "
                    f"{SCHEMA_VERSION}): upgrade async_accept, or point the store at another file"
                )
            if version == 2:
                upgrade_from_2(conn)
                log.info("async_accept: %s upgraded to schema %d", self.path, SCHEMA_VERSION)
            elif 0 < version < SCHEMA_VERSION:
                # Schema 1 only existed before the first release.
                raise ConfigurationError(
                    f"{self.path} holds jobs in a pre-release layout (schema {version}): "
                    "delete the file (it only holds short-lived jobs) and start again"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- connections ---------------------------------------------------------------

    def _forget_parent_connections(self) -> None:
        """In a forked child, once the parent's connections are dropped."""
        self._init_group_commit()  # another thread may have held its locks at fork time

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    # -- the contract ---------------------------------------------------------------

    # Each write is built by an ``_op_<name>`` method (the statements to run on a
    # connection) and run by ``_run``, or queued for the group commit by ``aio``.

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return self._run(self._op_create(job, request))

    def get(self, job_id: str, now: float) -> Job | None:
        return self._run(self._op_get(job_id, now), write=False)

    def get_request(self, job_id: str) -> CapturedRequest | None:
        return self._run(self._op_get_request(job_id), write=False)

    def get_result(self, job_id: str) -> CapturedResponse | None:
        return self._run(self._op_get_result(job_id), write=False)

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._op_claim(job_id, worker_id, now))

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._op_heartbeat(job_id, worker_id, now))

    def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        return self._run(self._op_set_progress(job_id, worker_id, now, progress))

    def _finish(self, job_id: str, worker_id: str, now: float, outcome: Outcome) -> Job | None:
        return self._run(self._op_finish(job_id, worker_id, now, outcome))

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        return self._run(self._op_fail(job_id, expected, now, error, lease))

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        # One statement for both cases. SET expressions see the row as it was, so
        # "status" inside the CASEs is the state before this update.
        sql = (
            "UPDATE jobs SET "
            "status = CASE status WHEN 'queued' THEN 'canceled' ELSE status END, "
            "finished_at = CASE status WHEN 'queued' THEN ? ELSE finished_at END, "
            "cancel_requested = 1, updated_at = ? "
            "WHERE id = ? AND namespace = ? AND expires_at > ? "
            "AND (status = 'queued' OR (status = 'processing' AND cancel_requested = 0))"
        )
        args = (now, now, job_id, self.namespace, now)
        job = self._run(self._ending(self._cas_op(job_id, sql, args), now))
        if job is not None:
            if job.status is JobStatus.CANCELED:  # it never runs: its request goes
                self._run(lambda conn: conn.execute(_DELETE_REQUEST, (job_id,)) and None)
            return job, True
        return self.get(job_id, now), False

    def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        return self._run(self._op_requeue(job_id, worker_id, now, lease))

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        return self._run(self._op_mark_dispatched(job_ids, now, stale_before)) if job_ids else []

    def retry(self, job_id: str, now: float) -> Job | None:
        sql = (
            "UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
            "started_at = NULL, finished_at = NULL, percent = NULL, message = NULL, "
            "eta = NULL, progress_at = NULL, error = NULL, result_status = NULL, "
            "result_location = NULL, updated_at = ?, deadline_at = ? + 2 * sla, "
            "meta = json_remove(meta, '$.dispatched_at') "
            "WHERE id = ? AND namespace = ? AND status = 'failed' AND cancel_requested = 0 "
            "AND expires_at > ?"
        )
        args = (now, now, job_id, self.namespace, now)

        def q(conn: sqlite3.Connection) -> Job | None:
            with _immediate(conn):
                job = self._cas(conn, job_id, sql, args)
                if job is not None:
                    conn.execute(
                        "DELETE FROM job_bodies WHERE job_id = ? AND kind = 'result'", (job_id,)
                    )
            return job

        return self._run(q)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
        newest: bool = False,
    ) -> list[Job]:
        where: list[str] = ["namespace = ?"]
        args: list[Any] = [self.namespace]
        if status is not None:
            where.append("status = ?")
            args.append(JobStatus(status).value)
        if created_before is not None:
            where.append("created_at < ?")
            args.append(created_before)
        sql = _SELECT + " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY created_at DESC, rowid DESC LIMIT ?"
            if newest
            else " ORDER BY created_at, rowid LIMIT ?"
        )
        args.append(max(0, int(limit)))

        def q(conn: sqlite3.Connection) -> list[Job]:
            return [_row_to_job(r) for r in conn.execute(sql, args).fetchall()]

        return self._run(q, write=False)

    def list_owned(self, owner: str, now: float, query: OwnedQuery = EVERY) -> list[Job]:
        where = ["expires_at > ?"]
        args: list[Any] = [now]
        if query.before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [query.before[0], query.before[0], query.before[1]]
        if query.status is not None:
            where.append("status = ?")
            args.append(JobStatus(query.status).value)
        if query.route is not None:
            where.append("route = ?")
            args.append(query.route)
        if query.created_after is not None:
            where.append("created_at >= ?")
            args.append(query.created_after)
        if query.created_before is not None:
            where.append("created_at < ?")
            args.append(query.created_before)
        limit = max(0, int(query.limit))
        # One page from each owner index (the credential's hash, the owner cookie's),
        # each read in index order, then merged: never a scan of other owners' jobs.
        order = "ORDER BY created_at DESC, id DESC"
        rest = " AND ".join(where)
        sql = " UNION ALL ".join(
            f"SELECT * FROM ({_SELECT} INDEXED BY {index} WHERE namespace = ? AND {expr} = ? "
            f"AND {rest} "
            f"{order} LIMIT ?)"
            for index, expr in (("jobs_owner1_created", OWNER1), ("jobs_owner2_created", OWNER2))
        )
        sql += f" {order} LIMIT ?"
        ns = self.namespace
        params = [ns, owner, *args, limit, ns, owner, *args, limit, limit]

        def q(conn: sqlite3.Connection) -> list[Job]:
            return [_row_to_job(r) for r in conn.execute(sql, params).fetchall()]

        return self._run(q, write=False)

    def count_by_status(self) -> dict[JobStatus, int]:
        def q(conn: sqlite3.Connection) -> dict[JobStatus, int]:
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in conn.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE namespace = ? GROUP BY status",
                (self.namespace,),
            ):
                counts[JobStatus(status)] = int(n)
            return counts

        return self._run(q, write=False)

    def purge_expired(self, now: float) -> int:
        def q(conn: sqlite3.Connection) -> int:
            total = 0
            while True:
                # The trigger deletes each job's bodies in the same statement.
                n = conn.execute(
                    "DELETE FROM jobs WHERE id IN "
                    "(SELECT id FROM jobs WHERE namespace = ? AND expires_at <= ? LIMIT ?)",
                    (self.namespace, now, PURGE_BATCH),
                ).rowcount
                total += n
                if n < PURGE_BATCH:
                    return total

        return self._run(q)

    def delete(self, job_id: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "DELETE FROM jobs WHERE id = ? AND namespace = ?", (job_id, self.namespace)
                ).rowcount
                > 0
            )

        return self._run(q)

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        data = _dumps(info)

        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO workers (id, last_heartbeat, info, namespace) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat, "
                "info = excluded.info, namespace = excluded.namespace",
                (worker_id, now, data, self.namespace),
            )

        self._run(q)

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            ns = self.namespace
            conn.execute(
                "DELETE FROM workers WHERE namespace = ? AND last_heartbeat < ?",
                (ns, now - WORKER_RETENTION),
            )
            rows = conn.execute(
                "SELECT id, last_heartbeat, info FROM workers WHERE namespace = ? "
                "ORDER BY last_heartbeat DESC",
                (ns,),
            ).fetchall()
            out = []
            for wid, last, info in rows:
                entry: dict[str, Any] = json.loads(info)
                entry.update(id=wid, last_heartbeat=float(last))
                out.append(entry)
            return out

        return self._run(q, write=False)

    def load_run_times(self) -> dict[str, str]:
        def q(conn: sqlite3.Connection) -> dict[str, str]:
            return dict(
                conn.execute(
                    "SELECT route, data FROM run_times WHERE namespace = ?", (self.namespace,)
                ).fetchall()
            )

        return self._run(q, write=False)

    def save_run_time(self, route: str, data: str) -> None:
        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO run_times (namespace, route, data) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, route) DO UPDATE SET data = excluded.data",
                (self.namespace, route, data),
            )

        self._run(q)

    def change_signal(self) -> DataVersionSignal:
        """Other connections' commits, seen through ``PRAGMA data_version``."""
        return DataVersionSignal(self.path)

    def default_outbox(self) -> Outbox:
        """The webhook outbox in this store's file (its own tables). From now on
        each write that ends a job records its notices there in the same transaction."""
        outbox = SQLiteOutbox(self.path, namespace=self.namespace or None)
        self._notify = True
        return outbox

    def close(self) -> None:
        """Close every connection this store opened in this process, in any thread."""
        self._closed = True
        self._conns.check_fork()  # a forked child: the parent's are not ours to close
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        self._conns.close()


class AsyncSQLiteStore(ThreadedAsyncStore):
    """The awaitable face of :class:`SQLiteStore` (``store.aio``).

    The writes of the request and job paths (create, claim, heartbeat,
    set_progress, finish, fail, requeue, mark_dispatched) are queued for the
    store's group commit: while one transaction is being written, the writes
    that arrive meanwhile wait and then go in together, one ``BEGIN IMMEDIATE
    ... COMMIT`` for the lot, each in its own savepoint. A call returns once its
    write is committed (or has failed), as the blocking call does; the event
    loop never waits on SQLite, and a burst of accepts costs one commit, not
    one per job. The point reads (get, get_request, get_result) are queued
    too and run together in one I/O-thread hop. Everything else runs in the
    store's two I/O threads. A method replaced at run time (tests,
    instrumentation) runs in a thread instead, so the replacement is honoured.
    """

    def __init__(self, store: SQLiteStore) -> None:
        ForwardingAsyncStore.__init__(self, store)
        self._sqlite = store

    def __repr__(self) -> str:
        return f"<AsyncSQLiteStore {self._sqlite!r}>"

    def _executor(self) -> ThreadPoolExecutor:
        return self._sqlite._io()

    def _replaced(self, name: str) -> bool:
        store = self._sqlite
        own = getattr(SQLiteStore, name)
        return name in store.__dict__ or getattr(type(store), name, None) is not own

    async def _queue(
        self,
        submit: Callable[[Callable[[sqlite3.Connection], T], asyncio.AbstractEventLoop, Any], None],
        build: Callable[P, Callable[[sqlite3.Connection], T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Queue what ``build`` makes of the arguments with ``submit`` (the group
        commit, or the batch of point reads) and wait for its outcome."""
        if self._sqlite._closed:
            raise StoreError(f"{self._sqlite!r} is closed")
        fn = build(*args, **kwargs)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        submit(fn, loop, future)
        return await future

    async def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        if self._replaced("create"):
            return await super().create(job, request)
        return await self._queue(self._sqlite._submit, self._sqlite._op_create, job, request)

    async def get(self, job_id: str, now: float) -> Job | None:
        if self._replaced("get"):
            return await super().get(job_id, now)
        return await self._queue(self._sqlite._submit_read, self._sqlite._op_get, job_id, now)

    async def get_request(self, job_id: str) -> CapturedRequest | None:
        if self._replaced("get_request"):
            return await super().get_request(job_id)
        store = self._sqlite
        return await self._queue(store._submit_read, store._op_get_request, job_id)

    async def get_result(self, job_id: str) -> CapturedResponse | None:
        if self._replaced("get_result"):
            return await super().get_result(job_id)
        store = self._sqlite
        return await self._queue(store._submit_read, store._op_get_result, job_id)

    async def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        if self._replaced("claim"):
            return await super().claim(job_id, worker_id, now)
        store = self._sqlite
        return await self._queue(store._submit, store._op_claim, job_id, worker_id, now)

    async def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        if self._replaced("heartbeat"):
            return await super().heartbeat(job_id, worker_id, now)
        store = self._sqlite
        return await self._queue(store._submit, store._op_heartbeat, job_id, worker_id, now)

    async def _set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Job | None:
        if self._replaced("set_progress"):
            return await super()._set_progress(job_id, worker_id, now, progress)
        store = self._sqlite
        build = store._op_set_progress
        return await self._queue(store._submit, build, job_id, worker_id, now, progress)

    async def _finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> Job | None:
        if self._replaced("finish"):
            return await super()._finish(job_id, worker_id, now, outcome)
        store = self._sqlite
        return await self._queue(store._submit, store._op_finish, job_id, worker_id, now, outcome)

    async def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Job | None:
        if self._replaced("fail"):
            return await super().fail(job_id, expected, now, error, lease)
        store = self._sqlite
        return await self._queue(store._submit, store._op_fail, job_id, expected, now, error, lease)

    async def requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Job | None:
        if self._replaced("requeue"):
            return await super().requeue(job_id, worker_id, now, lease)
        store = self._sqlite
        return await self._queue(store._submit, store._op_requeue, job_id, worker_id, now, lease)

    async def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> list[str]:
        if self._replaced("mark_dispatched"):
            return await super().mark_dispatched(job_ids, now, stale_before)
        store = self._sqlite
        build = store._op_mark_dispatched
        return await self._queue(store._submit, build, job_ids, now, stale_before)
