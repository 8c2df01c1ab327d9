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

import contextlib
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

from ..errors import ConfigurationError, StoreError
from ..job import CapturedRequest, CapturedResponse, Job, JobStatus
from .base import WORKER_RETENTION

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

#: ``PRAGMA user_version`` of the layout below; a file from a newer release is refused.
SCHEMA_VERSION = 2

#: ``UPDATE ... RETURNING`` needs SQLite 3.35 (2021); older ones (RHEL 9 ships
#: 3.34) read the row back inside a ``BEGIN IMMEDIATE`` transaction instead.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

#: Rows deleted per statement by :meth:`SQLiteStore.purge_expired`, so a large purge
#: never holds the write lock for long.
PURGE_BATCH = 500

#: Connections inherited through ``fork()``. Kept referenced for the life of the
#: process and never closed: closing a SQLite connection inherited from the parent
#: can release the POSIX locks this process holds on the same file.
_FORK_ORPHANS: list[sqlite3.Connection] = []
#: Every open store in this process, for the at-fork hook below.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Runs in the child before any other thread exists there, so no lock is needed.
    for store in list(_STORES):
        store._forget_parent_connections()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)

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
    its statements."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error matters more
                conn.execute("ROLLBACK")
        raise


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
        if not isinstance(synchronous, str) or synchronous.upper() not in (
            "OFF",
            "NORMAL",
            "FULL",
            "EXTRA",
        ):
            raise ConfigurationError(
                f"SQLiteStore(synchronous={synchronous!r}): use OFF, NORMAL, FULL or EXTRA"
            )
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        self._returning = HAS_RETURNING
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        _STORES.add(self)
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
        """In a forked child: drop (but never close) the parent's connections."""
        _FORK_ORPHANS.extend(self._all)
        self._all = []
        self._all_lock = threading.Lock()  # another thread may have held it at fork time
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # Normally done by the at-fork hook already; this catches a fork that
            # bypassed Python's hooks (a C extension calling fork() itself).
            self._forget_parent_connections()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # only close() touches it from another thread
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        try:
            conn = self._conn()
            if not write:
                return fn(conn)  # WAL: readers never wait for the writer
            # Writers of this process take turns here rather than in SQLite's busy
            # handler, which sleeps in steps of milliseconds when connections of
            # one process collide (measured: ~1 ms per accepted job with 8 threads).
            with self._write_lock:
                return fn(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self!r}: {type(exc).__name__}: {exc}") from exc

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

    def _cas_run(self, job_id: str, sql: str, args: tuple[Any, ...]) -> Job | None:
        return self._run(lambda conn: self._cas(conn, job_id, sql, args))

    # -- the contract ---------------------------------------------------------------

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
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

        return self._run(insert)

    def get(self, job_id: str, now: float) -> Job | None:
        def q(conn: sqlite3.Connection) -> Job | None:
            rows = conn.execute(
                _SELECT + " WHERE id = ? AND expires_at > ?", (job_id, now)
            ).fetchall()
            return _row_to_job(rows[0]) if rows else None

        return self._run(q, write=False)

    def _body(self, job_id: str, kind: str) -> tuple[str, bytes] | None:
        def q(conn: sqlite3.Connection) -> tuple[str, bytes] | None:
            rows = conn.execute(
                "SELECT meta, body FROM job_bodies WHERE job_id = ? AND kind = ?", (job_id, kind)
            ).fetchall()
            return (rows[0][0], bytes(rows[0][1])) if rows else None

        return self._run(q, write=False)

    def get_request(self, job_id: str) -> CapturedRequest | None:
        found = self._body(job_id, "request")
        return None if found is None else CapturedRequest.from_meta_json(*found)

    def get_result(self, job_id: str) -> CapturedResponse | None:
        found = self._body(job_id, "result")
        return None if found is None else CapturedResponse.from_meta_json(*found)

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._cas_run(
            job_id,
            "UPDATE jobs SET status = 'processing', worker_id = ?, started_at = ?, "
            "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND status = 'queued' AND cancel_requested = 0 AND expires_at > ?",
            (worker_id, now, now, now, job_id, now),
        )

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._cas_run(
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
        return self._cas_run(
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
            return self._cas_run(job_id, sql, args)
        body = (job_id, "result", response.meta_json(), response.body)

        def q(conn: sqlite3.Connection) -> Job | None:
            with _immediate(conn):
                job = self._cas(conn, job_id, sql, args)
                if job is not None:
                    conn.execute(_INSERT_BODY, body)
            return job

        return self._run(q)

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Job | None:
        states = tuple(dict.fromkeys(JobStatus(s).value for s in expected))
        if not states:
            return None
        marks = ", ".join("?" * len(states))
        return self._cas_run(
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
        return self._cas_run(
            job_id,
            "UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
            "updated_at = ? "
            "WHERE id = ? AND status = 'processing' AND worker_id = ? AND expires_at > ?",
            (now, job_id, worker_id, now),
        )

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
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

        return self._run(q) if job_ids else []

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
        _STORES.discard(self)
        if self._pid != os.getpid():
            self._forget_parent_connections()  # a forked child: not ours to close
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()
        self._local = threading.local()
