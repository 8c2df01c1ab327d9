"""The Redis job store: shared by every process that reaches the same Redis.

Layout, under a namespace ``ns`` (default ``async_accept``):

``{ns}:job:{id}``
    A hash per job: one field per :class:`~async_accept.job.Job` attribute
    (strings; floats in ``repr`` form so they round-trip exactly; dicts as
    JSON; absent field = ``None``), plus ``req_meta``/``req_body`` and
    ``res_meta``/``res_body`` (bodies kept as raw bytes, never pickled) and
    ``_m``, the job's member in the index sets below.
``{ns}:status:{status}``
    A sorted set per state, scored by ``created_at``. Members are
    ``<16-digit sequence>:<id>`` so jobs created in the same instant keep
    their creation order (``list_jobs`` is oldest first).
``{ns}:expiry``
    A sorted set of the same members scored by ``expires_at``
    (``purge_expired``).
``{ns}:idem:{key}``
    Idempotency key -> job id, living as long as the job.
``{ns}:seq``
    The creation counter.

Every write is one Lua script (EVALSHA through redis-py ``Script`` objects,
which reload a script the server forgot after a restart), so each state
change is atomic and checks the state it expects. Job keys also carry a Redis
TTL at their ``expires_at``, so an abandoned namespace cleans itself up;
reads honour ``expires_at`` against the caller's ``now`` regardless.

:attr:`RedisStore.aio` is the native asyncio twin (``redis.asyncio``, same
scripts and layout) that the ASGI front door awaits instead of hopping to a
thread. Every failure of Redis itself surfaces as
:class:`~async_accept.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError, MissingDependencyError, StoreError
from ..job import CapturedRequest, CapturedResponse, Job, JobStatus
from .base import WORKER_RETENTION

try:
    import redis
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript, Script
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without redis installed
    raise MissingDependencyError("The Redis store", "redis", "redis") from exc

__all__ = ["AsyncRedisStore", "RedisStore"]

T = TypeVar("T")

#: Socket timeouts applied by :meth:`RedisStore.from_url` unless given: a
#: Redis that stopped answering must turn into a 503 quickly, not hang requests.
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Connections the asyncio client of a store opens at most. More concurrent
#: store calls than this wait (up to the socket timeout) for a free connection
#: instead of failing with ``MaxConnectionsError``: a burst of accepts must
#: queue, not turn into 503s. Pass ``max_connections=`` to change it.
DEFAULT_ASYNC_MAX_CONNECTIONS = 64

#: Round trips one event loop keeps in flight to Redis at most. Calls made while
#: that many are out wait, then go together in one pipeline (one write, one
#: read, one pooled connection): under load, many requests share a round trip.
_MAX_IN_FLIGHT = 4
#: Calls sent in one pipeline at most.
_PIPELINE_MAX = 64

_STATUSES = tuple(s.value for s in JobStatus)
_PURGE_BATCH = 500
_CLOSE_TIMEOUT = 5.0

# -- field encoding ----------------------------------------------------------------------

_KINDS = {
    "str": "s",
    "JobStatus": "status",
    "float": "f",
    "int": "i",
    "bool": "b",
    "dict[str, Any]": "j",
}


def _kind(name: str, annotation: object) -> str:
    base = str(annotation).replace(" | None", "")
    try:
        return _KINDS[base]
    except KeyError:  # pragma: no cover - fires when Job grows a field of a new type
        raise TypeError(
            f"Job.{name} has type {annotation!r}, which the Redis store cannot encode"
        ) from None


#: (field name, kind) for every Job attribute, in declaration order. Derived
#: from the dataclass so a new Job field is stored without touching this module.
_FIELDS: tuple[tuple[str, str], ...] = tuple((f.name, _kind(f.name, f.type)) for f in fields(Job))
_NAMES: tuple[str, ...] = tuple(name for name, _ in _FIELDS)
_NAMES_M = (*_NAMES, "_m")  # what the scripts return for a job
_STATUS_AT = _NAMES.index("status")
_CREATED_AT = _NAMES.index("created_at")


def _enc(kind: str, value: Any) -> str:
    if kind == "f":
        return repr(float(value))
    if kind == "i":
        return str(int(value))
    if kind == "b":
        return "1" if value else "0"
    if kind == "status":
        return JobStatus(value).value
    if kind == "j":
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _dec(kind: str, raw: bytes) -> Any:
    if kind == "f":
        return float(raw)
    if kind == "i":
        return int(raw)
    if kind == "b":
        return raw == b"1"
    if kind == "status":
        return JobStatus(raw.decode())
    if kind == "j":
        return json.loads(raw)
    return raw.decode()


def _job(row: Any) -> Job | None:
    """A Job from an HMGET-shaped row (values aligned with ``_NAMES``), or None."""
    if not row or row[_STATUS_AT] is None:  # no status: the hash is gone
        return None
    kwargs = {
        name: _dec(kind, raw)
        for (name, kind), raw in zip(_FIELDS, row, strict=False)
        if raw is not None
    }
    return Job(**kwargs)


def _opt(value: str | bytes | None) -> str | bytes:
    """An optional script argument: ``=value`` when given, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return b"=" + value
    return "=" + value


def _f(value: float) -> str:
    return repr(float(value))


# -- Lua ---------------------------------------------------------------------------------

