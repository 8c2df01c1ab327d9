"""The statements behind each write and point read of the SQLite store: an
``_op_<name>`` method builds them (a function of a connection), which the
store runs blocking (``_run``) or its awaitable face queues for the group
commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from ...job import DROP_REQUEST_ON, CapturedRequest, CapturedResponse, Job, JobStatus
from ..base import Outcome, Progress
from ..outbox_base import notice_row, pending_notices
from .groupcommit import GroupCommit
from .outbox import INSERT_NOTICE
from .schema import (
    _DELETE_REQUEST,
    _INSERT_BODY,
    _INSERT_JOB,
    _RETURNING,
    _SELECT,
    _dumps,
    _immediate,
    _row_to_job,
)

T = TypeVar("T")

#: the deadman switch's lease check (two parameters, the lease twice; NULL: none)
_LEASE = " AND (? IS NULL OR heartbeat_at = ?)"


class SQLiteOps(GroupCommit):
    """The compare-and-set and the ``_op_<name>`` builders of :class:`SQLiteStore`."""

    _returning: bool
    #: the namespace every statement is confined to ('' unless one was given)
    namespace: str = ""
    #: write ended jobs' webhook notices in the transaction that ends them (set by
    #: default_outbox: the outbox's tables are in this file)
    _notify: bool = False

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

    def _ending(
        self, op: Callable[[sqlite3.Connection], Job | None], now: float
    ) -> Callable[[sqlite3.Connection], Job | None]:
        """``op``, which may end a job, and the ended job's webhook notices written
        in the same transaction (when the outbox lives in this file)."""
        if not self._notify:
            return op

        def q(conn: sqlite3.Connection) -> Job | None:
            with _immediate(conn):
                job = op(conn)
                notices = [] if job is None else pending_notices(job, now)
                if notices:
                    ns = self.namespace
                    conn.executemany(INSERT_NOTICE, [(*notice_row(n), ns) for n in notices])
            return job

        return q

    def _cas_run(self, job_id: str, sql: str, args: tuple[Any, ...]) -> Job | None:
        return self._run(self._cas_op(job_id, sql, args))

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
            self.namespace,
        )
        body = (job.id, "request", request.meta_json(), request.body)
        key = job.idempotency_key
        ns = self.namespace

        def insert(conn: sqlite3.Connection) -> tuple[Job, bool]:
            with _immediate(conn):
                try:
                    inserted = conn.execute(_INSERT_JOB, values).rowcount
                except sqlite3.IntegrityError as exc:
                    if key is None or "idempotency_key" not in str(exc):
                        raise
                    # Another job holds the key. The write lock is ours, so what we
                    # read now stays true until we commit.
                    rows = conn.execute(
                        _SELECT + " WHERE namespace = ? AND idempotency_key = ?", (ns, key)
                    ).fetchall()
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

    def _op_get(self, job_id: str, now: float) -> Callable[[sqlite3.Connection], Job | None]:
        ns = self.namespace

        def q(conn: sqlite3.Connection) -> Job | None:
            rows = conn.execute(
                _SELECT + " WHERE id = ? AND namespace = ? AND expires_at > ?", (job_id, ns, now)
            ).fetchall()
            return _row_to_job(rows[0]) if rows else None

        return q

    def _op_body(
        self, job_id: str, kind: str, parse: Callable[[str, bytes], T]
    ) -> Callable[[sqlite3.Connection], T | None]:
        ns = self.namespace

        def q(conn: sqlite3.Connection) -> T | None:
            # A body of another namespace's job is as absent as the job.
            rows = conn.execute(
                "SELECT b.meta, b.body FROM job_bodies AS b JOIN jobs AS j ON j.id = b.job_id "
                "WHERE b.job_id = ? AND b.kind = ? AND j.namespace = ?",
                (job_id, kind, ns),
            ).fetchall()
            return parse(rows[0][0], bytes(rows[0][1])) if rows else None

        return q

    def _op_get_request(
        self, job_id: str
    ) -> Callable[[sqlite3.Connection], CapturedRequest | None]:
        return self._op_body(job_id, "request", CapturedRequest.from_meta_json)

    def _op_get_result(
        self, job_id: str
    ) -> Callable[[sqlite3.Connection], CapturedResponse | None]:
        return self._op_body(job_id, "result", CapturedResponse.from_meta_json)

    def _op_claim(
        self, job_id: str, worker_id: str, now: float
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return self._cas_op(
            job_id,
            "UPDATE jobs SET status = 'processing', worker_id = ?, started_at = ?, "
            "heartbeat_at = ?, updated_at = ?, attempts = attempts + 1 "
            "WHERE id = ? AND namespace = ? AND status = 'queued' AND cancel_requested = 0 "
            "AND expires_at > ?",
            (worker_id, now, now, now, job_id, self.namespace, now),
        )

    def _op_heartbeat(
        self, job_id: str, worker_id: str, now: float
    ) -> Callable[[sqlite3.Connection], Job | None]:
        return self._cas_op(
            job_id,
            "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND namespace = ? "
            "AND status = 'processing' AND worker_id = ? AND expires_at > ?",
            (now, job_id, self.namespace, worker_id, now),
        )

    def _op_set_progress(
        self, job_id: str, worker_id: str, now: float, progress: Progress
    ) -> Callable[[sqlite3.Connection], Job | None]:
        percent, message, eta = progress
        return self._cas_op(
            job_id,
            "UPDATE jobs SET percent = ?, message = ?, eta = ?, progress_at = ?, "
            "updated_at = ?, heartbeat_at = ? WHERE id = ? AND namespace = ? "
            "AND status = 'processing' AND worker_id = ? AND expires_at > ?",
            (percent, message, eta, now, now, now, job_id, self.namespace, worker_id, now),
        )

    def _op_finish(
        self, job_id: str, worker_id: str, now: float, outcome: Outcome
    ) -> Callable[[sqlite3.Connection], Job | None]:
        status, response, error, result_location = outcome
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
            f"UPDATE jobs SET {sets} WHERE id = ? AND namespace = ? "
            "AND status = 'processing' AND worker_id = ? AND expires_at > ?"
        )
        args += (job_id, self.namespace, worker_id, now)
        drop = status in DROP_REQUEST_ON
        if response is None and not drop:
            return self._ending(self._cas_op(job_id, sql, args), now)
        body = None if response is None else (job_id, "result", response.meta_json(), response.body)

        def q(conn: sqlite3.Connection) -> Job | None:
            with _immediate(conn):
                job = self._cas(conn, job_id, sql, args)
                if job is not None:
                    if body is not None:
                        conn.execute(_INSERT_BODY, body)
                    if drop:  # the job can't run again: its request (credentials) goes
                        conn.execute(_DELETE_REQUEST, (job_id,))
            return job

        return self._ending(q, now)

    def _op_fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
        lease: float | None = None,
    ) -> Callable[[sqlite3.Connection], Job | None]:
        states = tuple(dict.fromkeys(JobStatus(s).value for s in expected))
        if not states:
            return lambda conn: None
        marks = ", ".join("?" * len(states))
        return self._ending(
            self._cas_op(
                job_id,
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ? "
                f"WHERE id = ? AND namespace = ? AND status IN ({marks}) AND expires_at > ?"
                f"{_LEASE}",
                (_dumps(error), now, now, job_id, self.namespace, *states, now, lease, lease),
            ),
            now,
        )

    def _op_requeue(
        self, job_id: str, worker_id: str, now: float, lease: float | None = None
    ) -> Callable[[sqlite3.Connection], Job | None]:
        requeue = self._cas_op(
            job_id,
            # A job whose cancel was requested ends canceled: nobody would claim it.
            "UPDATE jobs SET "
            "status = CASE cancel_requested WHEN 0 THEN 'queued' ELSE 'canceled' END, "
            "finished_at = CASE cancel_requested WHEN 0 THEN finished_at ELSE ? END, "
            "worker_id = NULL, heartbeat_at = NULL, updated_at = ?, "
            "meta = json_remove(meta, '$.dispatched_at') "
            "WHERE id = ? AND namespace = ? AND status = 'processing' AND worker_id = ? "
            f"AND expires_at > ?{_LEASE}",
            (now, now, job_id, self.namespace, worker_id, now, lease, lease),
        )
        return self._ending(requeue, now)

    def _op_mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> Callable[[sqlite3.Connection], list[str]]:
        job_ids = list(job_ids)
        # The mark goes in as JSON text: SQLite renders a bound REAL with only 15
        # significant digits, so a mark made at ``now`` would read back earlier than
        # ``now`` and count as stale against ``stale_before=now``.
        sql = (
            "UPDATE jobs SET meta = json_set(meta, '$.dispatched_at', json(?)) "
            "WHERE id = ? AND namespace = ? AND status = 'queued' AND cancel_requested = 0 "
            "AND expires_at > ? AND COALESCE(json_extract(meta, '$.dispatched_at'), -1e308) < ?"
        )
        mark = repr(float(now))
        ns = self.namespace

        def q(conn: sqlite3.Connection) -> list[str]:
            with _immediate(conn):
                return [
                    job_id
                    for job_id in job_ids
                    if conn.execute(sql, (mark, job_id, ns, now, stale_before)).rowcount == 1
                ]

        return q
