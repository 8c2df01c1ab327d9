"""The Redis webhook outbox, beside the Redis store (same client when built with
:meth:`RedisOutbox.for_store`)."""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

import redis

from ...errors import ConfigurationError, StoreError
from ..outbox_base import (
    DEFAULT_LEASE,
    ClaimEnd,
    Delivery,
    DeliveryState,
    DisabledEndpoint,
    OutboxBase,
    check_claim_args,
)
from .connection import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_NAMESPACE,
    DEFAULT_SOCKET_TIMEOUT,
    PRELUDE,
    split_namespace,
)

__all__ = ["RedisOutbox"]


# After the common PRELUDE (ARGV[1] is the key prefix ``{namespace}:wh``).
_OUTBOX_PRELUDE = """
local function dkey(id) return P .. ':d:' .. id end
local function move(id, from, to, created)
  if from then redis.call('ZREM', P .. ':s:' .. from, id) end
  redis.call('ZADD', P .. ':s:' .. to, created, id)
end
"""

#: For the store's scripts that end a job (after their prelude, P the store's
#: namespace): ``notify(k, now)`` writes the ended job's notices into this outbox
#: in the same script, as :func:`~async_accept.stores.outbox_base.pending_notices`
#: does in Python (same ids, same rule).
NOTIFY_LUA = """
local function notify(k, now)
  local r = redis.call('HMGET', k, 'meta', 'id', 'started_at', 'error')
  if not r[1] then return end
  if (not r[3]) and r[4] and string.find(r[4], 'executor-unavailable', 1, true) then return end
  local m = cjson.decode(r[1])
  local W = P .. ':wh'
  for _, t in ipairs({{'webhook', '0'}, {'callback', '1'}}) do
    local url = m[t[1]]
    if type(url) == 'string' and url ~= '' then
      local id = 'msg_' .. redis.sha1hex(r[2] .. '\\0' .. url)
      local dk = W .. ':d:' .. id
      if redis.call('EXISTS', dk) == 0 then
        redis.call('HSET', dk, 'state', 'pending', 'id', id, 'url', url, 'payload', '',
                   'attempts', '0', 'created_at', now, 'updated_at', now, 'next_at', '0.0',
                   'client_supplied', t[2], 'job_id', r[2])
        redis.call('ZADD', W .. ':due', 0, id)
        redis.call('ZADD', W .. ':all', now, id)
        redis.call('ZADD', W .. ':s:pending', now, id)
      end
    end
  end
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
    # ARGV: P, id, payload
    "fill": """
local k = dkey(ARGV[2])
if redis.call('HGET', k, 'payload') ~= '' then return 0 end
redis.call('HSET', k, 'payload', ARGV[3])
return 1
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
for i = 6, #ARGV, 2 do put(k, ARGV[i], ARGV[i + 1]) end
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


class RedisOutbox(OutboxBase):
    """An outbox in Redis, shared by every process that reaches it (``pip install redis``).

    Keys under ``{namespace}:wh:`` (next to the Redis job store's, when built
    with :meth:`for_store`): a hash per delivery, a sorted set of what is due
    (by ``next_at``) and one per state (by ``created_at``). Each transition is
    one Lua script, so a claim is atomic and the later transitions are
    compare-and-set on the claim token, as in :class:`SQLiteOutbox`. Redis
    persistence (AOF or RDB) decides what survives a Redis restart.
    """

    def __init__(self, client: Any, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not isinstance(client, redis.Redis):
            raise ConfigurationError(f"RedisOutbox needs a redis.Redis client, not {client!r}")
        if not namespace or not isinstance(namespace, str):
            raise ConfigurationError("RedisOutbox namespace must be a non-empty string")
        self._redis_error: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = client
        self._p = f"{namespace}:wh"
        self._scripts = {
            name: client.register_script(PRELUDE + _OUTBOX_PRELUDE + body)
            for name, body in _REDIS_SCRIPTS.items()
        }
        self._owns_client = False

    @classmethod
    def for_store(cls, store: Any) -> RedisOutbox:
        """The outbox beside a :class:`~async_accept.stores.redis.RedisStore` (same client)."""
        return cls(store.client, namespace=store.namespace)

    @classmethod
    def from_url(cls, url: str, *, namespace: str | None = None, **kwargs: Any) -> RedisOutbox:
        """An outbox with its own client on ``url`` (keys under ``namespace``, else the
        URL's ``?namespace=``, else ``async_accept``); :meth:`close` disconnects it."""
        url, namespace = split_namespace(url, namespace)
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
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

    def fill_payload(self, delivery_id: str, payload: str) -> bool:
        return bool(self._run("fill", delivery_id, payload))

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self._plain(self._client.hgetall, f"{self._p}:d:{delivery_id}")
        if not raw:
            return None
        flat: list[Any] = []
        for k, v in raw.items():
            flat += [k, v]
        return _redis_row(flat)

    def due(self, now: float, limit: int = 20, lease: float = DEFAULT_LEASE) -> list[Delivery]:
        check_claim_args(limit, lease)
        rows = self._run("due", _rf(now), str(int(limit)), _rf(now + lease), secrets.token_hex(8))
        return [_redis_row(r) for r in rows]

    def _finish(self, delivery_id: str, claim: str, end: ClaimEnd) -> bool:
        state, due_at, changes = end
        args: list[str] = []
        for name, value in changes.items():
            if name in ("updated_at", "next_at"):
                value = _rf(cast(float, value))
            args += [name, "" if value is None else "=" + str(value)]
        done = self._run("finish", delivery_id, claim, state.value, _rf(due_at), *args)
        return bool(done)

    def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[Delivery]:
        if limit < 1:
            return []
        which = "" if state is None else DeliveryState(state).value
        return [_redis_row(r) for r in self._run("list", which, str(int(limit)))]

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
