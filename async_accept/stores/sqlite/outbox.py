"""The SQLite webhook outbox, beside the SQLite store (and shareable with its file)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import ConfigurationError, StoreError
from ..namespaces import check_namespace
from ..outbox_base import (
    DEFAULT_LEASE,
    DELIVERY_COLUMNS,
    ClaimEnd,
    Delivery,
    DeliveryState,
    DisabledEndpoint,
    OutboxBase,
    check_claim_args,
    delivery_from_row,
)
from .connection import Connections

__all__ = ["SQLiteOutbox"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_at REAL NOT NULL,
    claim TEXT,
    last_error TEXT,
    last_status INTEGER,
    job_id TEXT,
    client_supplied INTEGER NOT NULL DEFAULT 0,
    namespace TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_ns_due
    ON webhook_deliveries (namespace, state, next_at);
CREATE TABLE IF NOT EXISTS webhook_disabled_endpoints (
    namespace TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL,
    disabled_at REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (namespace, url)
);
"""

#: Tables of an older release (no namespaces) gain them in place; their rows go
#: to the default namespace ''.
_UPGRADE = """
ALTER TABLE webhook_deliveries ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
DROP INDEX IF EXISTS webhook_deliveries_due;
"""
_UPGRADE_DISABLED = """
ALTER TABLE webhook_disabled_endpoints RENAME TO webhook_disabled_endpoints_old;
CREATE TABLE webhook_disabled_endpoints (
    namespace TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL,
    disabled_at REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (namespace, url)
);
INSERT INTO webhook_disabled_endpoints (namespace, url, disabled_at, reason)
    SELECT '', url, disabled_at, reason FROM webhook_disabled_endpoints_old;
DROP TABLE webhook_disabled_endpoints_old;
"""


#: Selected in this order, as delivery_from_row reads them.
_COLUMNS = DELIVERY_COLUMNS

