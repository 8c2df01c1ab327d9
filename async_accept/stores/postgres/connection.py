"""PostgreSQL connection setup: URL options, connection pools, the versioned schema.

Everything lives in one schema (``?schema=async_accept`` by default), so the
tables never mix with the application's own. The schema is versioned: table
``schema_version`` holds one row per applied migration, and
:func:`upgrade` applies the missing ones under an advisory lock (two
processes starting at once migrate once). :func:`ddl` prints the same
statements for DBAs who apply them by hand (``async-accept db sql``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import ConfigurationError, MissingDependencyError

try:
    import psycopg
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - exercised only without psycopg installed
    raise MissingDependencyError("The PostgreSQL store", "postgres", "psycopg") from exc

__all__ = [
    "SCHEMA_VERSION",
    "PostgresSettings",
    "ddl",
    "installed_version",
    "parse_url",
    "upgrade",
]

#: Connections a pool keeps at most unless ``?pool_max=`` says otherwise.
DEFAULT_POOL_MAX = 10
#: Seconds a call waits for a free (or new) connection before failing with StoreError:
#: a database that stopped answering must turn into a 503 quickly, not hang requests.
DEFAULT_POOL_TIMEOUT = 5.0
#: libpq's connect timeout unless the URL gives ``connect_timeout``.
DEFAULT_CONNECT_TIMEOUT = 5

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_OURS = ("schema", "pool_min", "pool_max", "pool_timeout", "migrate")


@dataclass(frozen=True)
class PostgresSettings:
    """What a ``postgresql://`` URL says: the libpq connection string and our options."""

    conninfo: str
    schema: str = "async_accept"
    pool_min: int = 1
    pool_max: int = DEFAULT_POOL_MAX
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    #: create or upgrade the tables on first use (False: a DBA applies ``db sql``)
    migrate: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def channel(self) -> str:
        """The ``LISTEN``/``NOTIFY`` channel that announces queued jobs."""
        return f"{self.schema}.queued"

    def redacted(self) -> str:
        """The connection string without its password, for messages."""
        url = urlsplit(self.conninfo)
        if url.password is None:
            return self.conninfo
        netloc = url.netloc.replace(f":{url.password}@", ":***@")
        return urlunsplit(url._replace(netloc=netloc))


def _number(spec: str, key: str, value: str, kind: type[int] | type[float], low: float) -> Any:
    try:
        out = kind(value)
    except ValueError:
        out = None
    if out is None or out < low:
        raise ConfigurationError(f"store={spec!r}: {key} must be a number >= {low:g}")
    return out


