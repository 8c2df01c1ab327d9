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

Three implementations: :class:`MemoryOutbox` (one process, lost on exit),
:class:`SQLiteOutbox` (a file, shared by processes) and :class:`RedisOutbox`
(shared by every machine that reaches the Redis; a sorted set by ``next_at``
and Lua scripts for the claim and each transition).
Everything is stored as plain columns or JSON text, never pickled.
"""

from __future__ import annotations

import dataclasses
import enum
import json
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
    "RedisOutbox",
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


# -- Redis ------------------------------------------------------------------------------

_REDIS_PRELUDE = """
local P = ARGV[1]
local function dkey(id) return P .. ':d:' .. id end
local function move(id, from, to, created)
  if from then redis.call('ZREM', P .. ':s:' .. from, id) end
  redis.call('ZADD', P .. ':s:' .. to, created, id)
end
"""

_REDIS_SCRIPTS = {
    # ARGV: P, id, created_at, next_at, field, value, ...
    "enqueue": """
local k = dkey(ARGV[2])
if redis.call('EXISTS', k) == 0 then
  redis.call('HSET', k, 'state', 'pending', unpack(ARGV, 5))
  redis.call('ZADD', P .. ':due', ARGV[4], ARGV[2])
  redis.call('ZADD', P .. ':all', ARGV[3], ARGV[2])
  redis.call('ZADD', P .. ':s:pending', ARGV[3], ARGV[2])
end
return redis.call('HGETALL', k)
""",
    # ARGV: P, now, limit, lease end, claim token
    "due": """