#: A job's notices, written by the store in the transaction that ends the job
#: (the :data:`_COLUMNS` values, then the namespace).
INSERT_NOTICE = (
    f"INSERT OR IGNORE INTO webhook_deliveries ({_COLUMNS}, namespace) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteOutbox(OutboxBase):
    """An outbox in a SQLite file (tables ``webhook_deliveries`` and
    ``webhook_disabled_endpoints``), shareable with the SQLite job store's file.

    WAL mode, one connection per thread; claims are a single
    ``UPDATE ... WHERE id IN (SELECT ... due ...)``, which SQLite runs under
    its write lock, so concurrent claimers never get the same row.

    ``namespace`` (as the store's: ``sqlite:///jobs.db?namespace=billing``) keeps
    this outbox's deliveries and disabled endpoints apart from other apps' in the
    same file: each app's dispatcher sends (and signs) only its own.
    """

    def __init__(self, path: str, *, timeout: float = 30.0, namespace: str | None = None) -> None:
        self.namespace = "" if namespace is None else check_namespace("SQLite", namespace)
        if not path or path == ":memory:":
            raise ConfigurationError(
                f"SQLiteOutbox(path={path!r}) needs a file path: an in-memory database "
                "is private to one connection; use MemoryOutbox instead."
            )
        self.path = path
        self._conns = Connections(path, timeout=timeout, closed_message="SQLiteOutbox is closed")
        # Fail at construction, not on the first delivery.
        with self._tx() as con:
            self._setup(con)

    @staticmethod
    def _setup(con: sqlite3.Connection) -> None:
        def columns(table: str) -> set[str]:
            return {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}

        con.execute("BEGIN IMMEDIATE")
        try:
            deliveries = columns("webhook_deliveries")
            if deliveries and "namespace" not in deliveries:
                for statement in _UPGRADE.split(";"):
                    if statement.strip():
                        con.execute(statement)
            disabled = columns("webhook_disabled_endpoints")
            if disabled and "namespace" not in disabled:
                for statement in _UPGRADE_DISABLED.split(";"):
                    if statement.strip():
                        con.execute(statement)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        if self._conns.closed:
            raise StoreError("SQLiteOutbox is closed")
        try:
            return self._conns.get()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open webhook outbox {self.path!r}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        con = self._conn()
        try:
            yield con
        except sqlite3.Error as exc:
            raise StoreError(f"webhook outbox {self.path!r}: {exc}") from exc

    def enqueue(self, delivery: Delivery) -> Delivery:
        with self._tx() as con:
            con.execute(
                f"INSERT OR IGNORE INTO webhook_deliveries ({_COLUMNS}, namespace) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                (
                    delivery.id,
                    delivery.url,
                    delivery.payload,
                    delivery.attempts,
                    delivery.created_at,
                    delivery.updated_at or delivery.created_at,
                    delivery.next_at,
                    delivery.last_error,
                    delivery.last_status,
                    delivery.job_id,
                    int(delivery.client_supplied),
                    self.namespace,
                ),
            )
        stored = self.get(delivery.id)
        if stored is None:  # pragma: no cover - deleted between the two statements
            raise StoreError(f"delivery {delivery.id} vanished right after enqueue")
        return stored

    def fill_payload(self, delivery_id: str, payload: str) -> bool:
        with self._tx() as con:
            cur = con.execute(
                "UPDATE webhook_deliveries SET payload = ? "
                "WHERE id = ? AND namespace = ? AND payload = ''",
                (payload, delivery_id, self.namespace),
            )
        return cur.rowcount == 1

    def get(self, delivery_id: str) -> Delivery | None:
        with self._tx() as con:
            row = con.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = ? AND namespace = ?",
                (delivery_id, self.namespace),
            ).fetchone()
        return None if row is None else delivery_from_row(row)

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        check_claim_args(limit, lease)
        claim = secrets.token_hex(8)
        with self._tx() as con:
            # One statement: the subquery and the update run under the same
            # write lock, so a row claimed here is no longer due for anyone.
            con.execute(
                "UPDATE webhook_deliveries SET state = 'sending', claim = ?, next_at = ?, "
                "updated_at = ? WHERE id IN ("
                "  SELECT id FROM webhook_deliveries"
                "  WHERE namespace = ? AND state IN ('pending', 'sending') AND next_at <= ?"
                "  ORDER BY next_at, created_at LIMIT ?"
                ") AND state IN ('pending', 'sending') AND next_at <= ?",
                (claim, now + lease, now, self.namespace, now, limit, now),
            )
            rows = con.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE claim = ? "
                "AND namespace = ? AND state = 'sending' ORDER BY created_at, id",
                (claim, self.namespace),
            ).fetchall()
        return [delivery_from_row(r) for r in rows]

    def _finish(self, delivery_id: str, claim: str, end: ClaimEnd) -> bool:
        state, changes = end.state, end.changes
        sets = "".join(f", {name} = ?" for name in changes)
        with self._tx() as con:
            cur = con.execute(
                f"UPDATE webhook_deliveries SET state = ?{sets}, claim = NULL "
                "WHERE id = ? AND namespace = ? AND state = 'sending' AND claim = ?",
                (state.value, *changes.values(), delivery_id, self.namespace, claim),
            )
            return cur.rowcount == 1

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        with self._tx() as con:
            if state is None:
                rows = con.execute(
                    f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE namespace = ? "
                    "ORDER BY created_at, id LIMIT ?",
                    (self.namespace, limit),
                ).fetchall()
            else:
                rows = con.execute(
                    f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE namespace = ? AND state = ? "
                    "ORDER BY created_at, id LIMIT ?",
                    (self.namespace, DeliveryState(state).value, limit),
                ).fetchall()
        return [delivery_from_row(r) for r in rows]

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        with self._tx() as con:
            cur = con.execute(
                "UPDATE webhook_deliveries SET state = 'pending', next_at = ?, attempts = 0, "
                "updated_at = ?, claim = NULL WHERE id = ? AND namespace = ? AND state = 'dead'",
                (now, now, delivery_id, self.namespace),
            )
            if cur.rowcount != 1:
                return None
        return self.get(delivery_id)

    def disable_endpoint(self, url: str, now: float, reason: str) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO webhook_disabled_endpoints "
                "(namespace, url, disabled_at, reason) VALUES (?, ?, ?, ?)",
                (self.namespace, url, now, reason),
            )

    def endpoint_disabled(self, url: str) -> bool:
        with self._tx() as con:
            row = con.execute(
                "SELECT 1 FROM webhook_disabled_endpoints WHERE namespace = ? AND url = ?",
                (self.namespace, url),
            ).fetchone()
        return row is not None

    def list_disabled(self) -> list[DisabledEndpoint]:
        with self._tx() as con:
            rows = con.execute(
                "SELECT url, disabled_at, reason FROM webhook_disabled_endpoints "
                "WHERE namespace = ? ORDER BY disabled_at, url",
                (self.namespace,),
            ).fetchall()
        return [DisabledEndpoint(str(u), float(at), str(reason)) for u, at, reason in rows]

    def enable_endpoint(self, url: str) -> bool:
        with self._tx() as con:
            cur = con.execute(
                "DELETE FROM webhook_disabled_endpoints WHERE namespace = ? AND url = ?",
                (self.namespace, url),
            )
            return cur.rowcount == 1

    def purge_sent(self, before: float) -> int:
        with self._tx() as con:
            cur = con.execute(
                "DELETE FROM webhook_deliveries "
                "WHERE namespace = ? AND state = 'sent' AND updated_at < ?",
                (self.namespace, before),
            )
            return cur.rowcount

    def close(self) -> None:
        self._conns.close()
