"""The SQLite webhook outbox, beside the SQLite store (and shareable with its file)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import ConfigurationError, StoreError
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
    client_supplied INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (state, next_at);
CREATE TABLE IF NOT EXISTS webhook_disabled_endpoints (
    url TEXT PRIMARY KEY,
    disabled_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""


#: Selected in this order, as delivery_from_row reads them.
_COLUMNS = DELIVERY_COLUMNS

#: A job's notices, written by the store in the transaction that ends the job.
INSERT_NOTICE = (
    f"INSERT OR IGNORE INTO webhook_deliveries ({_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SQLiteOutbox(OutboxBase):
    """An outbox in a SQLite file (tables ``webhook_deliveries`` and
    ``webhook_disabled_endpoints``), shareable with the SQLite job store's file.

    WAL mode, one connection per thread; claims are a single
    ``UPDATE ... WHERE id IN (SELECT ... due ...)``, which SQLite runs under
    its write lock, so concurrent claimers never get the same row.
    """

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        if not path or path == ":memory:":
            raise ConfigurationError(
                f"SQLiteOutbox(path={path!r}) needs a file path: an in-memory database "
                "is private to one connection; use MemoryOutbox instead."
            )
        self.path = path
        self._conns = Connections(path, timeout=timeout, closed_message="SQLiteOutbox is closed")
        # Fail at construction, not on the first delivery.
        with self._tx() as con:
            con.executescript(_SCHEMA)

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
                f"INSERT OR IGNORE INTO webhook_deliveries ({_COLUMNS}) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
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
                ),
            )
        stored = self.get(delivery.id)
        if stored is None:  # pragma: no cover - deleted between the two statements
            raise StoreError(f"delivery {delivery.id} vanished right after enqueue")
        return stored

    def fill_payload(self, delivery_id: str, payload: str) -> bool:
        with self._tx() as con:
            cur = con.execute(
                "UPDATE webhook_deliveries SET payload = ? WHERE id = ? AND payload = ''",
                (payload, delivery_id),
            )
        return cur.rowcount == 1

    def get(self, delivery_id: str) -> Delivery | None:
        with self._tx() as con:
            row = con.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = ?", (delivery_id,)
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
                "  WHERE state IN ('pending', 'sending') AND next_at <= ?"
                "  ORDER BY next_at, created_at LIMIT ?"
                ") AND state IN ('pending', 'sending') AND next_at <= ?",
                (claim, now + lease, now, now, limit, now),
            )
            rows = con.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE claim = ? "
                "AND state = 'sending' ORDER BY created_at, id",
                (claim,),
            ).fetchall()
        return [delivery_from_row(r) for r in rows]

    def _finish(self, delivery_id: str, claim: str, end: ClaimEnd) -> bool:
        state, changes = end.state, end.changes
        sets = "".join(f", {name} = ?" for name in changes)
        with self._tx() as con:
            cur = con.execute(
                f"UPDATE webhook_deliveries SET state = ?{sets}, claim = NULL "
                "WHERE id = ? AND state = 'sending' AND claim = ?",
                (state.value, *changes.values(), delivery_id, claim),
            )
            return cur.rowcount == 1

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        with self._tx() as con:
            if state is None:
                rows = con.execute(
                    f"SELECT {_COLUMNS} FROM webhook_deliveries ORDER BY created_at, id LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = con.execute(
                    f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE state = ? "
                    "ORDER BY created_at, id LIMIT ?",
                    (DeliveryState(state).value, limit),
                ).fetchall()
        return [delivery_from_row(r) for r in rows]

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        with self._tx() as con:
            cur = con.execute(
                "UPDATE webhook_deliveries SET state = 'pending', next_at = ?, attempts = 0, "
                "updated_at = ?, claim = NULL WHERE id = ? AND state = 'dead'",
                (now, now, delivery_id),
            )
            if cur.rowcount != 1:
                return None
        return self.get(delivery_id)

    def disable_endpoint(self, url: str, now: float, reason: str) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT OR IGNORE INTO webhook_disabled_endpoints (url, disabled_at, reason) "
                "VALUES (?, ?, ?)",
                (url, now, reason),
            )

    def endpoint_disabled(self, url: str) -> bool:
        with self._tx() as con:
            row = con.execute(
                "SELECT 1 FROM webhook_disabled_endpoints WHERE url = ?", (url,)
            ).fetchone()
        return row is not None

    def list_disabled(self) -> list[DisabledEndpoint]:
        with self._tx() as con:
            rows = con.execute(
                "SELECT url, disabled_at, reason FROM webhook_disabled_endpoints "
                "ORDER BY disabled_at, url"
            ).fetchall()
        return [DisabledEndpoint(str(u), float(at), str(reason)) for u, at, reason in rows]

    def enable_endpoint(self, url: str) -> bool:
        with self._tx() as con:
            cur = con.execute("DELETE FROM webhook_disabled_endpoints WHERE url = ?", (url,))
            return cur.rowcount == 1

    def purge_sent(self, before: float) -> int:
        with self._tx() as con:
            cur = con.execute(
                "DELETE FROM webhook_deliveries WHERE state = 'sent' AND updated_at < ?",
                (before,),
            )
            return cur.rowcount

    def close(self) -> None:
        self._conns.close()
