"""The in-process webhook outbox, beside the memory store."""

from __future__ import annotations

import dataclasses
import secrets
import threading

from ..outbox_base import (
    DEFAULT_LEASE,
    ClaimEnd,
    Delivery,
    DeliveryState,
    DisabledEndpoint,
    OutboxBase,
    check_claim_args,
)

__all__ = ["MemoryOutbox"]


class MemoryOutbox(OutboxBase):
    """An outbox in this process's memory: for tests and single-process apps
    that accept losing pending deliveries on exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Delivery] = {}
        self._disabled: dict[str, DisabledEndpoint] = {}

    def enqueue(self, delivery: Delivery) -> Delivery:
        with self._lock:
            existing = self._rows.get(delivery.id)
            if existing is not None:
                return dataclasses.replace(existing)
            row = dataclasses.replace(
                delivery,
                state=DeliveryState.PENDING,
                claim=None,
                updated_at=delivery.updated_at or delivery.created_at,
            )
            self._rows[row.id] = row
            return dataclasses.replace(row)

    def fill_payload(self, delivery_id: str, payload: str) -> bool:
        with self._lock:
            row = self._rows.get(delivery_id)
            if row is None or row.payload:
                return False
            row.payload = payload
            return True

    def get(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            row = self._rows.get(delivery_id)
            return None if row is None else dataclasses.replace(row)

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        check_claim_args(limit, lease)
        with self._lock:
            ready = sorted(
                (
                    r
                    for r in self._rows.values()
                    if r.state in (DeliveryState.PENDING, DeliveryState.SENDING)
                    and r.next_at <= now
                ),
                key=lambda r: (r.next_at, r.created_at),
            )[:limit]
            out = []
            for row in ready:
                row.state = DeliveryState.SENDING
                row.claim = secrets.token_hex(8)
                row.next_at = now + lease
                row.updated_at = now
                out.append(dataclasses.replace(row))
            return out

    def _finish(self, delivery_id: str, claim: str, end: ClaimEnd) -> bool:
        state, changes = end.state, end.changes
        with self._lock:
            row = self._rows.get(delivery_id)
            if row is None or row.state is not DeliveryState.SENDING or row.claim != claim:
                return False
            row.state = state
            row.claim = None
            for key, value in changes.items():
                setattr(row, key, value)
            return True

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        with self._lock:
            rows = [r for r in self._rows.values() if state is None or r.state is state]
            rows.sort(key=lambda r: (r.created_at, r.id))
            return [dataclasses.replace(r) for r in rows[:limit]]

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        with self._lock:
            row = self._rows.get(delivery_id)
            if row is None or row.state is not DeliveryState.DEAD:
                return None
            row.state = DeliveryState.PENDING
            row.next_at = now
            row.attempts = 0
            row.updated_at = now
            row.claim = None
            return dataclasses.replace(row)

    def disable_endpoint(self, url: str, now: float, reason: str) -> None:
        with self._lock:
            self._disabled.setdefault(url, DisabledEndpoint(url, now, reason))

    def endpoint_disabled(self, url: str) -> bool:
        with self._lock:
            return url in self._disabled

    def list_disabled(self) -> list[DisabledEndpoint]:
        with self._lock:
            return sorted(self._disabled.values(), key=lambda e: (e.disabled_at, e.url))

    def enable_endpoint(self, url: str) -> bool:
        with self._lock:
            return self._disabled.pop(url, None) is not None

    def purge_sent(self, before: float) -> int:
        with self._lock:
            gone = [
                k
                for k, r in self._rows.items()
                if r.state is DeliveryState.SENT and r.updated_at < before
            ]
            for k in gone:
                del self._rows[k]
            return len(gone)

    def close(self) -> None:
        with self._lock:
            self._rows.clear()
            self._disabled.clear()
