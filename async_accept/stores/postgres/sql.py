"""The statements of the PostgreSQL store and the conversions around them,
shared by the blocking store and its asyncio twin."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from psycopg.types.json import Jsonb

from ...job import CapturedRequest, Job, JobStatus
from ..base import Outcome, OwnedQuery, Progress
from .connection import OWNER1, OWNER2, quoted

#: One column per Job field, in the dataclass's order (the table's too, see
#: migration 1): a new field means a new migration, not an edit here.
_COLUMNS = tuple(f.name for f in fields(Job))
_COLS = ", ".join(_COLUMNS)
_OWNED = "id = %s AND status = 'processing' AND worker_id = %s AND expires_at > %s"
#: the deadman switch's lease check (the lease twice; NULL: none)
_LEASE = " AND (%s::double precision IS NULL OR heartbeat_at = %s)"


def row_to_job(row: Sequence[Any]) -> Job:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["status"] = JobStatus(d["status"])
    d["error"] = None if d["error"] is None else json.loads(d["error"])
    d["meta"] = d["meta"] or {}
    return Job(**d)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def job_values(job: Job) -> tuple[Any, ...]:
    """The job as ``_COLUMNS`` values: JSON text for ``error``, ``jsonb`` for ``meta``."""
    values: dict[str, Any] = {name: getattr(job, name) for name in _COLUMNS}
    values["status"] = JobStatus(job.status).value
    values["cancel_requested"] = bool(job.cancel_requested)
    values["error"] = None if job.error is None else dumps(job.error)
    values["meta"] = Jsonb(job.meta)
    return tuple(values.values())


class Statements:
    """Every statement of the store, for one schema."""

    def __init__(self, schema: str) -> None:
        s = self.schema_sql = quoted(schema)
        jobs = f"{s}.jobs"
        bodies = f"{s}.job_bodies"
        marks = ", ".join(["%s"] * len(_COLUMNS))
        self.create = (
            f"WITH j AS (INSERT INTO {jobs} ({_COLS}) VALUES ({marks}) "
            # Any conflict: the id (a repeated create) or a live idempotency key.
            "ON CONFLICT DO NOTHING RETURNING id) "
            f"INSERT INTO {bodies} (job_id, kind, meta, body) "
            "SELECT id, 'request', %s, %s FROM j RETURNING job_id"
        )
        self.by_id = f"SELECT {_COLS} FROM {jobs} WHERE id = %s"
        self.by_key = f"SELECT {_COLS} FROM {jobs} WHERE idempotency_key = %s"
        self.drop_expired_holder = f"DELETE FROM {jobs} WHERE id = %s AND expires_at <= %s"
        self.get = f"SELECT {_COLS} FROM {jobs} WHERE id = %s AND expires_at > %s"
        self.body = f"SELECT meta, body FROM {bodies} WHERE job_id = %s AND kind = %s"
        self.claim = (
            f"UPDATE {jobs} SET status = 'processing', worker_id = %s, started_at = %s, "
            "heartbeat_at = %s, updated_at = %s, attempts = attempts + 1 "
            f"WHERE id = (SELECT id FROM {jobs} WHERE id = %s AND status = 'queued' "
            "AND NOT cancel_requested AND expires_at > %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLS}"
        )
        self.heartbeat = f"UPDATE {jobs} SET heartbeat_at = %s WHERE {_OWNED} RETURNING {_COLS}"
        self.progress = (
            f"UPDATE {jobs} SET percent = %s, message = %s, eta = %s, progress_at = %s, "
            f"updated_at = %s, heartbeat_at = %s WHERE {_OWNED} RETURNING {_COLS}"
        )
        finish_sets = (
            "status = %s, finished_at = %s, updated_at = %s, error = %s, "
            "result_location = %s, result_status = COALESCE(%s, result_status), "
            "percent = CASE WHEN %s THEN 100.0 ELSE percent END, "
            "eta = CASE WHEN %s THEN NULL ELSE eta END"
        )
        # A job that can't run again (completed, canceled) loses its captured request
        # (and the credentials in it) in the statement that ends it; a failed one
        # keeps it for a retry. Data-modifying CTEs run whether read or not.
        drop_request = (
            f"d AS (DELETE FROM {bodies} WHERE kind = 'request' AND job_id IN "
            "(SELECT id FROM j WHERE status IN ('completed', 'canceled')))"
        )
        finish = f"UPDATE {jobs} SET {finish_sets} WHERE {_OWNED} RETURNING {_COLS}"
        self.finish = f"WITH j AS ({finish}), {drop_request} SELECT * FROM j"
        # The state and the result in one statement: both or neither.
        self.finish_with_result = (
            f"WITH j AS ({finish}), r AS ("
            f"INSERT INTO {bodies} (job_id, kind, meta, body) "
            "SELECT id, 'result', %s, %s FROM j "
            "ON CONFLICT (job_id, kind) DO UPDATE SET meta = EXCLUDED.meta, body = EXCLUDED.body"
            f"), {drop_request} SELECT * FROM j"
        )
        self.fail = (
            f"UPDATE {jobs} SET status = 'failed', error = %s, finished_at = %s, updated_at = %s "
            f"WHERE id = %s AND status = ANY(%s) AND expires_at > %s{_LEASE} RETURNING {_COLS}"
        )
        # One statement for both cases; SET expressions see the row as it was.
        self.cancel = (
            f"WITH j AS (UPDATE {jobs} SET "
            "status = CASE status WHEN 'queued' THEN 'canceled' ELSE status END, "
            "finished_at = CASE status WHEN 'queued' THEN %s ELSE finished_at END, "
            "cancel_requested = true, updated_at = %s "
            "WHERE id = %s AND expires_at > %s "
            "AND (status = 'queued' OR (status = 'processing' AND NOT cancel_requested)) "
            f"RETURNING {_COLS}), {drop_request} SELECT * FROM j"
        )
        self.requeue = (
            f"WITH j AS (UPDATE {jobs} SET "
            "status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END, "
            "finished_at = CASE WHEN cancel_requested THEN %s ELSE finished_at END, "
            "worker_id = NULL, heartbeat_at = NULL, meta = meta - 'dispatched_at', "
            f"updated_at = %s WHERE {_OWNED}{_LEASE} "
            f"RETURNING {_COLS}), {drop_request} SELECT * FROM j"
        )
        # Rows another marker holds are skipped: that one marks them.
        self.mark_dispatched = (
            f"WITH c AS (SELECT id FROM {jobs} WHERE id = ANY(%s) AND status = 'queued' "
            "AND NOT cancel_requested AND expires_at > %s "
            "AND COALESCE((meta->>'dispatched_at')::float8, '-Infinity') < %s "
            "ORDER BY id FOR UPDATE SKIP LOCKED) "
            f"UPDATE {jobs} AS t SET meta = jsonb_set(t.meta, '{{dispatched_at}}', %s) "
            "FROM c WHERE t.id = c.id RETURNING t.id"
        )
        self.retry = (
            f"WITH j AS (UPDATE {jobs} SET status = 'queued', worker_id = NULL, "
            "heartbeat_at = NULL, started_at = NULL, finished_at = NULL, percent = NULL, "
            "message = NULL, eta = NULL, progress_at = NULL, error = NULL, "
            "result_status = NULL, result_location = NULL, updated_at = %s, "
            "deadline_at = %s + 2 * sla, meta = meta - 'dispatched_at' "
            "WHERE id = %s AND status = 'failed' AND NOT cancel_requested AND expires_at > %s "
            f"RETURNING {_COLS}), d AS (DELETE FROM {bodies} "
            "WHERE job_id IN (SELECT id FROM j) AND kind = 'result') SELECT * FROM j"
        )
        self.list_jobs = f"SELECT {_COLS} FROM {jobs}"
        self.count = f"SELECT status, count(*) FROM {jobs} GROUP BY status"
        self.purge = (
            f"DELETE FROM {jobs} WHERE id IN (SELECT id FROM {jobs} WHERE expires_at <= %s "
            "LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        self.delete = f"DELETE FROM {jobs} WHERE id = %s"
        self.worker_heartbeat = (
            f"INSERT INTO {s}.workers (id, last_heartbeat, info) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET last_heartbeat = EXCLUDED.last_heartbeat, "
            "info = EXCLUDED.info"
        )
        self.list_workers = (
            f"WITH gone AS (DELETE FROM {s}.workers WHERE last_heartbeat < %s) "
            f"SELECT id, last_heartbeat, info FROM {s}.workers WHERE last_heartbeat >= %s "
            "ORDER BY last_heartbeat DESC"
        )
        self.queued = (
            f"SELECT id FROM {jobs} WHERE status = 'queued' AND NOT cancel_requested "
            "AND expires_at > %s ORDER BY created_at, seq LIMIT %s"
        )
        self.notify = "SELECT pg_notify(%s, '')"
        self.load_run_times = f"SELECT route, data FROM {s}.run_times"
        self.save_run_time = (
            f"INSERT INTO {s}.run_times (route, data) VALUES (%s, %s) "
            "ON CONFLICT (route) DO UPDATE SET data = EXCLUDED.data"
        )
        # The worker's claim: the claim above and the captured request it needs, in one
        # round trip (a job never claimed returns no row, so no body is read).
        self.claim_with_request = (
            f"WITH c AS ({self.claim}) SELECT c.*, b.meta, b.body FROM c "
            f"LEFT JOIN {bodies} b ON b.job_id = c.id AND b.kind = 'request'"
        )


# -- the arguments of each call, shared by both twins -----------------------------------------


def progress_args(job_id: str, worker_id: str, now: float, progress: Progress) -> tuple[Any, ...]:
    """The arguments of :attr:`Statements.progress`."""
    percent, message, eta = progress
    return (percent, message, eta, now, now, now, job_id, worker_id, now)


def finish_query(
    sql: Statements, job_id: str, worker_id: str, now: float, outcome: Outcome
) -> tuple[str, tuple[Any, ...]]:
    """The statement that ends a job (with its result, when there is one) and its
    arguments."""
    completed = outcome.status is JobStatus.COMPLETED
    response = outcome.response
    args: tuple[Any, ...] = (
        outcome.status.value,
        now,
        now,
        None if outcome.error is None else dumps(outcome.error),
        outcome.result_location,
        None if response is None else int(response.status),
        completed,
        completed,
        job_id,
        worker_id,
        now,
    )
    if response is None:
        return sql.finish, args
    return sql.finish_with_result, (*args, response.meta_json(), response.body)


def list_query(
    sql: Statements,
    status: JobStatus | None,
    limit: int,
    created_before: float | None,
    newest: bool = False,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        where.append("status = %s")
        args.append(JobStatus(status).value)
    if created_before is not None:
        where.append("created_at < %s")
        args.append(created_before)
    query = sql.list_jobs + (" WHERE " + " AND ".join(where) if where else "")
    args.append(max(0, int(limit)))
    order = " ORDER BY created_at DESC, seq DESC" if newest else " ORDER BY created_at, seq"
    return query + order + " LIMIT %s", args


def owned_query(sql: Statements, owner: str, now: float, q: OwnedQuery) -> tuple[str, list[Any]]:
    """Live jobs of ``owner`` (either hash of a two-hash owner field) that ``q``
    admits, newest first: one index scan per hash (migration 3), each stopping at
    the page's end, so the cost follows the owner's jobs, not the table's size."""
    where = ["expires_at > %s"]
    args: list[Any] = [now]
    if q.before is not None:
        where.append("(created_at, id) < (%s, %s)")
        args += [q.before[0], q.before[1]]
    if q.status is not None:
        where.append("status = %s")
        args.append(JobStatus(q.status).value)
    if q.route is not None:
        where.append("route = %s")
        args.append(q.route)
    if q.created_after is not None:
        where.append("created_at >= %s")
        args.append(q.created_after)
    if q.created_before is not None:
        where.append("created_at < %s")
        args.append(q.created_before)
    limit = max(0, int(q.limit))
    rest = " AND ".join(where)
    order = "ORDER BY created_at DESC, id DESC LIMIT %s"
    # The second scan leaves out what the first finds (both hashes the same).
    query = (
        f"({sql.list_jobs} WHERE {OWNER1} = %s AND {rest} {order}) UNION ALL "
        f"({sql.list_jobs} WHERE {OWNER2} = %s AND {OWNER1} <> %s AND {rest} {order}) "
        f"{order}"
    )
    return query, [owner, *args, limit, owner, owner, *args, limit, limit]


