"""The SQLite store's tables, and how a row becomes a job."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from ...job import Job, JobStatus

#: ``PRAGMA user_version`` of the layout below; a file from a newer release is refused,
#: one of schema 2 is upgraded in place (:data:`UPGRADE_FROM_2`).
SCHEMA_VERSION = 3

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
#: A job's values in :data:`_COLUMNS` order, then its store's namespace.
_INSERT_JOB = (
    f"INSERT INTO jobs ({_COLUMN_LIST}, namespace) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))}) "
    # The id is 128 random bits: an existing one means this create is being repeated.
    "ON CONFLICT (id) DO NOTHING"
)
#: The two hashes a job's owner field may hold ("<credential> <owner cookie>"),
#: as SQL expressions the owner indexes are built on (queries must repeat them).
OWNER1 = (
    "(CASE WHEN instr(owner, ' ') > 0 THEN substr(owner, 1, instr(owner, ' ') - 1) ELSE owner END)"
)
OWNER2 = "(CASE WHEN instr(owner, ' ') > 0 THEN substr(owner, instr(owner, ' ') + 1) ELSE '' END)"
_DELETE_REQUEST = "DELETE FROM job_bodies WHERE job_id = ? AND kind = 'request'"
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
        meta TEXT NOT NULL DEFAULT '{}',
        namespace TEXT NOT NULL DEFAULT ''
    )
    """,
    # Every query of a store is confined to its namespace (the app's: several apps
    # may share one file), so every index leads with it.
    # Entries carry the rowid, so "ORDER BY created_at, rowid" (oldest first,
    # creation order for equal timestamps) reads the index in order, no sort.
    "CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (namespace, status, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_expires ON jobs (namespace, expires_at)",
    # One owner's jobs, newest first (GET {prefix}/): the owner field holds the
    # credential's hash and, after a space, the owner cookie's; one index each.
    f"CREATE INDEX IF NOT EXISTS jobs_owner1_created ON jobs (namespace, {OWNER1}, created_at, id)",
    f"CREATE INDEX IF NOT EXISTS jobs_owner2_created ON jobs (namespace, {OWNER2}, created_at, id)",
    # One live job per key and namespace: create() deletes an expired holder
    # before taking it over.
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs "
    "(namespace, idempotency_key) WHERE idempotency_key IS NOT NULL",
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
        info TEXT NOT NULL DEFAULT '{}',
        namespace TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID
    """,
    # Each route's learned run time (a JSON text, see timings.py), per namespace.
    """
    CREATE TABLE IF NOT EXISTS run_times (
        namespace TEXT NOT NULL DEFAULT '',
        route TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (namespace, route)
    ) WITHOUT ROWID
    """,
)


def upgrade_from_2(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3, in the transaction that opens the file, before :data:`_SCHEMA`
    runs: the rows of a schema 2 file (one app per file) go to the default
    namespace ``''``. The indexes keep their names (a process of the older release
    still open on the file finds them); :data:`_SCHEMA` recreates them led by the
    namespace."""

    def has(table: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        return row is not None

    def columns(table: str) -> set[str]:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}

    if has("jobs") and "namespace" not in columns("jobs"):
        conn.execute("ALTER TABLE jobs ADD COLUMN namespace TEXT NOT NULL DEFAULT ''")
    for index in (
        "jobs_status_created",
        "jobs_expires",
        "jobs_owner1_created",
        "jobs_owner2_created",
        "jobs_idempotency_key",
    ):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    if has("workers") and "namespace" not in columns("workers"):
        conn.execute("ALTER TABLE workers ADD COLUMN namespace TEXT NOT NULL DEFAULT ''")
    if has("run_times") and "namespace" not in columns("run_times"):
        conn.execute("ALTER TABLE run_times RENAME TO run_times_v2")
        conn.execute(_SCHEMA[-1])  # run_times, keyed by namespace and route
        conn.execute(
            "INSERT INTO run_times (namespace, route, data) "
            "SELECT '', route, data FROM run_times_v2"
        )
        conn.execute("DROP TABLE run_times_v2")


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
