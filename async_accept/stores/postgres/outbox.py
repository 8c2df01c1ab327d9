"""The webhook outbox in PostgreSQL, beside the jobs (same database, schema and pool).

Tables ``webhook_deliveries`` and ``webhook_disabled_endpoints`` of the store's
schema. A claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP
LOCKED)``: dispatchers in any process on any machine never get the same
delivery, and never wait for each other's rows. Every later transition is
compare-and-set on the claim token, as in the other outboxes.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import StoreError
from ..outbox_base import (
    DEFAULT_LEASE,
    Delivery,
    DeliveryState,
    DisabledEndpoint,
    check_claim_args,
)
from .connection import quoted

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["PostgresOutbox"]

_COLUMNS = (
    "id, url, payload, state, attempts, created_at, updated_at, next_at, claim, "
    "last_error, last_status, job_id, client_supplied"
)


def _delivery(row: Sequence[Any]) -> Delivery:
    (id_, url, payload, state, attempts, created, updated, next_at, claim, err, status, job, cs) = (
        row
    )
    return Delivery(
        id=id_,
        url=url,
        payload=payload,
        state=DeliveryState(state),
        attempts=int(attempts),
        created_at=float(created),
        updated_at=float(updated),
        next_at=float(next_at),
        claim=claim,
        last_error=err,
        last_status=None if status is None else int(status),
        job_id=job,
        client_supplied=bool(cs),
    )


class PostgresOutbox:
    """Deliveries in the PostgreSQL store's schema, shared by every process that
    reaches the database. Built by :meth:`PostgresStore.default_outbox`; closing it
    leaves the store's pool open (the store closes it)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        s = quoted(store.schema)
        self._t = f"{s}.webhook_deliveries"
        self._d = f"{s}.webhook_disabled_endpoints"
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresOutbox schema={self._store.schema!r}>"

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        return self._store._rows(query, args)

    def _count(self, query: str, args: Sequence[Any]) -> int:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        return self._store._count(query, args)

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
            return _delivery(rows[0])
        # Inserted by another process after this statement's snapshot was taken.
        stored = self.get(delivery.id)
        if stored is None:  # pragma: no cover - deleted by another process in between
            raise StoreError(f"delivery {delivery.id} vanished right after enqueue")
        return stored

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._rows(f"SELECT {_COLUMNS} FROM {self._t} WHERE id = %s", (delivery_id,))
        return _delivery(rows[0]) if rows else None

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
        out = [_delivery(r) for r in rows]
        out.sort(key=lambda d: (d.created_at, d.id))
        return out

    def _finish(self, delivery: Delivery, sets: str, params: tuple[object, ...]) -> bool:
        if delivery.claim is None:
            return False
        return (
            self._count(
                f"UPDATE {self._t} SET {sets}, claim = NULL "
                "WHERE id = %s AND state = 'sending' AND claim = %s",
                (*params, delivery.id, delivery.claim),
            )
            == 1
        )

    def mark_sent(self, delivery: Delivery, *, now: float, attempts: int, status: int) -> bool:
        return self._finish(
            delivery,
            "state = 'sent', updated_at = %s, attempts = %s, last_status = %s, last_error = NULL",
            (now, attempts, status),
        )

    def mark_retry(
        self,
        delivery: Delivery,
        *,
        now: float,
        next_at: float,
        attempts: int,
        last_error: str,
        status: int | None = None,
    ) -> bool:
        return self._finish(
            delivery,
            "state = 'pending', updated_at = %s, next_at = %s, attempts = %s, "
            "last_error = %s, last_status = %s",
            (now, next_at, attempts, last_error, status),
        )

    def mark_dead(
        self,
        delivery: Delivery,
        *,
        now: float,
        attempts: int,
        last_error: str,
        status: int | None = None,
    ) -> bool:
        return self._finish(
            delivery,
            "state = 'dead', updated_at = %s, attempts = %s, last_error = %s, last_status = %s",
            (now, attempts, last_error, status),
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
        return [_delivery(r) for r in rows]

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        return self.list_deliveries(DeliveryState.DEAD, limit)

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        rows = self._rows(
            f"UPDATE {self._t} SET state = 'pending', next_at = %s, attempts = 0, "
            f"updated_at = %s, claim = NULL WHERE id = %s AND state = 'dead' RETURNING {_COLUMNS}",
            (now, now, delivery_id),
        )
        return _delivery(rows[0]) if rows else None

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
