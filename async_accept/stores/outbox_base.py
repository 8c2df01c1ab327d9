"""What every webhook outbox shares: the delivery record, the Outbox protocol
and a base class with the transitions written once.

A delivery is written once (:meth:`Outbox.enqueue`) and then moves through
``pending -> sending -> sent``, or back to ``pending`` for a retry, or to
``dead`` once its attempts are spent. ``sending`` is a lease: :meth:`Outbox.due`
claims deliveries atomically (one ``UPDATE ... WHERE`` in SQLite), so two
dispatchers, in threads or processes, never send the same delivery at the
same time; a dispatcher that dies mid-send loses its lease and the delivery
becomes due again (delivery is at-least-once; receivers dedupe on
``webhook-id``). Every later transition is compare-and-set on the claim token,
so a dispatcher whose lease ran out can't overwrite the newer claim's outcome.

Each store backend keeps its outbox beside it (``stores/<backend>/outbox.py``):
:class:`~async_accept.stores.memory.MemoryOutbox` (one process, lost on exit),
:class:`~async_accept.stores.sqlite.SQLiteOutbox` (a file, shared by processes)
and :class:`~async_accept.stores.redis.RedisOutbox` (shared by every machine
that reaches the Redis). Everything is stored as plain columns or JSON text,
never pickled.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..job import Job

#: Seconds a claimed delivery stays ours before another dispatcher may take it.
DEFAULT_LEASE = 120.0


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 128 random bits, URL-safe."""
    return "msg_" + secrets.token_urlsafe(16)


class DeliveryState(str, enum.Enum):
    """Where a delivery stands."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


def delivery_id(job_id: str, url: str) -> str:
    """The ``webhook-id`` of a job's notification to ``url``: the same every time,
    so recording it twice (two processes, a retry) records it once. SHA-1 hex, so
    the Redis scripts (``redis.sha1hex``) name it as Python does."""
    digest = hashlib.sha1(f"{job_id}\x00{url}".encode(), usedforsecurity=False)
    return "msg_" + digest.hexdigest()


def notice_targets(job: Job) -> list[tuple[str, bool]]:
    """Where an ended job is notified: ``(url, client_supplied)`` for its route's
    webhook and its client's callback. None for a job that is not over, or that
    never was one (its submit failed at accept: its client got a 503)."""
    if not job.terminal:
        return []
    kind = str((job.error or {}).get("type", ""))
    if job.started_at is None and kind.endswith("executor-unavailable"):
        return []
    out: list[tuple[str, bool]] = []
    for key, client_supplied in (("webhook", False), ("callback", True)):
        url = job.meta.get(key)
        if isinstance(url, str) and url:
            out.append((url, client_supplied))
    return out


def pending_notices(job: Job, now: float) -> list[Delivery]:
    """The deliveries a store writes with the call that ended ``job`` (in the same
    transaction, script or lock): due at once, their payload empty until the runtime
    renders it (:meth:`Outbox.fill_payload`), or the dispatcher does after a crash."""
    return [
        Delivery(
            id=delivery_id(job.id, url),
            url=url,
            payload="",
            created_at=now,
            next_at=0.0,  # due at once, whatever the dispatcher's clock says
            updated_at=now,
            job_id=job.id,
            client_supplied=client_supplied,
        )
        for url, client_supplied in notice_targets(job)
    ]


@dataclass
class Delivery:
    """One webhook message to one endpoint.

    ``id`` is the ``webhook-id``: the same on every attempt, so a receiver can
    drop duplicates. ``payload`` is the exact JSON text that is signed and
    sent. ``next_at`` is when the delivery is next due (POSIX seconds); while
    ``sending`` it is the end of the claim's lease. ``client_supplied`` marks
    a callback URL that came from a client, which the target policy checks
    against its allow-list on every attempt.
    """

    id: str
    url: str
    payload: str
    created_at: float
    next_at: float
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    updated_at: float = 0.0
    last_error: str | None = None
    last_status: int | None = None
    job_id: str | None = None
    client_supplied: bool = False
    claim: str | None = None


@dataclass(frozen=True)
class DisabledEndpoint:
    """An endpoint that answered ``410 Gone``: nothing is sent there any more."""

    url: str
    disabled_at: float
    reason: str


@runtime_checkable
class Outbox(Protocol):
    """Where deliveries wait. Callers pass ``now`` so tests control time."""

    def enqueue(self, delivery: Delivery) -> Delivery:
        """Record ``delivery`` as pending; when its id is already known,
        nothing is written and the stored delivery is returned."""
        ...

    def get(self, delivery_id: str) -> Delivery | None:
        """One delivery by id, or None."""
        ...

    def fill_payload(self, delivery_id: str, payload: str) -> bool:
        """Set the payload of a delivery written without one (with its job's end,
        see :func:`pending_notices`); False when it has one already or is unknown."""
        ...

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        """Claim up to ``limit`` deliveries due at ``now`` (pending with
        ``next_at <= now``, or sending with an expired lease), oldest due first.

        Each comes back ``sending`` with a fresh ``claim`` token and a lease
        until ``now + lease``. The claim is atomic: a delivery is handed to
        one caller only, across threads and processes.
        """
        ...

    def mark_sent(self, delivery: Delivery, *, now: float, attempts: int, status: int) -> bool:
        """CAS (still claimed by ``delivery.claim``) -> sent. False when the claim was lost."""
        ...

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
        """CAS claimed -> pending again, due at ``next_at``."""
        ...

    def mark_dead(
        self,
        delivery: Delivery,
        *,
        now: float,
        attempts: int,
        last_error: str,
        status: int | None = None,
    ) -> bool:
        """CAS claimed -> dead: a dead letter an operator can list and replay."""
        ...

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Deliveries (optionally in one state), oldest first."""
        ...

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        """Dead letters, oldest first."""
        ...

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        """Dead -> pending, due at ``now``, with its attempts reset.

        Returns the delivery, or None when it is unknown or not dead.
        """
        ...

    def disable_endpoint(self, url: str, now: float, reason: str) -> None:
        """Record that ``url`` must not be sent to any more (it answered 410)."""
        ...

    def endpoint_disabled(self, url: str) -> bool:
        """True when ``url`` was disabled."""
        ...

    def list_disabled(self) -> list[DisabledEndpoint]:
        """Every disabled endpoint, oldest first."""
        ...

    def enable_endpoint(self, url: str) -> bool:
        """Forget that ``url`` was disabled; True when it was."""
        ...

    def purge_sent(self, before: float) -> int:
        """Delete sent deliveries last updated before ``before``; how many went."""
        ...

    def close(self) -> None:
        """Release connections. The outbox is unusable afterwards."""
        ...