# Shared by every script. ARGV[1] is always the namespace. Keys other than the
# job key are derived from it inside the scripts (fine on a standalone Redis
# or a replica set; not Redis Cluster).
_PRELUDE = (
    """
local P = ARGV[1]
local F = {"""
    + ", ".join(f"'{n}'" for n in _NAMES_M)
    + """}
local STATUSES = {"""
    + ", ".join(f"'{s}'" for s in _STATUSES)
    + """}
local function meta(k) return redis.call('HMGET', k, unpack(F)) end
local function live(k, now)
  local e = redis.call('HGET', k, 'expires_at')
  return e and tonumber(e) > now
end
local function skey(s) return P .. ':status:' .. s end
local function jkey(id) return P .. ':job:' .. id end
local function idof(m) return string.sub(m, 18) end
local function setstatus(k, to)
  local r = redis.call('HMGET', k, 'status', '_m', 'created_at')
  redis.call('ZREM', skey(r[1]), r[2])
  redis.call('ZADD', skey(to), r[3], r[2])
  redis.call('HSET', k, 'status', to)
end
local function put(k, f, v)
  if string.sub(v, 1, 1) == '=' then
    redis.call('HSET', k, f, string.sub(v, 2))
  else
    redis.call('HDEL', k, f)
  end
end
local function owned(k, w, now)
  if not live(k, now) then return false end
  local r = redis.call('HMGET', k, 'status', 'worker_id')
  return r[1] == 'processing' and r[2] == w
end
local function unindex(m, st)
  if st then
    redis.call('ZREM', skey(st), m)
  else
    for _, s in ipairs(STATUSES) do redis.call('ZREM', skey(s), m) end
  end
  redis.call('ZREM', P .. ':expiry', m)
end
local function drop(k, m)
  local r = redis.call('HMGET', k, 'status', 'idempotency_key', 'id')
  if r[2] then
    local ik = P .. ':idem:' .. r[2]
    if redis.call('GET', ik) == r[3] then redis.call('DEL', ik) end
  end
  unindex(m, r[1])
  redis.call('DEL', k)
end
"""
)