def parse_url(spec: str) -> PostgresSettings:
    """``postgresql://user@host:5432/db?schema=jobs&pool_max=20`` -> settings.

    ``schema``, ``pool_min``, ``pool_max``, ``pool_timeout`` and ``migrate`` are
    ours; every other query option (``sslmode``, ``application_name``, ...) goes to
    libpq unchanged.
    """
    url = urlsplit(spec)
    if url.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"store={spec!r}: use a postgresql:// or postgres:// URL")
    ours: dict[str, str] = {}
    libpq: list[tuple[str, str]] = []
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        (ours.__setitem__(key, value) if key in _OURS else libpq.append((key, value)))
    if not any(k == "connect_timeout" for k, _ in libpq):
        libpq.append(("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT)))
    schema = ours.get("schema", "async_accept")
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(
            f"store={spec!r}: schema={schema!r} must be a plain identifier "
            "(letters, digits, underscores; at most 63)"
        )
    pool_min = _number(spec, "pool_min", ours.get("pool_min", "1"), int, 0)
    pool_max = _number(spec, "pool_max", ours.get("pool_max", str(DEFAULT_POOL_MAX)), int, 1)
    if pool_max < pool_min:
        raise ConfigurationError(f"store={spec!r}: pool_max must be >= pool_min")
    timeout = ours.get("pool_timeout", str(DEFAULT_POOL_TIMEOUT))
    pool_timeout = _number(spec, "pool_timeout", timeout, float, 0.1)
    migrate = ours.get("migrate", "true").lower()
    if migrate not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigurationError(f"store={spec!r}: migrate must be true or false")
    conninfo = urlunsplit(("postgresql", url.netloc, url.path, urlencode(libpq), url.fragment))
    return PostgresSettings(
        conninfo=conninfo,
        schema=schema,
        pool_min=pool_min,
        pool_max=pool_max,
        pool_timeout=pool_timeout,
        migrate=migrate in ("true", "1", "yes"),
        extra=dict(libpq),
    )


# -- the schema ------------------------------------------------------------------------------

#: Version :func:`upgrade` brings a schema to; a schema from a newer release is refused.
SCHEMA_VERSION = 5

#: Migration ``n`` takes a schema from version ``n - 1`` to ``n``. Never edit a
#: released one: add the next. ``{s}`` is the quoted schema name.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE {s}.jobs (
            id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            status text NOT NULL,
            owner text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            deadline_at double precision NOT NULL,
            sla double precision NOT NULL,
            started_at double precision,
            finished_at double precision,
            percent double precision,
            message text,
            eta double precision,
            progress_at double precision,
            cancel_requested boolean NOT NULL DEFAULT false,
            worker_id text,
            heartbeat_at double precision,
            error text,
            result_status integer,
            result_location text,
            route text,
            idempotency_key text,
            fingerprint text,
            attempts integer NOT NULL DEFAULT 0,
            meta jsonb NOT NULL DEFAULT '{{}}'::jsonb
        )
        """,
        # Oldest first within a state (list_jobs, the queue), without a sort.
        "CREATE INDEX jobs_status_created ON {s}.jobs (status, created_at, seq)",
        "CREATE INDEX jobs_created ON {s}.jobs (created_at, seq)",
        "CREATE INDEX jobs_expires ON {s}.jobs (expires_at)",
        # One live job per key: racing creates with one key make one job.
        "CREATE UNIQUE INDEX jobs_idempotency_key ON {s}.jobs (idempotency_key) "
        "WHERE idempotency_key IS NOT NULL",
        # Bodies apart from the small, often updated job rows.
        """
        CREATE TABLE {s}.job_bodies (
            job_id text NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
            kind text NOT NULL,
            meta text NOT NULL,
            body bytea NOT NULL,
            PRIMARY KEY (job_id, kind)
        )
        """,
        """
        CREATE TABLE {s}.workers (
            id text PRIMARY KEY,
            last_heartbeat double precision NOT NULL,
            info text NOT NULL DEFAULT '{{}}'
        )
        """,
        """
        CREATE TABLE {s}.webhook_deliveries (
            id text PRIMARY KEY,
            url text NOT NULL,
            payload text NOT NULL,
            state text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            next_at double precision NOT NULL,
            claim text,
            last_error text,
            last_status integer,
            job_id text,
            client_supplied boolean NOT NULL DEFAULT false
        )
        """,
        "CREATE INDEX webhook_deliveries_due ON {s}.webhook_deliveries (state, next_at)",
        """
        CREATE TABLE {s}.webhook_disabled_endpoints (
            url text PRIMARY KEY,
            disabled_at double precision NOT NULL,
            reason text NOT NULL
        )
        """,
    ),
    2: (
        # Each route's learned run time (a JSON text, see timings.py).
        "CREATE TABLE {s}.run_times (route text PRIMARY KEY, data text NOT NULL)",
        # The change signal: every change a status read shows (not a heartbeat)
        # announces the job's id on "<schema>.changed", from any process.
        """
        CREATE FUNCTION {s}.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.changed', NEW.id);
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER jobs_changed AFTER UPDATE ON {s}.jobs FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status
            OR OLD.percent IS DISTINCT FROM NEW.percent
            OR OLD.message IS DISTINCT FROM NEW.message
            OR OLD.eta IS DISTINCT FROM NEW.eta
            OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested
            OR OLD.result_status IS DISTINCT FROM NEW.result_status
            OR OLD.attempts IS DISTINCT FROM NEW.attempts)
        EXECUTE FUNCTION {s}.notify_change()
        """,
    ),
    3: (
        # One owner's jobs, newest first (GET {prefix}/): the owner field holds the
        # credential's hash and, after a space, the owner cookie's; one index each,
        # on the expressions OWNER1 / OWNER2 that the query repeats.
        "CREATE INDEX jobs_owner1_created ON {s}.jobs "
        "((split_part(owner, ' ', 1)), created_at DESC, id DESC)",
        "CREATE INDEX jobs_owner2_created ON {s}.jobs "
        "((CASE WHEN strpos(owner, ' ') > 0 THEN substr(owner, strpos(owner, ' ') + 1) "
        "ELSE '' END), created_at DESC, id DESC)",
        # A random name for this schema in this database: processes that reach it
        # by different host names still see one store (a worker checks it against
        # its application's, see executors/store.py).
        "CREATE TABLE {s}.instance (id text NOT NULL "
        "DEFAULT md5(random()::text || clock_timestamp()::text || txid_current()::text))",
        "INSERT INTO {s}.instance DEFAULT VALUES",
    ),
    4: (
        # The workers' wake-up, sent by the database in the transaction that queues
        # a job (a create, a retry, a requeue), from whichever process made it: no
        # round trip of its own, and it can't be lost between the write and the signal.
        """
        CREATE FUNCTION {s}.notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NOT EXISTS (SELECT 1 FROM added WHERE status = 'queued') THEN
                    RETURN NULL;
                END IF;
            END IF;
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.queued', '');
            RETURN NULL;
        END
        $$
        """,
        # One signal a statement, however many rows a batch of creates inserts ("added",
        # the inserted rows, exists for this trigger only: the function reads it only then).
        """
        CREATE TRIGGER jobs_queued AFTER INSERT ON {s}.jobs
        REFERENCING NEW TABLE AS added FOR EACH STATEMENT
        EXECUTE FUNCTION {s}.notify_queued()
        """,
        """
        CREATE TRIGGER jobs_requeued AFTER UPDATE ON {s}.jobs FOR EACH ROW
        WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION {s}.notify_queued()
        """,
    ),
    # -- schema 5 (issue 15): wake the store workers only for jobs they claim -------------
    5: (
        # A job handed to an in-process executor (asyncio, thread) or a broker (Celery,
        # RQ) is never claimed by a store worker: its create, retry or requeue sends no
        # NOTIFY, a commit that takes PostgreSQL's global notify-queue lock. The engine
        # notes the executor in meta (EXECUTOR_META); a row without it (written before
        # schema 5, or straight through the store) still wakes the workers.
        """
        CREATE OR REPLACE FUNCTION {s}.notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NOT EXISTS (SELECT 1 FROM added WHERE status = 'queued'
                        AND COALESCE(meta->>'executor', 'store') = 'store') THEN
                    RETURN NULL;
                END IF;
            END IF;
            PERFORM pg_notify(TG_TABLE_SCHEMA || '.queued', '');
            RETURN NULL;
        END
        $$
        """,
        "DROP TRIGGER jobs_requeued ON {s}.jobs",
        """
        CREATE TRIGGER jobs_requeued AFTER UPDATE ON {s}.jobs FOR EACH ROW
        WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM NEW.status
            AND COALESCE(NEW.meta->>'executor', 'store') = 'store')
        EXECUTE FUNCTION {s}.notify_queued()
        """,
    ),
}

#: The two hashes of a job's owner field, as the expressions migration 3 indexes.
OWNER1 = "split_part(owner, ' ', 1)"
OWNER2 = "(CASE WHEN strpos(owner, ' ') > 0 THEN substr(owner, strpos(owner, ' ') + 1) ELSE '' END)"


def quoted(schema: str) -> str:
    """The schema as a quoted SQL identifier (already checked to be a plain one)."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(f"schema={schema!r} must be a plain identifier")
    return f'"{schema}"'


