"""The webhook outbox in PostgreSQL, beside the jobs (same database, schema and pool).

Tables ``webhook_deliveries`` and ``webhook_disabled_endpoints`` of the store's
schema. A claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
LOCKED)``: dispatchers in any process on any machine never get the same
delivery, and never wait for each other's rows. Every later transition is
compare-and-set on the claim token (the ends of a claim are written once, in
:class:`~async_accept.stores.outbox_base.OutboxBase`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ...errors import StoreError
from ...job import Job
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
    notice_row,
    pending_notices,
)
from .connection import quoted
from .sql import one

__all__ = ["PostgresOutbox"]


#: Selected in this order, as delivery_from_row reads them.
_COLUMNS = DELIVERY_COLUMNS


def insert_notice(schema: str) -> str:
    """The statement that writes one of a job's notices in the transaction that ends it."""
    return (
        f"INSERT INTO {quoted(schema)}.webhook_deliveries ({_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING"
    )


def end_with_notices(
    conn: psycopg.Connection[Any], statement: tuple[str, Sequence[Any]], insert: str, now: float
) -> Job | None:
    """Run ``statement`` (it may end a job) and write the ended job's notices
    (``insert``: :func:`insert_notice`) in the same transaction."""
    with conn.transaction():
        job = one(conn.execute(*statement).fetchall())
        notices = [] if job is None else pending_notices(job, now)
        if notices:
            conn.cursor().executemany(insert, [notice_row(n) for n in notices])
    return job


async def aend_with_notices(
    conn: psycopg.AsyncConnection[Any],
    statement: tuple[str, Sequence[Any]],
    insert: str,
    now: float,
) -> Job | None:
    """The awaited twin of :func:`end_with_notices`."""
    async with conn.transaction():
        job = one(await (await conn.execute(*statement)).fetchall())
        notices = [] if job is None else pending_notices(job, now)
        if notices:
            await conn.cursor().executemany(insert, [notice_row(n) for n in notices])
    return job


class PostgresOutbox(OutboxBase):
    """Deliveries in the PostgreSQL store's schema, shared by every process that
    reaches the database. Built by :meth:`PostgresStore.default_outbox`; closing it
    leaves the store's pool open (the store closes it)."""

    def __init__(
        self,
        schema: str,
        rows: Callable[[str, Sequence[Any]], list[Any]],
        count: Callable[[str, Sequence[Any]], int],
    ) -> None:
        """``rows`` and ``count`` run one statement on the store's pool and return
        its rows or its row count (database failures already StoreError)."""
        self.schema = schema
        s = quoted(schema)
        self._t = f"{s}.webhook_deliveries"
        self._d = f"{s}.webhook_disabled_endpoints"
        self._run_rows = rows
        self._run_count = count
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresOutbox schema={self.schema!r}>"

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        return self._run_rows(query, args)

    def _count(self, query: str, args: Sequence[Any]) -> int:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        return self._run_count(query, args)

    def enqueue(self, delivery: Delivery) -> Delivery:
        # Insert, or read what is there: one statement either way.
        rows = self._rows(
            f"WITH i AS (INSERT INTO {self._t} ({_COLUMNS}) "
            "VALUES (%s, %s, %s, 'pending', %s, %s, %s, %s, NULL, %s, %s, %s, %s) "
            f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}) "
            f"SELECT {_COLUMNS} FROM i UNION ALL "
            f"SELECT {_COLUMNS} FROM {self._t} WHERE id = %s AND NOT EXISTS (SELECT 1 FROM i)",
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
                bool(delivery.client_supplied),
                delivery.id,
            ),
        )
        if rows:
            return delivery_from_row(rows[0])
        # Inserted by another process after this statement's snapshot was taken.
        stored = self.get(delivery.id)
        if stored is None:  # pragma: no cover - deleted by another process in between
            raise StoreError(f"delivery {delivery.id} vanished right after enqueue")
        return stored

    def fill_payload(self, delivery_id: str, payload: str) -> bool:
        return (
            self._count(
                f"UPDATE {self._t} SET payload = %s WHERE id = %s AND payload = ''",
                (payload, delivery_id),
            )
            == 1
        )

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM {self._t} WHERE id = %s", (delivery_id,))
        return delivery_from_row(rows[0]) if rows else None

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        check_claim_args(limit, lease)
        rows = self._rows(
            f"UPDATE {self._t} SET state = 'sending', claim = %s, next_at = %s, updated_at = %s "
            f"WHERE id IN (SELECT id FROM {self._t} "
            "WHERE state IN ('pending', 'sending') AND next_at <= %s "
            "ORDER BY next_at, created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLUMNS}",
            (secrets.token_hex(8), now + lease, now, now, limit),
        )
        out = [delivery_from_row(r) for r in rows]
        out.sort(key=lambda d: (d.created_at, d.id))
        return out

    def _finish(self, delivery_id: str, claim: str, end: ClaimEnd) -> bool:
        # The column names come from OutboxBase's own ends (never from a caller).
        sets = "".join(f", {name} = %s" for name in end.changes)
        return (
            self._count(
                f"UPDATE {self._t} SET state = %s{sets}, claim = NULL "
                "WHERE id = %s AND state = 'sending' AND claim = %s",
                (end.state.value, *end.changes.values(), delivery_id, claim),
            )
            == 1
        )

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        if state is None:
            query = f"SELECT {_COLUMNS} FROM {self._t} ORDER BY created_at, id LIMIT %s"
            rows = self._rows(query, (limit,))
        else:
            query = (
                f"SELECT {_COLUMNS} FROM {self._t} WHERE state = %s "
                "ORDER BY created_at, id LIMIT %s"
            )
            rows = self._rows(query, (DeliveryState(state).value, limit))
        return [delivery_from_row(r) for r in rows]

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        rows = self._rows(
            f"UPDATE {self._t} SET state = 'pending', next_at = %s, attempts = 0, "
            f"updated_at = %s, claim = NULL WHERE id = %s AND state = 'dead' RETURNING {_COLUMNS}",
            (now, now, delivery_id),
        )
        return delivery_from_row(rows[0]) if rows else None

    def disable_endpoint(self, url: str, now: float, reason: str) -> None:
        self._count(
            f"INSERT INTO {self._d} (url, disabled_at, reason) VALUES (%s, %s, %s) "
            "ON CONFLICT (url) DO NOTHING",
            (url, now, reason),
        )

    def endpoint_disabled(self, url: str) -> bool:
        return bool(self._rows(f"SELECT 1 FROM {self._d} WHERE url = %s", (url,)))

    def list_disabled(self) -> list[DisabledEndpoint]:
        rows = self._rows(
            f"SELECT url, disabled_at, reason FROM {self._d} ORDER BY disabled_at, url"
        )
        return [DisabledEndpoint(str(u), float(at), str(reason)) for u, at, reason in rows]

    def enable_endpoint(self, url: str) -> bool:
        return self._count(f"DELETE FROM {self._d} WHERE url = %s", (url,)) == 1

    def purge_sent(self, before: float) -> int:
        return self._count(
            f"DELETE FROM {self._t} WHERE state = 'sent' AND updated_at < %s", (before,)
        )

    def close(self) -> None:
        """Unusable afterwards; the pool stays open for the store that owns it."""
        self._closed = True