_SCRIPTS: dict[str, str] = {
    # KEYS: job, [idempotency key]. ARGV: ns, id, created_at, expires_at, status,
    # fields (a JSON array: field, value, ...), request meta, request body.
    # Returns {1} (created) or {0, existing job}. The fields travel as one
    # argument: redis-py encodes every argument in Python, ~2 us each.
    "create": """
local k = KEYS[1]
local now = tonumber(ARGV[3])
if KEYS[2] then
  local other = redis.call('GET', KEYS[2])
  if other and other ~= ARGV[2] and live(jkey(other), now) then
    return {0, meta(jkey(other))}
  end
end
-- The id is 128 random bits: if it exists, this is a retry of our own create.
if redis.call('EXISTS', k) == 1 then return {1} end
local m = string.format('%016d', redis.call('INCR', P .. ':seq')) .. ':' .. ARGV[2]
local fv = cjson.decode(ARGV[6])
local n = #fv
fv[n + 1], fv[n + 2], fv[n + 3], fv[n + 4] = 'req_meta', ARGV[7], 'req_body', ARGV[8]
redis.call('HSET', k, '_m', m, unpack(fv))
redis.call('ZADD', skey(ARGV[5]), ARGV[3], m)
redis.call('ZADD', P .. ':expiry', ARGV[4], m)
-- Redis drops the keys at expires_at, or after the job's lifetime from now when
-- the caller's clock runs behind the server's: never before the caller sees it expire.
local t = redis.call('TIME')
local srv = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = math.floor((tonumber(ARGV[4]) - now) * 1000)
local at = math.max(math.floor(tonumber(ARGV[4]) * 1000), srv + life, srv + 1000)
at = string.format('%d', at)
redis.call('PEXPIREAT', k, at)
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[2], 'PXAT', at) end
return {1}
""",
    # KEYS: job. ARGV: ns. The job's fields (one short argument list to encode,
    # where an HMGET would name every field).
    "get": """
return meta(KEYS[1])
""",
    # KEYS: job. ARGV: ns, worker, now.
    "claim": """
local k = KEYS[1]
if not live(k, tonumber(ARGV[3])) then return false end
local r = redis.call('HMGET', k, 'status', 'cancel_requested')
if r[1] ~= 'queued' or r[2] == '1' then return false end
setstatus(k, 'processing')
redis.call('HSET', k, 'worker_id', ARGV[2], 'started_at', ARGV[3],
  'heartbeat_at', ARGV[3], 'updated_at', ARGV[3])
redis.call('HINCRBY', k, 'attempts', 1)
return meta(k)
""",
    # KEYS: job. ARGV: ns, worker, now.
    "heartbeat": """
local k = KEYS[1]
if not owned(k, ARGV[2], tonumber(ARGV[3])) then return false end
redis.call('HSET', k, 'heartbeat_at', ARGV[3])
return meta(k)
""",
    # KEYS: job. ARGV: ns, worker, now, percent?, message?, eta?
    "progress": """
local k = KEYS[1]
if not owned(k, ARGV[2], tonumber(ARGV[3])) then return false end
put(k, 'percent', ARGV[4])
put(k, 'message', ARGV[5])
put(k, 'eta', ARGV[6])
redis.call('HSET', k, 'progress_at', ARGV[3], 'updated_at', ARGV[3], 'heartbeat_at', ARGV[3])
return meta(k)
""",
    # KEYS: job. ARGV: ns, worker, now, status, res_meta?, res_body?,
    # result_status? (the response, kept only when given), error?,
    # result_location? (written as given, None clears).
    "finish": """
local k = KEYS[1]
if not owned(k, ARGV[2], tonumber(ARGV[3])) then return false end
setstatus(k, ARGV[4])
redis.call('HSET', k, 'finished_at', ARGV[3], 'updated_at', ARGV[3])
local response = {'res_meta', 'res_body', 'result_status'}
for i, f in ipairs(response) do
  local v = ARGV[4 + i]
  if string.sub(v, 1, 1) == '=' then redis.call('HSET', k, f, string.sub(v, 2)) end
end
put(k, 'error', ARGV[8])
put(k, 'result_location', ARGV[9])
if ARGV[4] == 'completed' then
  redis.call('HSET', k, 'percent', '100.0')
  redis.call('HDEL', k, 'eta')
end
return meta(k)
""",
    # KEYS: job. ARGV: ns, now, error json, expected status, ...
    "fail": """
local k = KEYS[1]
if not live(k, tonumber(ARGV[2])) then return false end
local st = redis.call('HGET', k, 'status')
local ok = false
for i = 4, #ARGV do if ARGV[i] == st then ok = true end end
if not ok then return false end
setstatus(k, 'failed')
redis.call('HSET', k, 'error', ARGV[3], 'finished_at', ARGV[2], 'updated_at', ARGV[2])
return meta(k)
""",
    # KEYS: job. ARGV: ns, now. Returns false (unknown) or {changed, job}.
    "cancel": """
local k = KEYS[1]
if not live(k, tonumber(ARGV[2])) then return false end
local r = redis.call('HMGET', k, 'status', 'cancel_requested')
if r[1] == 'queued' then
  setstatus(k, 'canceled')
  redis.call('HSET', k, 'cancel_requested', '1', 'finished_at', ARGV[2], 'updated_at', ARGV[2])
  return {1, meta(k)}
end
if r[1] == 'processing' and r[2] ~= '1' then
  redis.call('HSET', k, 'cancel_requested', '1', 'updated_at', ARGV[2])
  return {1, meta(k)}
end
return {0, meta(k)}
""",
    # KEYS: job. ARGV: ns, worker, now.
    "requeue": """
local k = KEYS[1]
if not owned(k, ARGV[2], tonumber(ARGV[3])) then return false end
-- A job whose cancel was requested ends canceled: nobody would claim it.
if redis.call('HGET', k, 'cancel_requested') == '1' then
  setstatus(k, 'canceled')
  redis.call('HSET', k, 'finished_at', ARGV[3])
else
  setstatus(k, 'queued')
end
redis.call('HDEL', k, 'worker_id', 'heartbeat_at')
redis.call('HSET', k, 'updated_at', ARGV[3])
return meta(k)
""",
    # ARGV: ns, limit, max score, status, ... Returns the first `limit` live jobs
    # of each status (oldest first); index entries whose job Redis already
    # expired are dropped on the way.
    "list": """
local limit = tonumber(ARGV[2])
local out, stale = {}, {}
for i = 4, #ARGV do
  local zk = skey(ARGV[i])
  local found, offset = 0, 0
  while found < limit do
    local want = limit - found
    local ms = redis.call('ZRANGEBYSCORE', zk, '-inf', ARGV[3], 'LIMIT', offset, want)
    for _, m in ipairs(ms) do
      local jk = jkey(idof(m))
      if redis.call('EXISTS', jk) == 1 then
        out[#out + 1] = meta(jk)
        found = found + 1
      else
        stale[#stale + 1] = m
      end
    end
    offset = offset + #ms
    if #ms < want then break end
  end
end
for _, m in ipairs(stale) do unindex(m, nil) end
return out
""",
    # ARGV: ns. Drops index entries of jobs Redis already expired, then counts.
    "count": """
local t = redis.call('TIME')
local ms = redis.call('ZRANGEBYSCORE', P .. ':expiry', '-inf', tonumber(t[1]) + 1,
  'LIMIT', 0, 1000)
for _, m in ipairs(ms) do
  if redis.call('EXISTS', jkey(idof(m))) == 0 then unindex(m, nil) end
end
local out = {}
for i, s in ipairs(STATUSES) do out[i] = redis.call('ZCARD', skey(s)) end
return out
""",
    # ARGV: ns, now, batch. Returns {purged, seen}; the caller repeats while seen == batch.
    "purge": """
local now = tonumber(ARGV[2])
local ms = redis.call('ZRANGEBYSCORE', P .. ':expiry', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local n = 0
for _, m in ipairs(ms) do
  local k = jkey(idof(m))
  local e = redis.call('HGET', k, 'expires_at')
  if e and tonumber(e) > now then
    redis.call('ZADD', P .. ':expiry', e, m)
  elseif e then
    drop(k, m)
    n = n + 1
  else
    unindex(m, nil)
    n = n + 1
  end
end
return {n, #ms}
""",
    # KEYS: job. ARGV: ns.
    "delete": """
local m = redis.call('HGET', KEYS[1], '_m')
if not m then return 0 end
drop(KEYS[1], m)
return 1
""",
    # KEYS: jobs. ARGV: ns, now, stale_before. Marks queued jobs (not cancel-requested)
    # whose 'dispatched_at' is absent or older than stale_before; returns their positions.
    "dispatch": """
local now = tonumber(ARGV[2])
local out = {}
for i, k in ipairs(KEYS) do
  if live(k, now) then
    local r = redis.call('HMGET', k, 'status', 'cancel_requested', 'dispatched_at')
    if r[1] == 'queued' and r[2] ~= '1' and (not r[3] or tonumber(r[3]) < tonumber(ARGV[3])) then
      redis.call('HSET', k, 'dispatched_at', ARGV[2])
      out[#out + 1] = i
    end
  end
end
return out
""",
    # KEYS: job. ARGV: ns, now. failed (not cancel-requested) -> queued, a new attempt.
    "retry": """
local k = KEYS[1]
if not live(k, tonumber(ARGV[2])) then return false end
local r = redis.call('HMGET', k, 'status', 'cancel_requested', 'sla')
if r[1] ~= 'failed' or r[2] == '1' then return false end
setstatus(k, 'queued')
redis.call('HDEL', k, 'worker_id', 'heartbeat_at', 'started_at', 'finished_at', 'percent',
  'message', 'eta', 'progress_at', 'error', 'result_status', 'result_location', 'res_meta',
  'res_body', 'dispatched_at')
local deadline = string.format('%.17g', tonumber(ARGV[2]) + 2 * tonumber(r[3]))
redis.call('HSET', k, 'updated_at', ARGV[2], 'deadline_at', deadline)
return meta(k)
""",
}