def _version_table(s: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {s}.schema_version "
        "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )


def _steps(schema: str, start: int, stop: int = SCHEMA_VERSION) -> list[str]:
    s = quoted(schema)
    out: list[str] = []
    for version in range(start + 1, stop + 1):
        out.extend(" ".join(stmt.split()).format(s=s) for stmt in MIGRATIONS[version])
        out.append(f"INSERT INTO {s}.schema_version (version) VALUES ({version})")
    return out


def ddl(schema: str = "async_accept", start: int = 0, stop: int = SCHEMA_VERSION) -> str:
    """The SQL that brings ``schema`` from version ``start`` to ``stop`` (by default
    :data:`SCHEMA_VERSION`), as one transaction a DBA can apply with ``psql -1 -f``."""
    s = quoted(schema)
    lines = [
        f"-- async_accept schema {schema!r}, version {start} -> {stop}",
        "BEGIN;",
        f"CREATE SCHEMA IF NOT EXISTS {s};",
        _version_table(s) + ";",
        *(stmt + ";" for stmt in _steps(schema, start, stop)),
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


def installed_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The schema's version in the database, 0 when it has no tables yet."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f"{quoted(schema)}.schema_version",)
    ).fetchone()
    if not row or not row[0]:
        return 0
    got = conn.execute(
        f"SELECT COALESCE(max(version), 0) FROM {quoted(schema)}.schema_version"
    ).fetchone()
    return int(got[0]) if got else 0


def _refuse_newer(schema: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} was written by a newer async_accept (schema "
            f"{version} > {SCHEMA_VERSION}): upgrade async_accept, or use another ?schema="
        )


def upgrade(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int]:
    """Bring ``schema`` to :data:`SCHEMA_VERSION` in one transaction; (before, after).

    An advisory lock on the schema name serializes processes that start together,
    so each migration runs once.
    """
    s = quoted(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"async_accept:{schema}",))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        conn.execute(_version_table(s))
        before = installed_version(conn, schema)
        _refuse_newer(schema, before)
        for stmt in _steps(schema, before):
            conn.execute(stmt)
    return before, SCHEMA_VERSION


