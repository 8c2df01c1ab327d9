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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar, cast

from ...errors import ConfigurationError, StoreError
from ...job import CapturedRequest, CapturedResponse, Job, JobStatus
from ..base import WORKER_RETENTION, AsyncStore
from .connection import SYNCHRONOUS_LEVELS, Connections

__all__ = ["SCHEMA_VERSION", "AsyncSQLiteStore", "SQLiteStore"]

T = TypeVar("T")

#: ``PRAGMA user_version`` of the layout below; a file from a newer release is refused.
SCHEMA_VERSION = 2

#: ``UPDATE ... RETURNING`` needs SQLite 3.35 (2021); older ones (RHEL 9 ships
#: 3.34) read the row back inside a ``BEGIN IMMEDIATE`` transaction instead.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

#: Rows deleted per statement by :meth:`SQLiteStore.purge_expired`, so a large purge
#: never holds the write lock for long.
PURGE_BATCH = 500

_COLUMNS = (
    "id",
    "status",
    "owner",
    "created_at",
    "updated_at",
    "expires_at",
    "deadline_at",
    "sla",
    "started_at",
    "finished_at",
    "percent",
    "message",
    "eta",
    "progress_at",
    "cancel_requested",
    "worker_id",
    "heartbeat_at",
    "error",
    "result_status",
    "result_location",
    "route",
    "idempotency_key",
    "fingerprint",
    "attempts",
    "meta",
)
_COLUMN_LIST = ", ".join(_COLUMNS)
_SELECT = f"SELECT {_COLUMN_LIST} FROM jobs"
_RETURNING = f" RETURNING {_COLUMN_LIST}"
_INSERT_JOB = (
    f"INSERT INTO jobs ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
    # The id is 128 random bits: an existing one means this create is being repeated.
    "ON CONFLICT (id) DO NOTHING"
)
_INSERT_BODY = "INSERT OR REPLACE INTO job_bodies (job_id, kind, meta, body) VALUES (?, ?, ?, ?)"

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        deadline_at REAL NOT NULL,
        sla REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        percent REAL,
        message TEXT,
        eta REAL,
        progress_at REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        worker_id TEXT,
        heartbeat_at REAL,
        error TEXT,
        result_status INTEGER,
        result_location TEXT,
        route TEXT,
        idempotency_key TEXT,
        fingerprint TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        meta TEXT NOT NULL DEFAULT '{}'
    )
    """,
    # Entries carry the rowid, so "ORDER BY created_at, rowid" (oldest first,
    # creation order for equal timestamps) reads the index in order, no sort.
    "CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (expires_at)",
    # One live job per key: create() deletes an expired holder before taking it over.
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    """
    CREATE TABLE IF NOT EXISTS job_bodies (
        job_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        meta TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (job_id, kind)
    )
    """,
    """
    CREATE TRIGGER IF NOT EXISTS jobs_delete_bodies AFTER DELETE ON jobs
    BEGIN
        DELETE FROM job_bodies WHERE job_id = old.id;
    END
    """,
    """
    CREATE TABLE IF NOT EXISTS workers (
        id TEXT PRIMARY KEY,
        last_heartbeat REAL NOT NULL,
        info TEXT NOT NULL DEFAULT '{}'
    ) WITHOUT ROWID
    """,
)


def _row_to_job(row: tuple[Any, ...]) -> Job:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["status"] = JobStatus(d["status"])
    d["cancel_requested"] = bool(d["cancel_requested"])
    d["error"] = None if d["error"] is None else json.loads(d["error"])
    meta = d["meta"]
    d["meta"] = {} if not meta or meta == "{}" else json.loads(meta)
    return Job(**d)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction taken up front (``BEGIN IMMEDIATE``): the busy timeout
    applies while waiting for the lock, and no other writer can slip in between
    its statements. Inside a group commit (a transaction is already open, and
    each operation has its own savepoint) there is nothing to begin."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error matters more
                conn.execute("ROLLBACK")
        raise


#: Writes committed together in one transaction at most (bounds how long one
#: batch holds SQLite's write lock).
GROUP_COMMIT_MAX = 64


def _store_error(store: SQLiteStore, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"{store!r}: {type(exc).__name__}: {exc}")


class _Op(Generic[T]):
    """One queued store call (a write for the group commit, or a point read), and
    then its outcome."""

    __slots__ = ("done", "error", "fn", "future", "loop", "result", "store")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        store: SQLiteStore,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[T] | None = None,
    ) -> None:
        self.fn = fn
        self.store = store
        self.loop = loop
        self.future = future
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self, conn: sqlite3.Connection) -> None:
        try:
            self.result = self.fn(conn)
        except Exception as exc:
            self.error = exc
        self.done = True

    def fail(self, exc: BaseException) -> None:
        """Failed with ``exc`` (its own, more precise error is kept if it had one)."""
        if self.error is None:
            self.error = exc
            self.result = None
        self.done = True

    def exception(self) -> BaseException | None:
        error = self.error
        if isinstance(error, sqlite3.Error):
            wrapped = _store_error(self.store, error)
            wrapped.__cause__ = error
            return wrapped
        return error

    def outcome(self) -> T:
        error = self.exception()
        if error is not None:
            raise error
        return self.result  # type: ignore[return-value]


def _notify(batch: list[_Op[Any]]) -> None:
    """Hand the outcomes of queued awaited writes to their loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Op[Any]]] = {}
    for op in batch:
        if op.loop is not None:
            by_loop.setdefault(op.loop, []).append(op)
    for loop, ops in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, ops)