# The worker registry (health): {ns}:workers, a hash id -> info JSON, and
# {ns}:workers:seen, a sorted set id -> last heartbeat.
# ARGV: ns, id, now, info.
_SCRIPTS["worker_beat"] = """
redis.call('HSET', P .. ':workers', ARGV[2], ARGV[4])
redis.call('ZADD', P .. ':workers:seen', ARGV[3], ARGV[2])
return 1
"""
# ARGV: ns, cutoff. Forgets workers silent since before cutoff; returns
# {id, last heartbeat, info} triples, most recent first.
_SCRIPTS["workers"] = """
local seen = P .. ':workers:seen'
local stale = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. ARGV[2])
for _, id in ipairs(stale) do
  redis.call('HDEL', P .. ':workers', id)
  redis.call('ZREM', seen, id)
end
local out = {}
local ids = redis.call('ZREVRANGE', seen, 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local info = redis.call('HGET', P .. ':workers', ids[i])
  if info then table.insert(out, {ids[i], ids[i + 1], info}) end
end
return out
"""

_SOURCES = {name: _PRELUDE + body for name, body in _SCRIPTS.items()}


# -- what each method sends and how it reads the answer -----------------------------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One round trip: a script (by name) or, when ``script`` is None, an HMGET."""

    script: str | None
    keys: list[str]
    args: list[str | bytes]
    parse: Callable[[Any], T]


def _parse_cancel(raw: Any) -> tuple[Job | None, bool]:
    if not raw:
        return None, False
    return _job(raw[1]), bool(raw[0])