def ensure_schema(conn: psycopg.Connection[Any], settings: PostgresSettings) -> None:
    """Check (and with ``migrate``, apply) the schema version a store needs."""
    version = installed_version(conn, settings.schema)
    _refuse_newer(settings.schema, version)
    if version == SCHEMA_VERSION:
        return
    if not settings.migrate:
        raise ConfigurationError(
            f"PostgreSQL schema {settings.schema!r} is at version {version}, this async_accept "
            f"needs {SCHEMA_VERSION}: run `async-accept db upgrade --store URL` (or apply "
            "`async-accept db sql`), or drop migrate=false from the store URL"
        )
    upgrade(conn, settings.schema)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True


async def _aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


def sync_pool(settings: PostgresSettings) -> psycopg_pool.ConnectionPool[Any]:
    """A blocking connection pool (autocommit connections), opened now without waiting."""
    return psycopg_pool.ConnectionPool(
        settings.conninfo,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.pool_timeout,
        configure=_configure,
        open=True,
        name=f"async-accept-{settings.schema}",
    )


class PoolTimeout(psycopg.OperationalError):
    """No connection became free (or could be opened) within ``pool_timeout``."""


class AsyncConnections:
    """psycopg's asyncio connections for one event loop: at most ``pool_max``, idle
    ones reused, broken ones dropped.

    Deliberately without background tasks (psycopg_pool's async pool runs
    maintenance tasks that swallow cancellation, so a loop shut down before the
    pool is closed never finishes): a connection is opened by the call that
    needs it, in that call's task, and the loop's own shutdown can always cancel
    it.
    """

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(settings.pool_max)
        self.closed = False

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self.closed:
            raise psycopg.OperationalError("the connection pool is closed")
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), self.settings.pool_timeout)
            else:  # a slot is free: taken at once (no timer, no task, on every statement)
                await self._slots.acquire()
        except asyncio.TimeoutError:
            raise PoolTimeout(
                f"no connection free within {self.settings.pool_timeout:g} s "
                f"(pool_max={self.settings.pool_max})"
            ) from None
        try:
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(
                    self.settings.conninfo, autocommit=True
                )
            try:
                yield conn
            except BaseException:
                if (
                    conn.closed
                    or conn.broken
                    or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                ):
                    await self._discard(conn)
                    conn = None
                raise
            finally:
                if conn is not None:
                    if self.closed or conn.closed:
                        await self._discard(conn)
                    else:
                        self._idle.append(conn)
        finally:
            self._slots.release()

    async def drop_idle(self) -> None:
        """Close every idle connection (after one turned out dead: so did the others)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)

    @staticmethod
    async def _discard(conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()

    async def close(self) -> None:
        self.closed = True
        await self.drop_idle()


def connect(settings: PostgresSettings) -> psycopg.Connection[Any]:
    """One autocommit connection outside any pool (migrations, LISTEN)."""
    return psycopg.connect(settings.conninfo, autocommit=True)
