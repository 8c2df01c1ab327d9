"""The webhook outbox: deliveries waiting to be sent, kept where a restart finds them.

A delivery is written once (:meth:`Outbox.enqueue`) and then moves through
``pending -> sending -> sent``, or back to ``pending`` for a retry, or to
``dead`` once its attempts are spent. ``sending`` is a lease: :meth:`Outbox.due`
claims deliveries atomically (one ``UPDATE ... WHERE`` in SQLite), so two
dispatchers, in threads or processes, never send the same delivery at the
same time; a dispatcher that dies mid-send loses its lease and the delivery
becomes due again (delivery is at-least-once; receivers dedupe on
``webhook-id``). Every later transition is compare-and-set on the claim token,
so a dispatcher whose lease ran out can't overwrite the newer claim's outcome.

Two implementations: :class:`MemoryOutbox` (one process, lost on exit) and
:class:`SQLiteOutbox` (a file, shared by processes). A Redis outbox can follow
the same contract later (a sorted set by ``next_at`` and a Lua claim script).
Everything is stored as plain columns or JSON text, never pickled.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigurationError, StoreError

__all__ = [
    "DEFAULT_LEASE",
    "Delivery",
    "DeliveryState",
    "DisabledEndpoint",
    "MemoryOutbox",
    "Outbox",
    "SQLiteOutbox",
    "new_message_id",
    "resolve_outbox",
]

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


def _check_claim_args(limit: int, lease: float) -> None:
    if limit < 1:
        raise ValueError(f"limit={limit!r} must be >= 1")
    if not lease > 0:
        raise ValueError(f"lease={lease!r} must be > 0")


class MemoryOutbox:
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

    def get(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            row = self._rows.get(delivery_id)
            return None if row is None else dataclasses.replace(row)

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        _check_claim_args(limit, lease)
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

    def _finish(self, delivery: Delivery, **changes: object) -> bool:
        with self._lock:
            row = self._rows.get(delivery.id)
            if (
                row is None
                or row.state is not DeliveryState.SENDING
                or delivery.claim is None
                or row.claim != delivery.claim
            ):
                return False
            for key, value in changes.items():
                setattr(row, key, value)
            return True

    def mark_sent(self, delivery: Delivery, *, now: float, attempts: int, status: int) -> bool:
        return self._finish(
            delivery,
            state=DeliveryState.SENT,
            claim=None,
            updated_at=now,
            attempts=attempts,
            last_status=status,
            last_error=None,
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
            state=DeliveryState.PENDING,
            claim=None,
            updated_at=now,
            next_at=next_at,
            attempts=attempts,
            last_error=last_error,
            last_status=status,
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
            state=DeliveryState.DEAD,
            claim=None,
            updated_at=now,
            attempts=attempts,
            last_error=last_error,
            last_status=status,
        )

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        with self._lock:
            rows = [r for r in self._rows.values() if state is None or r.state is state]
            rows.sort(key=lambda r: (r.created_at, r.id))
            return [dataclasses.replace(r) for r in rows[:limit]]

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        return self.list_deliveries(DeliveryState.DEAD, limit)

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

_COLUMNS = (
    "id, url, payload, state, attempts, created_at, updated_at, next_at, claim, "
    "last_error, last_status, job_id, client_supplied"
)


def _row_to_delivery(row: tuple[Any, ...]) -> Delivery:
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


class SQLiteOutbox:
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
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        # Fail at construction, not on the first delivery.
        with self._tx() as con:
            con.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("SQLiteOutbox is closed")
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(
                    self.path,
                    timeout=self._timeout,
                    isolation_level=None,
                    check_same_thread=False,  # only close() touches it from elsewhere
                )
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open webhook outbox {self.path!r}: {exc}") from exc
            self._local.con = con
            with self._all_lock:
                self._all.append(con)
        return con

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

    def get(self, delivery_id: str) -> Delivery | None:
        with self._tx() as con:
            row = con.execute(
                f"SELECT {_COLUMNS} FROM webhook_deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        return None if row is None else _row_to_delivery(row)

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        _check_claim_args(limit, lease)
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
        return [_row_to_delivery(r) for r in rows]

    def _finish(self, delivery: Delivery, sets: str, params: tuple[object, ...]) -> bool:
        if delivery.claim is None:
            return False
        with self._tx() as con:
            cur = con.execute(
                f"UPDATE webhook_deliveries SET {sets}, claim = NULL "
                "WHERE id = ? AND state = 'sending' AND claim = ?",
                (*params, delivery.id, delivery.claim),
            )
            return cur.rowcount == 1

    def mark_sent(self, delivery: Delivery, *, now: float, attempts: int, status: int) -> bool:
        return self._finish(
            delivery,
            "state = 'sent', updated_at = ?, attempts = ?, last_status = ?, last_error = NULL",
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
            "state = 'pending', updated_at = ?, next_at = ?, attempts = ?, "
            "last_error = ?, last_status = ?",
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
            "state = 'dead', updated_at = ?, attempts = ?, last_error = ?, last_status = ?",
            (now, attempts, last_error, status),
        )

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
        return [_row_to_delivery(r) for r in rows]

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        return self.list_deliveries(DeliveryState.DEAD, limit)

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
        self._closed = True
        with self._all_lock:
            cons, self._all = self._all, []
        for con in cons:
            con.close()
        self._local = threading.local()


def resolve_outbox(spec: Outbox | str) -> Outbox:
    """Turn ``"memory://"``, ``"sqlite:///webhooks.db"`` (``sqlite:////abs/path.db``)
    or an outbox instance into an outbox."""
    if not isinstance(spec, str):
        missing = [
            m
            for m in ("enqueue", "due", "mark_sent", "mark_retry", "mark_dead", "replay")
            if not callable(getattr(spec, m, None))
        ]
        if missing:
            raise ConfigurationError(
                f"outbox={spec!r} is not an outbox: it lacks {', '.join(missing)}"
            )
        return spec
    if spec == "memory://":
        return MemoryOutbox()
    if spec.startswith("sqlite:///"):
        path = spec[len("sqlite:///") :].split("?", 1)[0]
        return SQLiteOutbox(path)
    raise ConfigurationError(
        f"outbox={spec!r} is not understood: use 'memory://', 'sqlite:///webhooks.db' "
        "or an Outbox instance."
    )