class _Layout:
    """Key names and the calls behind every store method, shared by both faces."""

    def __init__(self, namespace: str) -> None:
        if not namespace or not isinstance(namespace, str):
            raise ConfigurationError("RedisStore namespace must be a non-empty string")
        self.ns = namespace

    def job_key(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def idem_key(self, key: str) -> str:
        return f"{self.ns}:idem:{key}"

    def create(self, job: Job, request: CapturedRequest) -> _Call[tuple[Job, bool]]:
        keys = [self.job_key(job.id)]
        if job.idempotency_key is not None:
            keys.append(self.idem_key(job.idempotency_key))
        args: list[str | bytes] = [
            self.ns,
            job.id,
            _f(job.created_at),
            _f(job.expires_at),
            JobStatus(job.status).value,
        ]
        pairs: list[str] = []
        for name, kind in _FIELDS:
            value = getattr(job, name)
            if value is not None:
                pairs += [name, _enc(kind, value)]
        # ensure_ascii=False: Lua gets the very UTF-8 bytes HSET stored before.
        args += [
            json.dumps(pairs, ensure_ascii=False, separators=(",", ":")),
            request.meta_json(),
            request.body,
        ]

        def parse(raw: Any) -> tuple[Job, bool]:
            if raw[0]:
                return job, True
            existing = _job(raw[1])
            assert existing is not None  # the script checked it is live
            return existing, False

        return _Call("create", keys, args, parse)

    def get(self, job_id: str, now: float) -> _Call[Job | None]:
        def parse(raw: Any) -> Job | None:
            job = _job(raw)
            return job if job is not None and job.expires_at > now else None

        return _Call("get", [self.job_key(job_id)], [self.ns], parse)

    def get_request(self, job_id: str) -> _Call[CapturedRequest | None]:
        def parse(raw: Any) -> CapturedRequest | None:
            meta, body = raw
            if meta is None:
                return None
            return CapturedRequest.from_meta_json(meta.decode(), body or b"")

        return _Call(None, [self.job_key(job_id)], ["req_meta", "req_body"], parse)

    def get_result(self, job_id: str) -> _Call[CapturedResponse | None]:
        def parse(raw: Any) -> CapturedResponse | None:
            meta, body = raw
            if meta is None:
                return None
            return CapturedResponse.from_meta_json(meta.decode(), body or b"")

        return _Call(None, [self.job_key(job_id)], ["res_meta", "res_body"], parse)

    def claim(self, job_id: str, worker_id: str, now: float) -> _Call[Job | None]:
        return _Call("claim", [self.job_key(job_id)], [self.ns, worker_id, _f(now)], _job)

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> _Call[Job | None]:
        return _Call("heartbeat", [self.job_key(job_id)], [self.ns, worker_id, _f(now)], _job)

    def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> _Call[Job | None]:
        args: list[str | bytes] = [
            self.ns,
            worker_id,
            _f(now),
            _opt(None if percent is None else _f(percent)),
            _opt(message),
            _opt(None if eta is None else _f(eta)),
        ]
        return _Call("progress", [self.job_key(job_id)], args, _job)

    def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None,
        error: dict[str, Any] | None,
        result_location: str | None,
    ) -> _Call[Job | None]:
        status = JobStatus(status)
        if not status.terminal:
            raise ValueError(f"finish() needs a terminal status, not {status.value!r}")
        args: list[str | bytes] = [
            self.ns,
            worker_id,
            _f(now),
            status.value,
            _opt(None if response is None else response.meta_json()),
            _opt(None if response is None else response.body),
            _opt(None if response is None else str(int(response.status))),
            _opt(None if error is None else _enc("j", error)),
            _opt(result_location),
        ]
        return _Call("finish", [self.job_key(job_id)], args, _job)

    def fail(
        self, job_id: str, expected: Collection[JobStatus], now: float, error: dict[str, Any]
    ) -> _Call[Job | None]:
        args: list[str | bytes] = [self.ns, _f(now), _enc("j", error)]
        args += [JobStatus(s).value for s in expected]
        return _Call("fail", [self.job_key(job_id)], args, _job)

    def cancel(self, job_id: str, now: float) -> _Call[tuple[Job | None, bool]]:
        return _Call("cancel", [self.job_key(job_id)], [self.ns, _f(now)], _parse_cancel)

    def requeue(self, job_id: str, worker_id: str, now: float) -> _Call[Job | None]:
        return _Call("requeue", [self.job_key(job_id)], [self.ns, worker_id, _f(now)], _job)

    def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> _Call[list[str]]:
        ids = list(job_ids)

        def parse(raw: Any) -> list[str]:
            return [ids[int(i) - 1] for i in raw]

        keys = [self.job_key(j) for j in ids]
        return _Call("dispatch", keys, [self.ns, _f(now), _f(stale_before)], parse)

    def retry(self, job_id: str, now: float) -> _Call[Job | None]:
        return _Call("retry", [self.job_key(job_id)], [self.ns, _f(now)], _job)

    def list_jobs(
        self, status: JobStatus | None, limit: int, created_before: float | None
    ) -> _Call[list[Job]]:
        limit = int(limit)
        statuses = _STATUSES if status is None else (JobStatus(status).value,)
        top = "+inf" if created_before is None else "(" + _f(created_before)
        args: list[str | bytes] = [self.ns, str(max(limit, 0)), top, *statuses]

        def parse(raw: Any) -> list[Job]:
            if limit <= 0:
                return []
            rows = sorted(raw, key=lambda r: (float(r[_CREATED_AT]), r[-1]))  # created_at, sequence
            return [job for job in map(_job, rows[:limit]) if job is not None]

        return _Call("list", [], args, parse)

    def count_by_status(self) -> _Call[dict[JobStatus, int]]:
        def parse(raw: Any) -> dict[JobStatus, int]:
            return {JobStatus(s): int(n) for s, n in zip(_STATUSES, raw, strict=True)}

        return _Call("count", [], [self.ns], parse)

    def purge_batch(self, now: float) -> _Call[tuple[int, bool]]:
        def parse(raw: Any) -> tuple[int, bool]:
            return int(raw[0]), int(raw[1]) >= _PURGE_BATCH

        return _Call("purge", [], [self.ns, _f(now), str(_PURGE_BATCH)], parse)

    def delete(self, job_id: str) -> _Call[bool]:
        return _Call("delete", [self.job_key(job_id)], [self.ns], bool)

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> _Call[None]:
        data = json.dumps(info, separators=(",", ":"))
        return _Call("worker_beat", [], [self.ns, worker_id, _f(now), data], lambda raw: None)

    def list_workers(self, now: float) -> _Call[list[dict[str, Any]]]:
        def parse(raw: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for wid, score, info in raw:
                entry: dict[str, Any] = json.loads(info)
                entry.update(id=wid.decode("utf-8"), last_heartbeat=float(score))
                out.append(entry)
            return out

        return _Call("workers", [], [self.ns, _f(now - WORKER_RETENTION)], parse)


def _store_error(exc: BaseException) -> StoreError:
    return StoreError(f"Redis store: {type(exc).__name__}: {exc}")


# -- the synchronous store ----------------------------------------------------------------


class RedisStore:
    """Jobs in Redis, shared by every process (and machine) that reaches it.

    Build it with :meth:`from_url` (``redis://``, ``rediss://``, ``unix://``)
    or from a client: ``RedisStore(redis.Redis(...), async_client=...)``. The
    clients must not decode responses (bodies are bytes). :attr:`aio` is the
    awaitable twin; :meth:`close` releases both.
    """

    shared = True
    blocking = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        async_client: aioredis.Redis | None = None,
        namespace: str = "async_accept",
        _async_factory: Callable[[], aioredis.Redis] | None = None,
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise ConfigurationError(f"RedisStore needs a redis.Redis client, not {client!r}")
        _refuse_decoding(client)
        if async_client is not None:
            _refuse_decoding(async_client)
        self._layout = _Layout(namespace)
        self._client = client
        self._scripts: dict[str, Script] = {
            name: client.register_script(src) for name, src in _SOURCES.items()
        }
        self._closed = False
        if async_client is not None:
            fixed = async_client
            factory: Callable[[], aioredis.Redis] = lambda: fixed  # noqa: E731
        elif _async_factory is not None:
            factory = _async_factory
        else:
            factory = _async_twin_factory(client)
        #: The native asyncio face (``redis.asyncio``), picked up by ``as_async()``.
        self.aio = AsyncRedisStore(self._layout, factory)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "async_accept", **kwargs: Any) -> RedisStore:
        """A store on ``redis://``, ``rediss://`` or ``unix://`` ``url``.

        ``kwargs`` go to both redis-py clients (``redis.Redis.from_url`` and
        ``redis.asyncio.Redis.from_url``). Socket timeouts default to 5 seconds.
        """
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"RedisStore.from_url({url!r}): use a redis://, rediss:// or unix:// URL"
            )
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisStore stores bodies as bytes: do not pass decode_responses=True"
            )
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        try:
            client = redis.Redis.from_url(url, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"RedisStore.from_url({url!r}): {exc}") from exc

        akwargs = dict(kwargs)
        akwargs.setdefault("max_connections", DEFAULT_ASYNC_MAX_CONNECTIONS)

        def factory() -> aioredis.Redis:
            return aioredis.Redis.from_pool(_blocking_pool_from_url(url, akwargs))

        return cls(client, namespace=namespace, _async_factory=factory)

    @property
    def namespace(self) -> str:
        return self._layout.ns

    @property
    def client(self) -> redis.Redis:
        """The synchronous redis-py client (shared by the webhook outbox)."""
        return self._client

    def __repr__(self) -> str:
        return f"<RedisStore namespace={self._layout.ns!r} client={self._client!r}>"

    def _run(self, call: _Call[T]) -> T:
        if self._closed:
            raise StoreError("Redis store: the store was closed")
        try:
            if call.script is None:
                raw = self._client.hmget(call.keys[0], call.args)
            else:
                raw = self._scripts[call.script](keys=call.keys, args=call.args)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        return call.parse(raw)

    def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return self._run(self._layout.create(job, request))

    def get(self, job_id: str, now: float) -> Job | None:
        return self._run(self._layout.get(job_id, now))

    def get_request(self, job_id: str) -> CapturedRequest | None:
        return self._run(self._layout.get_request(job_id))

    def get_result(self, job_id: str) -> CapturedResponse | None:
        return self._run(self._layout.get_result(job_id))

    def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._layout.claim(job_id, worker_id, now))

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._layout.heartbeat(job_id, worker_id, now))

    def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        return self._run(self._layout.set_progress(job_id, worker_id, now, percent, message, eta))

    def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Job | None:
        return self._run(
            self._layout.finish(job_id, worker_id, now, status, response, error, result_location)
        )

    def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Job | None:
        return self._run(self._layout.fail(job_id, expected, now, error))

    def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        return self._run(self._layout.cancel(job_id, now))

    def requeue(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return self._run(self._layout.requeue(job_id, worker_id, now))

    def mark_dispatched(self, job_ids: Sequence[str], now: float, stale_before: float) -> list[str]:
        if not job_ids:
            return []
        return self._run(self._layout.mark_dispatched(job_ids, now, stale_before))

    def retry(self, job_id: str, now: float) -> Job | None:
        return self._run(self._layout.retry(job_id, now))

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
    ) -> list[Job]:
        return self._run(self._layout.list_jobs(status, limit, created_before))

    def count_by_status(self) -> dict[JobStatus, int]:
        return self._run(self._layout.count_by_status())

    def purge_expired(self, now: float) -> int:
        total, more = 0, True
        while more:  # batches keep each script short, so Redis never stalls on a big purge
            purged, more = self._run(self._layout.purge_batch(now))
            total += purged
        return total

    def delete(self, job_id: str) -> bool:
        return self._run(self._layout.delete(job_id))

    def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        self._run(self._layout.worker_heartbeat(worker_id, now, info))

    def list_workers(self, now: float) -> list[dict[str, Any]]:
        return self._run(self._layout.list_workers(now))

    def close(self) -> None:
        """Disconnect both clients. The store is unusable afterwards.

        The asyncio connections are closed on the event loop that opened them:
        by then usually already done, when that loop shut down (see
        :class:`AsyncRedisStore`); await ``store.aio.aclose()`` to do it earlier.
        """
        if self._closed:
            return
        self._closed = True
        self.aio._close_from_sync()
        self._client.close()
        self._client.connection_pool.disconnect()