def counts(rows: Sequence[Sequence[Any]]) -> dict[JobStatus, int]:
    counts = dict.fromkeys(JobStatus, 0)
    for status, n in rows:
        counts[JobStatus(status)] = int(n)
    return counts


def workers(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    out = []
    for wid, last, info in rows:
        entry: dict[str, Any] = json.loads(info)
        entry.update(id=wid, last_heartbeat=float(last))
        out.append(entry)
    return out


def in_order(job_ids: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    marked = {r[0] for r in rows}
    return [j for j in dict.fromkeys(job_ids) if j in marked]


def one(rows: Sequence[Sequence[Any]]) -> Job | None:
    return row_to_job(rows[0]) if rows else None


@dataclass
class CreateStep:
    """What a create round found: done (with its answer) or try again."""

    result: tuple[Job, bool] | None = None
    drop: str | None = None  # an expired holder of the key to delete first


def after_conflict(job: Job, same_id: Job | None, holder: Job | None) -> CreateStep:
    if same_id is not None:
        # The id is 128 random bits: an existing one means this create is being repeated.
        return CreateStep(result=(job, True))
    if holder is None:
        return CreateStep()  # the holder vanished meanwhile: try again
    if holder.expires_at > job.created_at:
        return CreateStep(result=(holder, False))
    return CreateStep(drop=holder.id)  # expired, not purged yet: the key is free again


def claimed(rows: Sequence[Sequence[Any]]) -> tuple[Job, CapturedRequest | None] | None:
    """A :attr:`Statements.claim_with_request` answer: the claimed job and its request."""
    if not rows:
        return None
    row = rows[0]
    n = len(_COLUMNS)
    meta, body = row[n], row[n + 1]
    request = None if meta is None else CapturedRequest.from_meta_json(meta, bytes(body))
    return row_to_job(row[:n]), request
