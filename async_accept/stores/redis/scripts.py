"""The Lua scripts behind every write of the Redis store (one script per state change)."""

from __future__ import annotations

from .codec import _NAMES_M, STATUSES
from .connection import PRELUDE
from .outbox import NOTIFY_LUA

# Shared by every script of the store, after the common PRELUDE (ARGV[1] is
# always the namespace).
_PRELUDE = (
    PRELUDE
    + """
local F = {"""
    + ", ".join(f"'{n}'" for n in _NAMES_M)
    + """}
local STATUSES = {"""
    + ", ".join(f"'{s}'" for s in STATUSES)
    + """}
local function meta(k) return redis.call('HMGET', k, unpack(F)) end
local function live(k, now)
  local e = redis.call('HGET', k, 'expires_at')
  return e and tonumber(e) > now
end
local function skey(s) return P .. ':status:' .. s end
-- Tells every process watching (their change feeds) that this job changed.
local function changed(k) redis.call('PUBLISH', P .. ':changes', string.sub(k, #P + 6)) end
local function jkey(id) return P .. ':job:' .. id end
local function idof(m) return string.sub(m, 18) end
local function setstatus(k, to)
  local r = redis.call('HMGET', k, 'status', '_m', 'created_at')
  redis.call('ZREM', skey(r[1]), r[2])
  redis.call('ZADD', skey(to), r[3], r[2])
  redis.call('HSET', k, 'status', to)
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
  local r = redis.call('HMGET', k, 'status', 'idempotency_key', 'id', 'owner')
  if r[2] then
    local ik = P .. ':idem:' .. r[2]
    if redis.call('GET', ik) == r[3] then redis.call('DEL', ik) end
  end
  if r[4] then
    for h in string.gmatch(r[4], '%S+') do redis.call('ZREM', P .. ':owner:' .. h, r[3]) end
  end
  unindex(m, r[1])
  redis.call('DEL', k)
end
"""
)

#: The body of the ``list`` scripts; RANGE is the sorted-set read (oldest or newest first).
_LIST = """
local limit = tonumber(ARGV[2])
local out, stale = {}, {}
for i = 4, #ARGV do
  local zk = skey(ARGV[i])
  local found, offset = 0, 0
  while found < limit do
    local want = limit - found
    local ms = RANGE
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
"""