# -- the asyncio twin ---------------------------------------------------------------------


@dataclass
class _LoopClient:
    """The async client (and its scripts) one event loop uses."""

    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    scripts: dict[str, AsyncScript]
    guard: Any = None  # the async generator whose finalization closes the client
    #: round trips in flight (direct calls and pipelines)
    active: int = 0
    #: calls waiting for a pipeline, with the futures their callers await
    pending: list[tuple[_Call[Any], asyncio.Future[Any]]] = field(default_factory=list)
    drains: set[asyncio.Task[None]] = field(default_factory=set)


class AsyncRedisStore:
    """The awaitable face of :class:`RedisStore` (``store.aio``), on ``redis.asyncio``.

    asyncio connections belong to the event loop that opened them, so each
    loop that uses the store gets its own client. The client is closed when
    its loop shuts down (``asyncio.run``, uvicorn, AnyIO portals all finalize
    async generators then), when :meth:`aclose` is awaited on that loop, or by
    :meth:`RedisStore.close`, whichever comes first.
    """

    def __init__(self, layout: _Layout, factory: Callable[[], aioredis.Redis]) -> None:
        self._layout = layout
        self._factory = factory
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<AsyncRedisStore namespace={self._layout.ns!r}>"

    async def _connection(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        lc = self._loops.get(loop)
        if lc is not None:
            return lc
        if self._closed:
            raise StoreError("Redis store: the store was closed")
        client = self._factory()
        scripts = {name: client.register_script(src) for name, src in _SOURCES.items()}
        lc = _LoopClient(loop, client, scripts)
        with self._lock:
            stale = [other for other in self._loops.values() if other.loop.is_closed()]
            for other in stale:  # loops closed without finalizing: nothing left to await
                del self._loops[other.loop]
            self._loops[loop] = lc
        lc.guard = self._guard(lc)
        await lc.guard.__anext__()  # registers it with the loop's async-generator hooks
        return lc

    async def _guard(self, lc: _LoopClient) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._loops.get(lc.loop) is lc:
                    del self._loops[lc.loop]
            with contextlib.suppress(RedisError, OSError):
                await lc.client.aclose(close_connection_pool=True)

    async def _run(self, call: _Call[T]) -> T:
        try:
            lc = await self._connection()
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        if lc.active >= _MAX_IN_FLIGHT:
            # Busy: wait for a pipeline to carry this call with the others.
            future: asyncio.Future[Any] = lc.loop.create_future()
            lc.pending.append((call, future))
            return call.parse(await future)
        lc.active += 1
        try:
            raw = await self._send_one(lc, call)
        except (RedisError, OSError) as exc:
            raise _store_error(exc) from exc
        finally:
            lc.active -= 1
            if lc.pending and lc.active < _MAX_IN_FLIGHT:
                self._start_drain(lc)
        return call.parse(raw)

    @staticmethod
    async def _send_one(lc: _LoopClient, call: _Call[Any]) -> Any:
        if call.script is None:
            return await lc.client.hmget(call.keys[0], call.args)
        return await lc.scripts[call.script](keys=call.keys, args=call.args)

    def _start_drain(self, lc: _LoopClient) -> None:
        lc.active += 1
        task = lc.loop.create_task(self._drain(lc))
        lc.drains.add(task)
        task.add_done_callback(lc.drains.discard)

    async def _drain(self, lc: _LoopClient) -> None:
        """Send the waiting calls, a pipeline at a time, until none is left."""
        try:
            while lc.pending:
                batch = lc.pending[:_PIPELINE_MAX]
                del lc.pending[:_PIPELINE_MAX]
                await self._send_pipeline(lc, batch)
        finally:
            lc.active -= 1
            if lc.pending and lc.active < _MAX_IN_FLIGHT and not lc.loop.is_closed():
                self._start_drain(lc)

    async def _send_pipeline(
        self, lc: _LoopClient, batch: list[tuple[_Call[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            pipe = lc.client.pipeline(transaction=False)
            for call, _ in batch:
                if call.script is None:
                    pipe.hmget(call.keys[0], call.args)
                else:
                    sha = lc.scripts[call.script].sha
                    pipe.evalsha(sha, len(call.keys), *call.keys, *call.args)
            results = await pipe.execute(raise_on_error=False)
            for i, raw in enumerate(results):
                if isinstance(raw, NoScriptError):  # Redis restarted or flushed its scripts
                    try:
                        results[i] = await self._send_one(lc, batch[i][0])
                    except (RedisError, OSError) as exc:
                        results[i] = exc
        except (RedisError, OSError) as exc:
            results = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is closing): tell the waiters
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreError("Redis store: the call was cancelled"))
            raise
        for (_, future), raw in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled; the command ran anyway
                continue
            if isinstance(raw, (RedisError, OSError)):
                error = _store_error(raw)
                error.__cause__ = raw
                future.set_exception(error)
            else:
                future.set_result(raw)

    async def aclose(self) -> None:
        """Close the client of the running event loop (other loops close on shutdown)."""
        lc = self._loops.get(asyncio.get_running_loop())
        if lc is not None and lc.guard is not None:
            await lc.guard.aclose()

    def _close_from_sync(self) -> None:
        self._closed = True
        with self._lock:
            remaining = list(self._loops.values())
        for lc in remaining:
            loop = lc.loop
            if loop.is_closed() or lc.guard is None:
                continue  # closed without finalizing its async generators: nothing to await on
            coro = lc.guard.aclose()
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                # close() called from a coroutine on that very loop: finish it soon after
                task = loop.create_task(coro)
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(coro, loop)
                with contextlib.suppress(Exception):
                    fut.result(_CLOSE_TIMEOUT)
            else:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(coro)

    async def create(self, job: Job, request: CapturedRequest) -> tuple[Job, bool]:
        return await self._run(self._layout.create(job, request))

    async def get(self, job_id: str, now: float) -> Job | None:
        return await self._run(self._layout.get(job_id, now))

    async def get_request(self, job_id: str) -> CapturedRequest | None:
        return await self._run(self._layout.get_request(job_id))

    async def get_result(self, job_id: str) -> CapturedResponse | None:
        return await self._run(self._layout.get_result(job_id))

    async def claim(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._run(self._layout.claim(job_id, worker_id, now))

    async def heartbeat(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._run(self._layout.heartbeat(job_id, worker_id, now))

    async def set_progress(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        percent: float | None,
        message: str | None,
        eta: float | None,
    ) -> Job | None:
        return await self._run(
            self._layout.set_progress(job_id, worker_id, now, percent, message, eta)
        )

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        now: float,
        status: JobStatus,
        response: CapturedResponse | None = None,
        error: dict[str, Any] | None = None,
        result_location: str | None = None,
    ) -> Job | None:
        return await self._run(
            self._layout.finish(job_id, worker_id, now, status, response, error, result_location)
        )

    async def fail(
        self,
        job_id: str,
        expected: Collection[JobStatus],
        now: float,
        error: dict[str, Any],
    ) -> Job | None:
        return await self._run(self._layout.fail(job_id, expected, now, error))

    async def cancel(self, job_id: str, now: float) -> tuple[Job | None, bool]:
        return await self._run(self._layout.cancel(job_id, now))

    async def requeue(self, job_id: str, worker_id: str, now: float) -> Job | None:
        return await self._run(self._layout.requeue(job_id, worker_id, now))

    async def mark_dispatched(
        self, job_ids: Sequence[str], now: float, stale_before: float
    ) -> list[str]:
        if not job_ids:
            return []
        return await self._run(self._layout.mark_dispatched(job_ids, now, stale_before))

    async def retry(self, job_id: str, now: float) -> Job | None:
        return await self._run(self._layout.retry(job_id, now))

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 100,
        created_before: float | None = None,
    ) -> list[Job]:
        return await self._run(self._layout.list_jobs(status, limit, created_before))

    async def count_by_status(self) -> dict[JobStatus, int]:
        return await self._run(self._layout.count_by_status())

    async def purge_expired(self, now: float) -> int:
        total, more = 0, True
        while more:
            purged, more = await self._run(self._layout.purge_batch(now))
            total += purged
        return total

    async def delete(self, job_id: str) -> bool:
        return await self._run(self._layout.delete(job_id))

    async def worker_heartbeat(self, worker_id: str, now: float, info: dict[str, Any]) -> None:
        await self._run(self._layout.worker_heartbeat(worker_id, now, info))

    async def list_workers(self, now: float) -> list[dict[str, Any]]:
        return await self._run(self._layout.list_workers(now))


# -- helpers ------------------------------------------------------------------------------


def _refuse_decoding(client: redis.Redis | aioredis.Redis) -> None:
    if client.get_connection_kwargs().get("decode_responses"):
        raise ConfigurationError(
            "RedisStore stores bodies as bytes: give it a client without decode_responses=True"
        )


_ASYNC_CLASSES = {
    redis.connection.Connection: aioredis.Connection,
    redis.connection.SSLConnection: aioredis.SSLConnection,
    redis.connection.UnixDomainSocketConnection: aioredis.UnixDomainSocketConnection,
}

# Connection settings that mean the same to both clients (objects such as a
# sync Retry policy do not carry over; pass async_client= to control those).
_PORTABLE = {
    "host",
    "port",
    "path",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "client_name",
    "health_check_interval",
    "credential_provider",
    "protocol",
}


def _async_twin_factory(client: redis.Redis) -> Callable[[], aioredis.Redis]:
    """Async clients reaching the same server as ``client`` does."""
    pool = client.connection_pool
    cls = _ASYNC_CLASSES.get(pool.connection_class)
    if cls is None:
        raise ConfigurationError(
            f"RedisStore cannot derive an asyncio client from {pool.connection_class!r}: "
            "pass async_client=redis.asyncio.Redis(...)"
        )
    kwargs = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if (k in _PORTABLE or k.startswith("ssl_")) and v is not None
    }

    max_connections = pool.max_connections
    if not max_connections or max_connections >= 2**31 - 1:
        max_connections = DEFAULT_ASYNC_MAX_CONNECTIONS

    def factory() -> aioredis.Redis:
        apool = aioredis.BlockingConnectionPool(
            connection_class=cls,
            max_connections=max_connections,
            timeout=_pool_timeout(kwargs),
            **kwargs,
        )
        return aioredis.Redis.from_pool(apool)

    return factory


def _pool_timeout(kwargs: dict[str, Any]) -> float:
    """How long a store call waits for a free pooled connection."""
    timeout = kwargs.get("socket_timeout")
    return float(timeout) if timeout else DEFAULT_SOCKET_TIMEOUT


def _blocking_pool_from_url(url: str, kwargs: dict[str, Any]) -> aioredis.BlockingConnectionPool:
    """An asyncio pool on ``url`` that waits for a free connection when full."""
    return aioredis.BlockingConnectionPool.from_url(url, timeout=_pool_timeout(kwargs), **kwargs)