def _resolve(ops: list[_Op[Any]]) -> None:
    for op in ops:
        future = op.future
        if future is None or future.done():  # cancelled: the write stands anyway
            continue
        error = op.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(op.result)


class SQLiteStore:
    """Jobs in one SQLite file; safe for many threads and processes on one machine.

    ``path``'s folder must exist. ``timeout`` is how long a call waits for
    another process's write lock before failing with
    :class:`~async_accept.errors.StoreError`; ``synchronous`` is SQLite's
    ``PRAGMA synchronous`` (``NORMAL`` is durable across process crashes,
    ``FULL`` also across power cuts).
    """

    shared = True
    blocking = True

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 5.0, synchronous: str = "NORMAL"
    ) -> None:
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
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: list[_Op[Any]] = []
        self._reads: list[_Op[Any]] = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = False
        self._reads_scheduled = False
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        #: The awaitable face (picked up by ``as_async()``): writes join the group
        #: commit without tying up a thread each; reads run in two I/O threads.
        self.aio: AsyncStore = cast(AsyncStore, AsyncSQLiteStore(self))
        try:
            self._setup(self._conn())
        except sqlite3.Error as exc:
            self.close()
            raise ConfigurationError(f"cannot open the SQLite store {self.path!r}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def _setup(self, conn: sqlite3.Connection) -> None:
        with _immediate(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"{self.path} was written by a newer async_accept (schema {version} > "
                    f"{SCHEMA_VERSION}): upgrade async_accept, or point the store at another file"
                )
            if 0 < version < SCHEMA_VERSION:
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
        """In a forked child, once the parent's connections are dropped: reset what
        another thread may have held at fork time."""
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending = []
        self._reads = []
        self._pending_lock = threading.Lock()
        self._flush_scheduled = self._reads_scheduled = False
        self._pool = None  # its threads did not survive the fork

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        if not write:
            try:
                return fn(self._conn())  # WAL: readers never wait for the writer
            except sqlite3.Error as exc:
                raise _store_error(self, exc) from exc
        # Writers of this process take turns on a lock rather than in SQLite's busy
        # handler, which sleeps in steps of milliseconds when connections of one
        # process collide (measured: ~1 ms per accepted job with 8 threads). The
        # one holding the lock also commits what the others queued meanwhile.
        op: _Op[T] = _Op(fn, self)
        with self._pending_lock:
            self._pending.append(op)
        with self._write_lock:
            while not op.done:
                self._commit_batch()
        return op.outcome()

    def _submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        """Queue a write for the group commit without waiting: ``future`` (of
        ``loop``) gets its outcome once it is committed or has failed."""
        op: _Op[T] = _Op(fn, self, loop, future)
        with self._pending_lock:
            self._pending.append(op)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._schedule(self._flush_all, op)

    def _submit_read(
        self,
        fn: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
    ) -> None:
        """Queue a point read: the reads queued meanwhile run in one I/O-thread
        hop and their answers reach the loop in one wake-up."""
        op: _Op[T] = _Op(fn, self, loop, future)
        with self._pending_lock:
            self._reads.append(op)
            if self._reads_scheduled:
                return
            self._reads_scheduled = True
        self._schedule(self._flush_reads, op)

    def _schedule(self, flush: Callable[[], None], op: _Op[Any]) -> None:
        try:
            self._io().submit(flush)
        except RuntimeError:  # the pool was shut down: the store is closing
            with self._pending_lock:
                self._flush_scheduled = self._reads_scheduled = False
                queued = [*self._pending, *self._reads]
                self._pending, self._reads = [], []
            closed = StoreError(f"{self!r} is closed")
            for other in queued:
                other.fail(closed)
            _notify(queued)

    def _flush_reads(self) -> None:
        try:
            while True:
                with self._pending_lock:
                    if not self._reads:
                        self._reads_scheduled = False
                        return
                    batch = self._reads[:GROUP_COMMIT_MAX]
                    del self._reads[:GROUP_COMMIT_MAX]
                try:
                    conn = self._conn()
                except Exception as exc:
                    for op in batch:
                        op.fail(exc)
                else:
                    for op in batch:
                        op.run(conn)
                _notify(batch)
        except BaseException:
            with self._pending_lock:
                self._reads_scheduled = False
            raise

    def _flush_all(self) -> None:
        """Commit every queued write, a batch per transaction, releasing the lock
        between batches so threads waiting to write get their turn."""
        try:
            while True:
                with self._write_lock:
                    if not self._commit_batch():
                        return
        except BaseException:
            with self._pending_lock:  # let the next write schedule a flush again
                self._flush_scheduled = False
            raise

    def _commit_batch(self) -> bool:
        """Under the write lock: run up to :data:`GROUP_COMMIT_MAX` queued writes in
        one transaction. False when nothing was queued."""
        with self._pending_lock:
            if not self._pending:
                self._flush_scheduled = False
                return False
            batch = self._pending[:GROUP_COMMIT_MAX]
            del self._pending[:GROUP_COMMIT_MAX]
        try:
            conn = self._conn()
        except Exception as exc:  # closed, or the file can't be opened
            for op in batch:
                op.fail(exc)
            _notify(batch)
            return True
        if len(batch) == 1:
            batch[0].run(conn)
        else:
            self._run_together(conn, batch)
        _notify(batch)
        return True

    @staticmethod
    def _run_together(conn: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
        """One ``BEGIN IMMEDIATE ... COMMIT`` around the batch; each operation in
        its own savepoint, so one that fails takes back only its own writes."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            for op in batch:
                op.fail(exc)
            return
        try:
            for op in batch:
                conn.execute("SAVEPOINT op")
                op.run(conn)
                if op.error is not None:
                    conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing of the batch is committed: every operation failed.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for op in batch:
                op.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _io(self) -> ThreadPoolExecutor:
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    # Two threads: store calls are short, and more threads only
                    # fight over the GIL with the event loop.
                    pool = self._pool = ThreadPoolExecutor(
                        max_workers=2, thread_name_prefix="async-accept-sqlite"
                    )
        return pool

    def _cas(
        self, conn: sqlite3.Connection, job_id: str, sql: str, args: tuple[Any, ...]
    ) -> Job | None:
        """One conditional ``UPDATE jobs ... WHERE id = ? AND <expected state>``: the
        compare-and-set. Returns the job as the update left it, or None when the
        condition did not hold (nothing was written)."""
        if self._returning:
            rows = conn.execute(sql + _RETURNING, args).fetchall()
            return _row_to_job(rows[0]) if rows else None
        if conn.in_transaction:
            return self._update_then_read(conn, job_id, sql, args)
        with _immediate(conn):
            return self._update_then_read(conn, job_id, sql, args)

    @staticmethod
    def _update_then_read(
        conn: sqlite3.Connection, job_id: str, sql: str, args: tuple[Any, ...]
    ) -> Job | None:
        if conn.execute(sql, args).rowcount != 1:
            return None
        rows = conn.execute(_SELECT + " WHERE id = ?", (job_id,)).fetchall()
        return _row_to_job(rows[0])

    def _cas_op(
        self, job_id: str, sql: str, args: tuple[Any, ...]
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return lambda conn: self._cas(conn, job_id, sql, args)

    def _cas_run(self, job_id: str, sql: str, args: tuple[Any, ...]) -> Job | None:
        return self._run(self._cas_op(job_id, sql, args))

    # -- the contract ---------------------------------------------------------------

    # Each write is built by an ``_op_<name>`` method (the statements to run on a
    # connection) and run by ``_run``, or queued for the group commit by ``aio``.

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return self._run(self._op_create(job, request))

    def _op_create(
        self, job: Job, request: CapturedRequest
    ) -> Callable[[sqlite3.Connection], tuple[Job, bool]]:
        values = (
            job.id,
            JobStatus(job.status).value,
            job.owner,
            job.created_at,
            job.updated_at,
            job.expires_at,
            job.deadline_at,
            job.sla,
            job.started_at,
            job.finished_at,
            job.percent,
            job.message,
            job.eta,
            job.progress_at,
            int(job.cancel_requested),
            job.worker_id,
            job.heartbeat_at,
            None if job.error is None else _dumps(job.error),
            job.result_status,
            job.result_location,
            job.route,
            job.idempotency_key,
            job.fingerprint,
            job.attempts,
            _dumps(job.meta),
        )
        body = (job.id, "request", request.meta_json(), request.body)
        key = job.idempotency_key

        def insert(conn: sqlite3.Connection) -> tuple[Job, bool]:
            with _immediate(conn):
                try:
                    inserted = conn.execute(_INSERT_JOB, values).rowcount
                except sqlite3.IntegrityError as exc:
                    if key is None or "idempotency_key" not in str(exc):
                        raise
                    # Another job holds the key. The write lock is ours, so what we
                    # read now stays true until we commit.
                    rows = conn.execute(_SELECT + " WHERE idempotency_key = ?", (key,)).fetchall()
                    holder = _row_to_job(rows[0])
                    if holder.expires_at > job.created_at:
                        return holder, False
                    # The holder expired (not purged yet): the key is free again.
                    conn.execute("DELETE FROM jobs WHERE id = ?", (holder.id,))
                    inserted = conn.execute(_INSERT_JOB, values).rowcount
                if inserted:
                    conn.execute(_INSERT_BODY, body)
            return job, True

        return insert

    def get(self, job_id: str, now: float) -> Job | None:
        return self._run(self._op_get(job_id, now), write=False)

    def _op_get(self, job_id: str, now: float) -> Callable[[sqlite3.Connection], Job | None]:
        def q(conn: sqlite3.Connection) -> Job | None:
            rows = conn.execute(
                _SELECT + " WHERE id = ? AND expires_at > ?", (job_id, now)
            ).fetchall()
            return _row_to_job(rows[0]) if rows else None

        return q

    @staticmethod
    def _op_body(
        job_id: str, kind: str, parse: Callable[[str, bytes], T]
    ) -> Callable[[sqlite3.Connection], T | None]:
        def q(conn: sqlite3.Connection) -> T | None:
            rows = conn.execute(
                "SELECT meta, body FROM job_bodies WHERE job_id = ? AND kind = ?", (job_id, kind)
            ).fetchall()
            return parse(rows[0][0], bytes(rows[0][1])) if rows else None

        return q

    def get_request(self, job_id: str) -> CapturedRequest | None:
        return self._run(self._op_get_request(job_id), write=False)

    def _op_get_request(
        self, job_id: str
    ) -> Callable[[sqlite3.Connection], CapturedRequest | None]:
        return self._op_body(job_id, "request", CapturedRequest.from_meta_json)

    def get_result(self, job_id: str) -> CapturedResponse | None:
        return self._run(self._op_get_result(job_id), write=False)

    def _op_get_result(
        self, job_id: str
    ) -> Callable[[sqlite3.Connection], CapturedResponse | None]:
        return self._op_body(job_id, "result", CapturedResponse.from_meta_json)

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._op_claim(job_id, worker_id, now))

    def _op_claim(
        self, job_id: str, worker_id: str, now: float
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return self._cas_op(
            job_id,
            "UPDATE jobs SET status = 'processing', worker_id = ?, started_at = ?, "
            "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND status = 'queued' AND cancel_requested = 0 AND expires_at > ?",
            (worker_id, now, now, now, job_id, now),
        )

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._op_heartbeat(job_id, worker_id, now))

    def _op_heartbeat(
        self, job_id: str, worker_id: str, now: float
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return self._cas_op(
            job_id,
            "UPDATE jobs SET heartbeat_at = ? "
            "WHERE id = ? AND status = 'processing' AND worker_id = ? AND expires_at > ?",
            (now, job_id, worker_id, now),
        )

    def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        return self._run(self._op_set_progress(job_id, worker_id, now, percent, message, eta))

    def _op_set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return self._cas_op(
            job_id,
            "UPDATE jobs SET percent = ?, message = ?, eta = ?, progress_at = ?, "
            "updated_at = ?, heartbeat_at = ? "
            "WHERE id = ? AND status = 'processing' AND worker_id = ? AND expires_at > ?",
            (percent, message, eta, now, now, now, job_id, worker_id, now),
        )

    def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Job | None:
        return self._run(
            self._op_finish(job_id, worker_id, now, status, response, error, result_location)
        )

    def _op_finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Callable[[sqlite3.Connection], Job | None]:
        status = JobStatus(status)
        if not status.terminal:
            raise ValueError(f"finish() needs a terminal status, not {status.value!r}")
        completed = status is JobStatus.COMPLETED
        sets = "status = ?, finished_at = ?, updated_at = ?, error = ?, result_location = ?"
        args: tuple[Any, ...] = (
            status.value,
            now,
            now,
            None if error is None else _dumps(error),
            result_location,
        )
        if response is not None:
            sets += ", result_status = ?"
            args += (int(response.status),)
        if completed:
            sets += ", percent = 100.0, eta = NULL"
        sql = (
            f"UPDATE jobs SET {sets} "
            "WHERE id = ? AND status = 'processing' AND worker_id = ? AND expires_at > ?"
        )
        args += (job_id, worker_id, now)
        if response is None:
            return self._cas_op(job_id, sql, args)
        body = (job_id, "result", response.meta_json(), response.body)

        def q(conn: sqlite3.Connection) -> Job | None:
            with _immediate(conn):
                job = self._cas(conn, job_id, sql, args)
                if job is not None:
                    conn.execute(_INSERT_BODY, body)
            return job

        return q

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Job | None:
        return self._run(self._op_fail(job_id, expected, now, error))

    def _op_fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Callable[[sqlite3.Connection], Job | None]:
        states = tuple(dict.fromkeys(JobStatus(s).value for s in expected))
        if not states:
            return lambda conn: None
        marks = ", ".join("?" * len(states))
        return self._cas_op(
            job_id,
            "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ? "
            f"WHERE id = ? AND status IN ({marks}) AND expires_at > ?",
            (_dumps(error), now, now, job_id, *states, now),
        )

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        # One statement for both cases. SET expressions see the row as it was, so
        # "status" inside the CASEs is the state before this update.
        job = self._cas_run(
            job_id,
            "UPDATE jobs SET "
            "status = CASE status WHEN 'queued' THEN 'canceled' ELSE status END, "
            "finished_at = CASE status WHEN 'queued' THEN ? ELSE finished_at END, "
            "cancel_requested = 1, updated_at = ? "
            "WHERE id = ? AND expires_at > ? "
            "AND (status = 'queued' OR (status = 'processing' AND cancel_requested = 0))",
            (now, now, job_id, now),
        )
        if job is not None:
            return job, True
        return self.get(job_id, now), False

    def requeue(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._op_requeue(job_id, worker_id, now))

    def _op_requeue(
        self, job_id: str, worker_id: str, now: float
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return self._cas_op(
            job_id,
            # A job whose cancel was requested ends canceled: nobody would claim it.
            "UPDATE jobs SET "
            "status = CASE cancel_requested WHEN 0 THEN 'queued' ELSE 'canceled' END, "
            "finished_at = CASE cancel_requested WHEN 0 THEN finished_at ELSE ? END, "
            "worker_id = NULL, heartbeat_at = NULL, updated_at = ? "
            "WHERE id = ? AND status = 'processing' AND worker_id = ? AND expires_at > ?",
            (now, now, job_id, worker_id, now),
        )

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        return self._run(self._op_mark_dispatched(job_ids, now, stale_before)) if job_ids else []

    def _op_mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> Callable[[sqlite3.Connection], list[str]]:
        job_ids = list(job_ids)
        # The mark goes in as JSON text: SQLite renders a bound REAL with only 15
        # significant digits, so a mark made at ``now`` would read back earlier than
        # ``now`` and count as stale against ``stale_before=now``.
        sql = (
            "UPDATE jobs SET meta = json_set(meta, '$.dispatched_at', json(?)) "
            "WHERE id = ? AND status = 'queued' AND cancel_requested = 0 AND expires_at > ? "
            "AND COALESCE(json_extract(meta, '$.dispatched_at'), -1e308) < ?"
        )
        mark = repr(float(now))

        def q(conn: sqlite3.Connection) -> list[str]:
            with _immediate(conn):
                return [
                    job_id
                    for job_id in job_ids
                    if conn.execute(sql, (mark, job_id, now, stale_before)).rowcount == 1
                ]

        return q

    def retry(self, job_id: str, now: float) -> Job | None:
        sql = (
            "UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
            "started_at = NULL, finished_at = NULL, percent = NULL, message = NULL, "
            "eta = NULL, progress_at = NULL, error = NULL, result_status = NULL, "
            "result_location = NULL, updated_at = ?, deadline_at = ? + 2 * sla, "
            "meta = json_remove(meta, '$.dispatched_at') "
            "WHERE id = ? AND status = 'failed' AND cancel_requested = 0 AND expires_at > ?"
        )

        def q(conn: sqlite3.Connection) -> Job | None:
            with _immediate(conn):
                job = self._cas(conn, job_id, sql, (now, now, job_id, now))
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
    ) -> list[Job]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(JobStatus(status).value)
        if created_before is not None:
            where.append("created_at < ?")
            args.append(created_before)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at, rowid LIMIT ?"
        args.append(max(0, int(limit)))

        def q(conn: sqlite3.Connection) -> list[Job]:
            return [_row_to_job(r) for r in conn.execute(sql, args).fetchall()]

        return self._run(q, write=False)

    def count_by_status(self) -> dict[JobStatus, int]:
        def q(conn: sqlite3.Connection) -> dict[JobStatus, int]:
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
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
                    "(SELECT id FROM jobs WHERE expires_at <= ? LIMIT ?)",
                    (now, PURGE_BATCH),
                ).rowcount
                total += n
                if n < PURGE_BATCH:
                    return total

        return self._run(q)

    def delete(self, job_id: str) -> bool:
        def q(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

        return self._run(q)

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        data = _dumps(info)

        def q(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO workers (id, last_heartbeat, info) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat, "
                "info = excluded.info",
                (worker_id, now, data),
            )

        self._run(q)

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        def q(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            conn.execute("DELETE FROM workers WHERE last_heartbeat < ?", (now - WORKER_RETENTION,))
            rows = conn.execute(
                "SELECT id, last_heartbeat, info FROM workers ORDER BY last_heartbeat DESC"
            ).fetchall()
            out = []
            for wid, last, info in rows:
                entry: dict[str, Any] = json.loads(info)
                entry.update(id=wid, last_heartbeat=float(last))
                out.append(entry)
            return out

        return self._run(q, write=False)

    def close(self) -> None:
        """Close every connection this store opened in this process, in any thread."""
        self._closed = True
        self._conns.check_fork()  # a forked child: the parent's are not ours to close
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        self._conns.close()


class AsyncSQLiteStore:
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
    store's two I/O threads.
    """

    _BATCHED = frozenset(
        {
            "create",
            "claim",
            "heartbeat",
            "set_progress",
            "finish",
            "fail",
            "requeue",
            "mark_dispatched",
        }
    )

    #: Point reads of the request and status paths: queued the same way, and
    #: run (no transaction: WAL readers never wait) in one hop per burst.
    _READS = frozenset({"get", "get_request", "get_result"})

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<AsyncSQLiteStore {self._store.path!r}>"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        store = self._store
        getattr(store, name)  # AttributeError now, not at call time
        original = getattr(SQLiteStore, name, None)

        def replaced() -> bool:
            # A method replaced at run time (tests, instrumentation) is honoured.
            return name in store.__dict__ or getattr(type(store), name, None) is not original

        async def threaded(*args: Any, **kwargs: Any) -> Any:
            fn = getattr(store, name)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(store._io(), functools.partial(fn, *args, **kwargs))

        if name in self._BATCHED:
            submit = store._submit
        elif name in self._READS:
            submit = store._submit_read
        else:
            setattr(self, name, threaded)
            return threaded
        build_name = "_op_" + name

        async def batched(*args: Any, **kwargs: Any) -> Any:
            if replaced():
                return await threaded(*args, **kwargs)
            if store._closed:
                raise StoreError(f"{store!r} is closed")
            fn = getattr(store, build_name)(*args, **kwargs)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Any] = loop.create_future()
            submit(fn, loop, future)
            return await future

        setattr(self, name, batched)
        return batched