_SCRIPTS: dict[str, str] = {
    # KEYS: job, [idempotency key]. ARGV: ns, id, created_at, expires_at, status,
    # fields (a JSON array: field, value, ...), request meta, request body, owner.
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
-- One index per hash the owner holds (the credential's, the owner cookie's).
for h in string.gmatch(ARGV[9], '%S+') do
  local ok = P .. ':owner:' .. h
  redis.call('ZADD', ok, ARGV[3], ARGV[2])
  -- It lives as long as its longest-lived job: never shortened (compared here
  -- rather than with PEXPIREAT's GT flag, which needs Redis 7).
  local ttl = redis.call('PTTL', ok)
  if ttl < 0 or srv + ttl < tonumber(at) then redis.call('PEXPIREAT', ok, at) end
end
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
changed(k)
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
changed(k)
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
-- A job that can't run again: its captured request (credentials) goes.
if ARGV[4] == 'completed' or ARGV[4] == 'canceled' then
  redis.call('HDEL', k, 'req_meta', 'req_body')
end
changed(k)
return meta(k)
""",
    # KEYS: job. ARGV: ns, now, error json, lease ('' for none), expected status, ...
    # With a lease, only while heartbeat_at still is it (the deadman switch's CAS).
    "fail": """
local k = KEYS[1]
if not live(k, tonumber(ARGV[2])) then return false end
local r = redis.call('HMGET', k, 'status', 'heartbeat_at')
if ARGV[4] ~= '' and r[2] ~= ARGV[4] then return false end
local ok = false
for i = 5, #ARGV do if ARGV[i] == r[1] then ok = true end end
if not ok then return false end
setstatus(k, 'failed')
redis.call('HSET', k, 'error', ARGV[3], 'finished_at', ARGV[2], 'updated_at', ARGV[2])
changed(k)
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
  redis.call('HDEL', k, 'req_meta', 'req_body')
  changed(k)
  return {1, meta(k)}
end
if r[1] == 'processing' and r[2] ~= '1' then
  redis.call('HSET', k, 'cancel_requested', '1', 'updated_at', ARGV[2])
  changed(k)
  return {1, meta(k)}
end
return {0, meta(k)}
""",
    # KEYS: job. ARGV: ns, worker, now, lease ('' for none).
    "requeue": """
local k = KEYS[1]
if not owned(k, ARGV[2], tonumber(ARGV[3])) then return false end
if ARGV[4] ~= '' and redis.call('HGET', k, 'heartbeat_at') ~= ARGV[4] then return false end
-- A job whose cancel was requested ends canceled: nobody would claim it.
if redis.call('HGET', k, 'cancel_requested') == '1' then
  setstatus(k, 'canceled')
  redis.call('HSET', k, 'finished_at', ARGV[3])
else
  setstatus(k, 'queued')
end
-- The claim used its dispatch up: the next hand-over of the job goes out at once.
redis.call('HDEL', k, 'worker_id', 'heartbeat_at', 'dispatched_at')
redis.call('HSET', k, 'updated_at', ARGV[3])
changed(k)
return meta(k)
""",
    # ARGV: ns, limit, max score, status, ... Returns the first `limit` live jobs
    # of each status (oldest first); index entries whose job Redis already
    # expired are dropped on the way.
    "list": _LIST.replace(
        "RANGE", "redis.call('ZRANGEBYSCORE', zk, '-inf', ARGV[3], 'LIMIT', offset, want)"
    ),
    # The same, newest first (the dashboard's recent jobs).
    "list_newest": _LIST.replace(
        "RANGE", "redis.call('ZREVRANGEBYSCORE', zk, ARGV[3], '-inf', 'LIMIT', offset, want)"
    ),
    # ARGV: ns, owner, now, limit, top score ('+inf', 'x' or '(x'), cursor id ('-'
    # none, else '=id': skip ids >= it at score x), bottom score ('-inf' or 'x'),
    # status ('-' any, else '=status'), route (same). Live jobs of the owner,
    # newest first; index entries of jobs Redis already expired are dropped.
    "owned": """
local zk = P .. ':owner:' .. ARGV[2]
local now, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local top, topn = ARGV[5], tonumber(ARGV[5])
local cid = ARGV[6] ~= '-' and string.sub(ARGV[6], 2) or nil
local want = ARGV[8] ~= '-' and string.sub(ARGV[8], 2) or nil
local route = ARGV[9] ~= '-' and string.sub(ARGV[9], 2) or nil
-- Byte order, as Redis orders equal scores and Python compares ids (not strcoll).
local function lt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local out, stale, offset = {}, {}, 0
while #out < limit do
  local batch = redis.call('ZREVRANGEBYSCORE', zk, top, ARGV[7], 'WITHSCORES', 'LIMIT', offset, 200)
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local id = batch[i]
    if not (cid and tonumber(batch[i + 1]) == topn and not lt(id, cid)) then
      local k = jkey(id)
      local r = redis.call('HMGET', k, 'expires_at', 'status', 'route')
      if not r[1] then
        stale[#stale + 1] = id
      elseif tonumber(r[1]) > now and (not want or r[2] == want)
          and (not route or r[3] == route) then
        out[#out + 1] = meta(k)
        if #out >= limit then break end
      end
    end
  end
  offset = offset + #batch / 2
end
for _, id in ipairs(stale) do redis.call('ZREM', zk, id) end
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
changed(k)
return meta(k)
""",
}

# claim, returning the job and its captured request: a worker's first round trip.
_SCRIPTS["claim_request"] = _SCRIPTS["claim"].replace(
    "return meta(k)", "return {meta(k), redis.call('HMGET', k, 'req_meta', 'req_body')}"
)

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

# The scripts that may end a job, in a second version that also writes the ended
# job's webhook notices into the outbox beside the store (RedisStore.default_outbox):
# name -> (the line the notices go before, the call; ARGV[k] is the script's now).
_NOTIFY_AT = {
    "finish": ("changed(k)\nreturn meta(k)", "notify(k, ARGV[3])\n"),
    "fail": ("changed(k)\nreturn meta(k)", "notify(k, ARGV[2])\n"),
    "cancel": ("  redis.call('HDEL', k, 'req_meta', 'req_body')\n", "  notify(k, ARGV[2])\n"),
    "requeue": ("else\n  setstatus(k, 'queued')", "  notify(k, ARGV[3])\n"),
}
for _name, (_marker, _call) in _NOTIFY_AT.items():
    _body = _SCRIPTS[_name]
    assert _body.count(_marker) == 1, _name
    _SCRIPTS[_name + "_notify"] = NOTIFY_LUA + _body.replace(_marker, _call + _marker)

SOURCES = {name: _PRELUDE + body for name, body in _SCRIPTS.items()}