local ids = redis.call('ZRANGEBYSCORE', P .. ':due', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local k = dkey(id)
  local st = redis.call('HGET', k, 'state')
  if st == 'pending' or st == 'sending' then
    local created = redis.call('HGET', k, 'created_at')
    redis.call('HSET', k, 'state', 'sending', 'claim', ARGV[5], 'next_at', ARGV[4],
               'updated_at', ARGV[2])
    redis.call('ZADD', P .. ':due', ARGV[4], id)
    if st ~= 'sending' then move(id, st, 'sending', created) end
    table.insert(out, redis.call('HGETALL', k))
  else
    redis.call('ZREM', P .. ':due', id)
  end
end
return out
""",
    # ARGV: P, id, claim, new state, next_at, field, '=value' | '' (delete), ...
    "finish": """
local k = dkey(ARGV[2])
local r = redis.call('HMGET', k, 'state', 'claim', 'created_at')
if r[1] ~= 'sending' or r[2] ~= ARGV[3] then return 0 end
redis.call('HDEL', k, 'claim')
redis.call('HSET', k, 'state', ARGV[4])
for i = 6, #ARGV, 2 do
  local v = ARGV[i + 1]
  if string.sub(v, 1, 1) == '=' then
    redis.call('HSET', k, ARGV[i], string.sub(v, 2))
  else
    redis.call('HDEL', k, ARGV[i])
  end
end
move(ARGV[2], 'sending', ARGV[4], r[3])
if ARGV[4] == 'pending' then
  redis.call('ZADD', P .. ':due', ARGV[5], ARGV[2])
else
  redis.call('ZREM', P .. ':due', ARGV[2])
end
return 1
""",
    # ARGV: P, id, now
    "replay": """
local k = dkey(ARGV[2])
local r = redis.call('HMGET', k, 'state', 'created_at')
if r[1] ~= 'dead' then return false end
redis.call('HSET', k, 'state', 'pending', 'next_at', ARGV[3], 'attempts', '0',
           'updated_at', ARGV[3])
redis.call('HDEL', k, 'claim')
move(ARGV[2], 'dead', 'pending', r[2])
redis.call('ZADD', P .. ':due', ARGV[3], ARGV[2])
return redis.call('HGETALL', k)
""",
    # ARGV: P, state ('' = any), limit
    "list": """
local set = P .. ':all'
if ARGV[2] ~= '' then set = P .. ':s:' .. ARGV[2] end
local ids = redis.call('ZRANGE', set, 0, tonumber(ARGV[3]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local row = redis.call('HGETALL', dkey(id))
  if #row > 0 then table.insert(out, row) end
end
return out
""",
    # ARGV: P, before
    "purge_sent": """
local ids = redis.call('ZRANGE', P .. ':s:sent', 0, -1)
local n = 0
for _, id in ipairs(ids) do
  local k = dkey(id)
  local u = redis.call('HGET', k, 'updated_at')
  if (not u) or tonumber(u) < tonumber(ARGV[2]) then
    redis.call('DEL', k)
    redis.call('ZREM', P .. ':s:sent', id)
    redis.call('ZREM', P .. ':all', id)
    redis.call('ZREM', P .. ':due', id)
    n = n + 1
  end
end
return n
""",
}


def _rf(value: float) -> str:
    return repr(float(value))


def _redis_row(raw: Any) -> Delivery:
    d = {
        (k.decode("utf-8") if isinstance(k, bytes) else str(k)): (
            v.decode("utf-8") if isinstance(v, bytes) else str(v)
        )
        for k, v in zip(raw[::2], raw[1::2], strict=True)
    }
    status = d.get("last_status")
    return Delivery(
        id=d["id"],
        url=d["url"],
        payload=d["payload"],
        state=DeliveryState(d["state"]),
        attempts=int(d.get("attempts", "0")),
        created_at=float(d["created_at"]),
        updated_at=float(d.get("updated_at", d["created_at"])),
        next_at=float(d["next_at"]),
        claim=d.get("claim"),
        last_error=d.get("last_error"),
        last_status=None if status is None else int(status),
        job_id=d.get("job_id"),
        client_supplied=d.get("client_supplied") == "1",
    )


class RedisOutbox:
    """An outbox in Redis, shared by every process that reaches it (``pip install redis``).

    Keys under ``{namespace}:wh:`` (next to the Redis job store's, when built
    with :meth:`for_store`): a hash per delivery, a sorted set of what is due
    (by ``next_at``) and one per state (by ``created_at``). Each transition is
    one Lua script, so a claim is atomic and the later transitions are
    compare-and-set on the claim token, as in :class:`SQLiteOutbox`. Redis
    persistence (AOF or RDB) decides what survives a Redis restart.
    """

    def __init__(self, client: Any, *, namespace: str = "async_accept") -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - only without redis installed
            from .errors import MissingDependencyError

            raise MissingDependencyError("The Redis webhook outbox", "redis", "redis") from exc
        if not isinstance(client, redis.Redis):
            raise ConfigurationError(f"RedisOutbox needs a redis.Redis client, not {client!r}")
        if not namespace or not isinstance(namespace, str):
            raise ConfigurationError("RedisOutbox namespace must be a non-empty string")
        self._redis_error: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = client
        self._p = f"{namespace}:wh"
        self._scripts = {
            name: client.register_script(_REDIS_PRELUDE + body)
            for name, body in _REDIS_SCRIPTS.items()
        }
        self._owns_client = False

    @classmethod
    def for_store(cls, store: Any) -> RedisOutbox:
        """The outbox beside a :class:`~async_accept.stores.redis.RedisStore` (same client)."""
        return cls(store.client, namespace=store.namespace)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "async_accept", **kwargs: Any) -> RedisOutbox:
        """An outbox with its own client on ``url``; :meth:`close` disconnects it."""
        import redis

        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 5.0)
        box = cls(redis.Redis.from_url(url, **kwargs), namespace=namespace)
        box._owns_client = True
        return box

    def _run(self, name: str, *args: str | bytes) -> Any:
        try:
            return self._scripts[name](keys=[], args=[self._p, *args])
        except self._redis_error as exc:
            raise StoreError(f"Redis webhook outbox: {type(exc).__name__}: {exc}") from exc

    def _plain(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._redis_error as exc:
            raise StoreError(f"Redis webhook outbox: {type(exc).__name__}: {exc}") from exc

    def enqueue(self, delivery: Delivery) -> Delivery:
        fields: list[str] = [
            "id",
            delivery.id,
            "url",
            delivery.url,
            "payload",
            delivery.payload,
            "attempts",
            str(delivery.attempts),
            "created_at",
            _rf(delivery.created_at),
            "updated_at",
            _rf(delivery.updated_at or delivery.created_at),
            "next_at",
            _rf(delivery.next_at),
            "client_supplied",
            "1" if delivery.client_supplied else "0",
        ]
        for name, value in (
            ("last_error", delivery.last_error),
            ("last_status", delivery.last_status),
            ("job_id", delivery.job_id),
        ):
            if value is not None:
                fields += [name, str(value)]
        raw = self._run(
            "enqueue", delivery.id, _rf(delivery.created_at), _rf(delivery.next_at), *fields
        )
        return _redis_row(raw)

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self._plain(self._client.hgetall, f"{self._p}:d:{delivery_id}")
        if not raw:
            return None
        flat: list[Any] = []
        for k, v in raw.items():
            flat += [k, v]
        return _redis_row(flat)

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        _check_claim_args(limit, lease)
        rows = self._run("due", _rf(now), str(int(limit)), _rf(now + lease), secrets.token_hex(8))
        return [_redis_row(r) for r in rows]

    def _finish(
        self, delivery: Delivery, state: DeliveryState, due_at: float, **fields: object
    ) -> bool:
        if delivery.claim is None:
            return False
        args: list[str] = []
        for name, value in fields.items():
            args += [name, "" if value is None else "=" + str(value)]
        done = self._run("finish", delivery.id, delivery.claim, state.value, _rf(due_at), *args)
        return bool(done)

    def mark_sent(self, delivery: Delivery, *, now: float, attempts: int, status: int) -> bool:
        return self._finish(
            delivery,
            DeliveryState.SENT,
            now,
            updated_at=_rf(now),
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
            DeliveryState.PENDING,
            next_at,
            updated_at=_rf(now),
            next_at=_rf(next_at),
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
            DeliveryState.DEAD,
            now,
            updated_at=_rf(now),
            attempts=attempts,
            last_error=last_error,
            last_status=status,
        )

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        if limit < 1:
            return []
        which = "" if state is None else DeliveryState(state).value
        return [_redis_row(r) for r in self._run("list", which, str(int(limit)))]

    def list_dead(self, limit: int = 100) -> list[Delivery]:
        return self.list_deliveries(DeliveryState.DEAD, limit)

    def replay(self, delivery_id: str, now: float) -> Delivery | None:
        raw = self._run("replay", delivery_id, _rf(now))
        return None if not raw else _redis_row(raw)

    def disable_endpoint(self, url: str, now: float, reason: str) -> None:
        data = json.dumps({"disabled_at": now, "reason": reason})
        self._plain(self._client.hsetnx, f"{self._p}:disabled", url, data)

    def endpoint_disabled(self, url: str) -> bool:
        return bool(self._plain(self._client.hexists, f"{self._p}:disabled", url))

    def list_disabled(self) -> list[DisabledEndpoint]:
        raw = self._plain(self._client.hgetall, f"{self._p}:disabled")
        out = []
        for url, data in raw.items():
            d = json.loads(data)
            out.append(
                DisabledEndpoint(url.decode("utf-8"), float(d["disabled_at"]), str(d["reason"]))
            )
        return sorted(out, key=lambda e: (e.disabled_at, e.url))

    def enable_endpoint(self, url: str) -> bool:
        return bool(self._plain(self._client.hdel, f"{self._p}:disabled", url))

    def purge_sent(self, before: float) -> int:
        return int(self._run("purge_sent", _rf(before)))

    def close(self) -> None:
        """Disconnect the client when this outbox made it (:meth:`from_url`)."""
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect()
