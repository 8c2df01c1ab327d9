"""The embedded default store: one SQLite file, shared by every process on the machine.

WAL journal (readers never block the writer), ``synchronous=NORMAL`` (durable
across process crashes; a power cut may lose the last transactions), a busy
timeout for concurrent writers, one connection per thread and per process
(re-opened after a fork). Every state change is a single conditional
``UPDATE ... WHERE status = ?`` (compare-and-set), so a job is claimed once and
a late worker can't overwrite a cancel or a deadman verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from ..errors import ConfigurationError, StoreError
from ..job import CapturedRequest, CapturedResponse, Job, JobStatus
from .base import WORKER_RETENTION

T = TypeVar("T")

SCHEMA_VERSION = 1

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
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM jobs"

_SCHEMA = """
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
    idempotency_key TEXT UNIQUE,
    fingerprint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL DEFAULT '{}',
    request_meta TEXT NOT NULL,
    request_body BLOB NOT NULL,
    result_meta TEXT,
    result_body BLOB
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    last_heartbeat REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
) WITHOUT ROWID;
"""


def _row_to_job(row: tuple[Any, ...]) -> Job:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["status"] = JobStatus(d["status"])
    d["cancel_requested"] = bool(d["cancel_requested"])
    d["error"] = json.loads(d["error"]) if d["error"] else None
    d["meta"] = json.loads(d["meta"]) if d["meta"] else {}
    return Job(**d)


class SQLiteStore:
    """Jobs in one SQLite file; safe for many threads and processes on one machine."""

    shared = True
    blocking = True

    def __init__(self, path: str, *, timeout: float = 5.0, synchronous: str = "NORMAL") -> None:
        self.path = os.path.abspath(path)
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise ConfigurationError(
                f"the SQLite store's folder {folder!r} does not exist: create it, or point "
                "store='sqlite:///...' at an existing folder"
            )
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigurationError("synchronous must be OFF, NORMAL, FULL or EXTRA")
        self.timeout = timeout
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        try:
            conn = self._conn()
            with conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"{self.path} was written by a newer async_accept (schema "
                        f"{version} > {SCHEMA_VERSION}): upgrade async_accept"
                    )
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the SQLite store {self.path!r}: {exc}") from exc

    # -- connections ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # After a fork the parent's connections must not be used (or closed) here.
            self._pid = os.getpid()
            self._local = threading.local()
            with self._all_lock:
                self._all = []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise StoreError("the SQLite store is closed")
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._conn())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def _one(self, sql: str, args: tuple[Any, ...]) -> Job | None:
        def q(c: sqlite3.Connection) -> Job | None:
            row = c.execute(sql, args).fetchone()
            return None if row is None else _row_to_job(row)

        return self._run(q)

    def _update_returning(self, sql: str, args: tuple[Any, ...]) -> Job | None:
        """One conditional UPDATE ... RETURNING: the compare-and-set."""
        return self._one(sql + " RETURNING " + ", ".join(_COLUMNS), args)

    # -- the contract ---------------------------------------------------------------

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        values = (
            job.id,
            job.status.value,
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
            None if job.error is None else json.dumps(job.error),
            job.result_status,
            job.result_location,
            job.route,
            job.idempotency_key,
            job.fingerprint,
            job.attempts,
            json.dumps(job.meta),
            request.meta_json(),
            request.body,
        )
        sql = (
            "INSERT INTO jobs ("
            + ", ".join(_COLUMNS)
            + ", request_meta, request_body) VALUES ("
            + ", ".join("?" * len(values))
            + ")"
        )

        def insert(c: sqlite3.Connection) -> tuple[Job, bool]:
            if job.idempotency_key is None:
                c.execute(sql, values)
                return job, True
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute(
                    _SELECT + " WHERE idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    existing = _row_to_job(row)
                    if existing.expires_at > job.created_at:
                        c.execute("COMMIT")
                        return existing, False
                    # An expired holder of the key: free the key for the new job.
                    c.execute("DELETE FROM jobs WHERE id = ?", (existing.id,))
                c.execute(sql, values)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return job, True

        return self._run(insert)

    def get(self, job_id: str, now: float) -> Job | None:
        return self._one(_SELECT + " WHERE id = ? AND expires_at > ?", (job_id, now))

    def get_request(self, job_id: str) -> CapturedRequest | None:
        def q(c: sqlite3.Connection) -> CapturedRequest | None:
            row = c.execute(
                "SELECT request_meta, request_body FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else CapturedRequest.from_meta_json(row[0], bytes(row[1]))

        return self._run(q)

    def get_result(self, job_id: str) -> CapturedResponse | None:
        def q(c: sqlite3.Connection) -> CapturedResponse | None:
            row = c.execute(
                "SELECT result_meta, result_body FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or row[0] is None:
                return None
            return CapturedResponse.from_meta_json(row[0], bytes(row[1] or b""))

        return self._run(q)

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._update_returning(
            "UPDATE jobs SET status = 'processing', worker_id = ?, started_at = ?, "
            "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND status = 'queued' AND cancel_requested = 0 AND expires_at > ?",
            (worker_id, now, now, now, job_id, now),
        )

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._update_returning(
            "UPDATE jobs SET heartbeat_at = ? "
            "WHERE id = ? AND status = 'processing' AND worker_id = ?",
            (now, job_id, worker_id),
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
        return self._update_returning(
            "UPDATE jobs SET percent = ?, message = ?, eta = ?, progress_at = ?, "
            "updated_at = ?, heartbeat_at = ? "
            "WHERE id = ? AND status = 'processing' AND worker_id = ?",
            (percent, message, eta, now, now, now, job_id, worker_id),
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
        completed = status is JobStatus.COMPLETED
        return self._update_returning(
            "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, error = ?, "
            "result_location = ?, result_status = ?, result_meta = ?, result_body = ?, "
            "percent = CASE WHEN ? THEN 100.0 ELSE percent END, "
            "eta = CASE WHEN ? THEN NULL ELSE eta END "
            "WHERE id = ? AND status = 'processing' AND worker_id = ?",
            (
                status.value,
                now,
                now,
                None if error is None else json.dumps(error),
                result_location,
                None if response is None else response.status,
                None if response is None else response.meta_json(),
                None if response is None else response.body,
                completed,
                completed,
                job_id,
                worker_id,
            ),
        )

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Job | None:
        states = [s.value for s in expected]
        if not states:
            return None
        marks = ", ".join("?" * len(states))
        return self._update_returning(
            "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ? "
            f"WHERE id = ? AND status IN ({marks})",
            (json.dumps(error), now, now, job_id, *states),
        )

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        canceled = self._update_returning(
            "UPDATE jobs SET status = 'canceled', cancel_requested = 1, finished_at = ?, "
            "updated_at = ? WHERE id = ? AND status = 'queued' AND expires_at > ?",
            (now, now, job_id, now),
        )
        if canceled is not None:
            return canceled, True
        requested = self._update_returning(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ? "
            "WHERE id = ? AND status = 'processing' AND cancel_requested = 0 AND expires_at > ?",
            (now, job_id, now),
        )
        if requested is not None:
            return requested, True
        return self.get(job_id, now), False

    def requeue(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._update_returning(
            "UPDATE jobs SET status = 'queued', worker_id = NULL, heartbeat_at = NULL, "
            "updated_at = ? WHERE id = ? AND status = 'processing' AND worker_id = ?",
            (now, job_id, worker_id),
        )

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
            args.append(status.value)
        if created_before is not None:
            where.append("created_at < ?")
            args.append(created_before)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at, id LIMIT ?"
        args.append(max(0, limit))

        def q(c: sqlite3.Connection) -> list[Job]:
            return [_row_to_job(r) for r in c.execute(sql, args).fetchall()]

        return self._run(q)

    def count_by_status(self) -> dict[JobStatus, int]:
        def q(c: sqlite3.Connection) -> dict[JobStatus, int]:
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in c.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
                counts[JobStatus(status)] = int(n)
            return counts

        return self._run(q)

    def purge_expired(self, now: float) -> int:
        def q(c: sqlite3.Connection) -> int:
            return int(c.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,)).rowcount)

        return self._run(q)

    def delete(self, job_id: str) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            return bool(c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount)

        return self._run(q)

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        data = json.dumps(info, separators=(",", ":"))

        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO workers (id, last_heartbeat, info) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat, "
                "info = excluded.info",
                (worker_id, now, data),
            )

        self._run(q)

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        def q(c: sqlite3.Connection) -> list[dict[str, Any]]:
            c.execute("DELETE FROM workers WHERE last_heartbeat < ?", (now - WORKER_RETENTION,))
            rows = c.execute(
                "SELECT id, last_heartbeat, info FROM workers ORDER BY last_heartbeat DESC"
            ).fetchall()
            out = []
            for wid, last, info in rows:
                entry: dict[str, Any] = json.loads(info)
                entry.update(id=wid, last_heartbeat=float(last))
                out.append(entry)
            return out

        return self._run(q)

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):  # closing is best effort
                conn.close()
        self._local = threading.local()