#: A delivery's columns in the SQL outboxes, in the order :func:`delivery_from_row` reads.
DELIVERY_COLUMNS = (
    "id, url, payload, state, attempts, created_at, updated_at, next_at, claim, "
    "last_error, last_status, job_id, client_supplied"
)


def notice_row(d: Delivery) -> tuple[Any, ...]:
    """A pending notice's :data:`DELIVERY_COLUMNS` values (``client_supplied`` as a bool)."""
    return (
        d.id, d.url, d.payload, DeliveryState.PENDING.value, 0, d.created_at, d.updated_at,
        d.next_at, None, None, None, d.job_id, d.client_supplied,
    )  # fmt: skip


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    """A :data:`DELIVERY_COLUMNS` row (SQLite or PostgreSQL types) as a Delivery."""
    (
        id_,
        url,
        payload,
        state,
        attempts,
        created_at,
        updated_at,
        next_at,
        claim,
        last_error,
        last_status,
        job_id,
        client_supplied,
    ) = row
    return Delivery(
        id=id_,
        url=url,
        payload=payload,
        state=DeliveryState(state),
        attempts=int(attempts),
        created_at=float(created_at),
        updated_at=float(updated_at),
        next_at=float(next_at),
        claim=claim,
        last_error=last_error,
        last_status=None if last_status is None else int(last_status),
        job_id=job_id,
        client_supplied=bool(client_supplied),
    )


def check_claim_args(limit: int, lease: float) -> None:
    """Refuse a claim of nothing or with a lease that has already run out."""
    if limit < 1:
        raise ValueError(f"limit={limit!r} must be >= 1")
    if not lease > 0:
        raise ValueError(f"lease={lease!r} must be > 0")


class ClaimEnd(NamedTuple):
    """How a claim ends: the delivery's next ``state``, when it is next due
    (``due_at``, for a retry) and the fields written with it (None clears one)."""

    state: DeliveryState
    due_at: float
    changes: dict[str, object]


class OutboxBase:
    """What every outbox backend shares: the three ends of a claim
    (sent, retry, dead) written once over the backend's compare-and-set
    :meth:`_finish`, and :meth:`list_dead` over :meth:`list_deliveries`."""

    def _finish(self, delivery_id: str, claim: str, end: ClaimEnd) -> bool:
        """CAS (still ``sending`` under ``claim``) -> ``state``, dropping
        the claim and writing ``changes`` (field -> value, None clears it).
        ``due_at`` is when a ``pending`` delivery is next due. False when the
        claim was lost. Called only for a delivery that has a claim."""
        raise NotImplementedError

    def _end_claim(
        self, delivery: Delivery, state: DeliveryState, due_at: float, changes: dict[str, object]
    ) -> bool:
        if delivery.claim is None:  # never claimed: nothing to end
            return False
        return self._finish(delivery.id, delivery.claim, ClaimEnd(state, due_at, changes))

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        raise NotImplementedError

    def mark_sent(self, delivery: Delivery, *, now: float, attempts: int, status: int) -> bool:
        changes: dict[str, object] = dict(
            updated_at=now, attempts=attempts, last_status=status, last_error=None
        )
        return self._end_claim(delivery, DeliveryState.SENT, now, changes)

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
        changes: dict[str, object] = dict(
            updated_at=now,
            next_at=next_at,
            attempts=attempts,
            last_error=last_error,
            last_status=status,
        )
        return self._end_claim(delivery, DeliveryState.PENDING, next_at, changes)

    def mark_dead(
        self,
        delivery: Delivery,
        *,
        now: float,
        attempts: int,
        last_error: str,
        status: int | None = None,
    ) -> bool:
        changes: dict[str, object] = dict(
            updated_at=now, attempts=attempts, last_error=last_error, last_status=status
        )
        return self._end_claim(delivery, DeliveryState.DEAD, now, changes)

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        return self.list_deliveries(DeliveryState.DEAD, limit)
