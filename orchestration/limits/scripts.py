"""The Redis limiter's Lua: each of a call's steps (acquire, renew, release) is one script,
so it is one round trip and atomic across every worker process and host.

The rules (``local_limiter.py`` keeps the same ones in a process):

- *In flight*: a sorted set per endpoint (``if:``) and per agent with a
  ``max_concurrency`` (``gc:``), a member per call scored by its lease's end. Expired
  members (a dead worker's calls) are dropped before every count.
- *Rates*: a theoretical arrival time per limited key (``rt:``; GCRA without burst):
  ``rq`` for requests, ``tk`` for tokens. A call may go once both are past; going moves
  ``rq`` on by 60000/rpm ms and ``tk`` by its reserved tokens × 60000/tpm ms. A call that
  must wait for them *reserves* the slot they give (``resv:``, per attempt): it comes
  back at that time and goes, so waiters never herd and the rate is kept exactly.
  Settling moves ``tk`` by the difference between the tokens used and those reserved.
- *Waiting for a slot* (in flight, or a fairness key's executions): a queue per key, by
  first arrival. A call's member carries when it began, so a waiter comes back when the
  call whose slot its place in the queue gets should end (its start plus the endpoint's
  recent latency, and a latency per round beyond those in flight); a fairness waiter
  looks again every ``poll`` ms per round ahead of it.
- *Pauses*: a key per endpoint that expires with the endpoint's Retry-After.
- *Latency*: an EWMA per endpoint of how long its calls held their place (admission
  to release).
- *Keyed fairness*: a sorted set per key of the executions holding its slots, scored by
  their leases' end.
- *Waking*: a waiter for a slot leaves what would bring it back at once (``wk:``, by
  attempt); the call that frees a slot takes the first waiter's, in queue order, and
  its worker sends it, so the slot is not idle until the waiter's own estimate (a
  release waits for its reply only while the agent has waiters, as far as the
  worker's last answers for it said: see ``RedisLimiter``). The
  waiter's timer still runs: whichever delivery comes first is admitted, and marks its
  attempt (``adm:``, under the call's lease); a later delivery of the same attempt is
  told ``duplicate`` and looks again when that mark lapses, by when the attempt's
  outcome is recorded. A call never made (released without a duration) clears it.

Clocks are Redis's (``TIME``): workers on several hosts share one. Keys are built inside
the scripts, so this needs one Redis, not a Cluster.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = """
local d = cjson.decode(ARGV[1])
local clock = redis.call('TIME')
-- milliseconds, to the microsecond: rates of many calls a millisecond stay exact
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local P = d.p

-- a key's expiry is only ever pushed out
local function extend(key, ms)
  ms = math.floor(ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local function live(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end
"""

ACQUIRE: Final = (
    _COMMON
    + """
local lease = d.lease
local cands = d.c

-- another delivery of this attempt was admitted (a woken waiter and its own timer)
local held = redis.call('PTTL', P .. 'adm:' .. d.h)
if held > 0 then return {0, 'duplicate', held, ''} end

local function forget_stale(queue, deadlines)
  local stale = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(stale) do
    redis.call('ZREM', queue, member)
    redis.call('ZREM', deadlines, member)
  end
end

-- a place in a queue, by first arrival; `wait_of(rank)` says how long it waits
local function queue_wait(queue, member, wait_of)
  local deadlines = queue .. ':d'
  forget_stale(queue, deadlines)
  redis.call('ZADD', queue, 'NX', now, member)
  local wait = math.max(10, math.floor(wait_of(redis.call('ZRANK', queue, member))))
  -- a waiter that does not come back within its wait and a lease is forgotten
  redis.call('ZADD', deadlines, now + wait + lease, member)
  extend(queue, wait + lease + 60000)
  extend(deadlines, wait + lease + 60000)
  return wait
end

-- keyed fairness: the execution holds a slot of its key, or waits for one
local fair = d.f
local fair_key = nil
if fair then
  fair_key = P .. 'fair:' .. fair.k
  redis.call('ZREMRANGEBYSCORE', fair_key, '-inf', now)
  if not redis.call('ZSCORE', fair_key, fair.e) then
    if redis.call('ZCARD', fair_key) >= fair.m then
      local function rounds(rank) return fair.poll * (math.floor(rank / fair.m) + 1) end
      return {0, 'fair', queue_wait(fair_key .. ':q', fair.e, rounds), fair.k}
    end
    redis.call('ZREM', fair_key .. ':q', fair.e)
    redis.call('ZREM', fair_key .. ':q:d', fair.e)
  end
  redis.call('ZADD', fair_key, now + fair.l, fair.e)
  extend(fair_key, fair.l)
  redis.call('SET', P .. 'fairof:' .. fair.e, fair.k, 'PX', fair.l)
end

-- a call that waits keeps its execution's slot through the wait
local function hold(wait)
  wait = math.max(1, math.floor(wait))
  if fair_key then
    redis.call('ZADD', fair_key, now + wait + fair.l, fair.e)
    extend(fair_key, wait + fair.l)
    extend(P .. 'fairof:' .. fair.e, wait + fair.l)
  end
  return wait
end

local function rates(id, per_request, per_token)
  local slot = now
  if per_request > 0 or per_token > 0 then
    local tat = redis.call('HMGET', P .. 'rt:' .. id, 'rq', 'tk')
    if per_request > 0 and tat[1] then slot = math.max(slot, tonumber(tat[1])) end
    if per_token > 0 and tat[2] then slot = math.max(slot, tonumber(tat[2])) end
  end
  return slot
end

local function advance(id, per_request, per_token, at)
  if per_request <= 0 and per_token <= 0 then return end
  local key = P .. 'rt:' .. id
  local tat = redis.call('HMGET', key, 'rq', 'tk')
  local horizon = at
  if per_request > 0 then
    local rq = math.max(tonumber(tat[1]) or 0, at) + per_request
    redis.call('HSET', key, 'rq', rq)
    horizon = math.max(horizon, rq)
  end
  if per_token > 0 then
    local tk = math.max(tonumber(tat[2]) or 0, at) + d.n * per_token
    redis.call('HSET', key, 'tk', tk)
    horizon = math.max(horizon, tk)
  end
  extend(key, horizon - now + 60000)
end

local function ewma(id)
  return tonumber(redis.call('HGET', P .. 'lat:' .. id, 'ewma'))
end

-- what a waiter reckons a call takes: the lower of the EWMA and the last call, so a
-- few slow calls (a cold start) do not leave slots idle while waiters sleep on
local function expected(id)
  local recent = redis.call('HMGET', P .. 'lat:' .. id, 'ewma', 'last')
  local e, last = tonumber(recent[1]), tonumber(recent[2])
  if e and last then return math.min(e, last) end
  return e or last
end

-- each endpoint: paused, or its calls in flight, its rate slot and whether it has room
local info = {}
local paused_for = nil
local paused_id = ''
for j, c in ipairs(cands) do
  local left = redis.call('PTTL', P .. 'pause:' .. c.id)
  if left > 0 then
    if paused_for == nil or left < paused_for then paused_for, paused_id = left, c.id end
    info[j] = false
  else
    local n = live(P .. 'if:' .. c.id)
    info[j] = {n = n, slot = rates(c.id, c.r, c.t), room = (c.m == 0 or n < c.m)}
  end
end
local group_room = true
if d.gm > 0 then group_room = live(P .. 'gc:' .. d.g) < d.gm end
local group_slot = rates(d.g, d.gr, d.gt)

local function admit(j, reserved)
  local c = cands[j]
  local key = P .. 'if:' .. c.id
  -- the member carries when the call began: waiters reckon when it should end
  local member = d.tok .. '@' .. math.floor(now)
  redis.call('ZADD', key, now + lease, member)
  extend(key, lease + 60000)
  if d.gm > 0 then
    redis.call('ZADD', P .. 'gc:' .. d.g, now + lease, member)
    extend(P .. 'gc:' .. d.g, lease + 60000)
  end
  if not reserved then
    advance(c.id, c.r, c.t, now)
    advance(d.g, d.gr, d.gt, now)
  end
  redis.call('DEL', P .. 'resv:' .. d.h)
  redis.call('DEL', P .. 'avoid:' .. d.s)
  redis.call('ZREM', P .. 'q:' .. d.g, d.h)
  redis.call('ZREM', P .. 'q:' .. d.g .. ':d', d.h)
  redis.call('HDEL', P .. 'wk:' .. d.g, d.h)
  redis.call('SET', P .. 'adm:' .. d.h, 1, 'PX', lease)
  -- and whether others wait for the agent's slots (its release then wakes one)
  return {1, c.i, 0, c.id, member, redis.call('ZCARD', P .. 'q:' .. d.g)}
end

-- when the calls holding a full key should end: each began at the time its member
-- carries and takes about its endpoint's recent latency; one running past that is
-- given as long again as it is overdue (looked at again soon, then less and less often)
local function ends_of(key, took, ends)
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local began = tonumber(string.match(member, '@(%d+)$'))
    if began then
      local due = began + took
      if due < now then due = now + math.max(took / 20, 10, now - due) end
      table.insert(ends, due)
    end
  end
end

-- no room: queue, and come back when the call ahead of this place should end
local function wait_for_room()
  local ends, unit, what = {}, nil, d.g
  for j, c in ipairs(cands) do
    if info[j] then
      local took = expected(c.id) or d.dl
      if unit == nil or took < unit then unit = took end
      if group_room then ends_of(P .. 'if:' .. c.id, took, ends) end
      if #cands == 1 and group_room then what = c.id end
    end
  end
  unit = unit or d.dl
  if not group_room then ends_of(P .. 'gc:' .. d.g, unit, ends) end
  table.sort(ends)
  local function when(rank)
    if #ends == 0 then return unit end
    -- at most two rounds ahead: one far back looks again with a fresher estimate
    -- rather than leave a slot idle on a stale one
    return ends[(rank % #ends) + 1] + unit * math.min(2, math.floor(rank / #ends)) - now
  end
  local wait = queue_wait(P .. 'q:' .. d.g, d.h, when)
  if d.wk then
    redis.call('HSET', P .. 'wk:' .. d.g, d.h, d.wk)
    extend(P .. 'wk:' .. d.g, wait + lease + 60000)
  end
  return {0, 'concurrency', hold(wait), what}
end

if not group_room then return wait_for_room() end

-- an attempt that reserved a rate slot goes at its time, to its endpoint
local reservation = redis.call('HMGET', P .. 'resv:' .. d.h, 'e', 't')
if reservation[1] then
  local chosen = nil
  for j, c in ipairs(cands) do
    if c.i == tonumber(reservation[1]) and info[j] then chosen = j end
  end
  if chosen then
    local at = tonumber(reservation[2])
    if now < at then return {0, 'rate', hold(at - now), cands[chosen].id} end
    if info[chosen].room then return admit(chosen, true) end
    return wait_for_room()
  end
  -- its endpoint is paused or no longer admitted: the slot is given up
  redis.call('DEL', P .. 'resv:' .. d.h)
end

local open = {}
for j, _ in ipairs(cands) do
  if info[j] then table.insert(open, j) end
end
if #open == 0 then
  if paused_for == nil then return {0, 'paused', hold(1000), ''} end
  return {0, 'paused', hold(paused_for), paused_id}
end
-- the step's previous attempt failed on this endpoint: another, if there is one
local avoid = tonumber(redis.call('GET', P .. 'avoid:' .. d.s))
if avoid and #open > 1 then
  local others = {}
  for _, j in ipairs(open) do
    if cands[j].i ~= avoid then table.insert(others, j) end
  end
  if #others > 0 then open = others end
end

local ready = {}
for _, j in ipairs(open) do
  if info[j].room and math.max(info[j].slot, group_slot) <= now then table.insert(ready, j) end
end

if #ready > 0 then
  local chosen
  if d.route == 'weighted' then
    -- smooth weighted round robin over the endpoints ready now
    local key = P .. 'wrr:' .. d.g
    local current, total, best = {}, 0, nil
    for _, j in ipairs(ready) do
      local c = cands[j]
      current[j] = (tonumber(redis.call('HGET', key, c.i)) or 0) + c.w
      total = total + c.w
      if best == nil or current[j] > current[best] then best = j end
    end
    for _, j in ipairs(ready) do
      local value = current[j]
      if j == best then value = value - total end
      redis.call('HSET', key, cands[j].i, value)
    end
    redis.call('EXPIRE', key, 86400)
    chosen = best
  else
    local scores, low = {}, nil
    for _, j in ipairs(ready) do
      local c = cands[j]
      if d.route == 'latency' then
        scores[j] = (ewma(c.id) or 0) * (info[j].n + 1)
      else
        scores[j] = info[j].n / c.w
      end
      if low == nil or scores[j] < low then low = scores[j] end
    end
    local tied = {}
    for _, j in ipairs(ready) do
      if scores[j] <= low + 1e-9 then table.insert(tied, j) end
    end
    chosen = tied[1]
    if #tied > 1 then
      -- ties take turns, cluster-wide
      local turn = redis.call('HINCRBY', P .. 'rr:' .. d.g, 'turn', 1)
      redis.call('EXPIRE', P .. 'rr:' .. d.g, 86400)
      chosen = tied[(turn % #tied) + 1]
    end
  end
  return admit(chosen, false)
end

-- room, but not yet within the rates: reserve the earliest slot
local best, best_slot = nil, nil
for _, j in ipairs(open) do
  if info[j].room then
    local slot = math.max(info[j].slot, group_slot)
    if best_slot == nil or slot < best_slot then best, best_slot = j, slot end
  end
end
if best then
  local c = cands[best]
  advance(c.id, c.r, c.t, best_slot)
  advance(d.g, d.gr, d.gt, best_slot)
  local key = P .. 'resv:' .. d.h
  redis.call('HSET', key, 'e', c.i, 't', best_slot)
  redis.call('PEXPIRE', key, math.floor(best_slot - now + lease + 60000))
  local what = c.id
  if (c.r == 0 and c.t == 0) then what = d.g end
  return {0, 'rate', hold(best_slot - now), what}
end
return wait_for_room()
"""
)

RELEASE: Final = (
    _COMMON
    + """
redis.call('ZREM', P .. 'if:' .. d.id, d.tok)
redis.call('ZREM', P .. 'gc:' .. d.g, d.tok)
-- a call never made (its breaker trial went elsewhere, Troupe's own write failed):
-- its attempt may be admitted again at once
if d.lat < 0 then redis.call('DEL', P .. 'adm:' .. d.h) end

local function settle(id, per_token)
  if per_token <= 0 or d.dt == 0 then return end
  local key = P .. 'rt:' .. id
  local tk = tonumber(redis.call('HGET', key, 'tk')) or now
  -- a debt counts from now at the earliest; a refund from where the rate stands
  if d.dt > 0 then tk = math.max(tk, now) end
  local moved = tk + d.dt * per_token
  redis.call('HSET', key, 'tk', moved)
  extend(key, moved - now + 60000)
end
settle(d.id, d.ct)
settle(d.g, d.gt)

if d.lat >= 0 then
  -- how long the call held its place, by this clock (what waiters reckon with);
  -- the caller's own measure if the member does not say when it began
  local began = tonumber(string.match(d.tok, '@(%d+)$'))
  if began then d.lat = now - began end
  local key = P .. 'lat:' .. d.id
  local e = tonumber(redis.call('HGET', key, 'ewma'))
  if e then e = e + 0.3 * (d.lat - e) else e = d.lat end
  redis.call('HSET', key, 'ewma', e, 'last', d.lat)
  redis.call('EXPIRE', key, 86400)
end
if d.pause > 0 and redis.call('PTTL', P .. 'pause:' .. d.id) < d.pause then
  redis.call('SET', P .. 'pause:' .. d.id, 1, 'PX', math.floor(d.pause))
end
if d.av >= 0 then
  redis.call('SET', P .. 'avoid:' .. d.s, d.av, 'PX', math.floor(d.avttl))
end
-- a slot is free: the first waiter for it not yet woken comes now
if d.wake == 1 then
  local queue = P .. 'q:' .. d.g
  local wakes = P .. 'wk:' .. d.g
  for _, member in ipairs(redis.call('ZRANGE', queue, 0, 49)) do
    local deadline = tonumber(redis.call('ZSCORE', queue .. ':d', member))
    if deadline and deadline > now then
      local wake = redis.call('HGET', wakes, member)
      if wake then
        redis.call('HDEL', wakes, member)
        return wake
      end
    end
  end
end
return 1
"""
)

RENEW: Final = (
    _COMMON
    + """
local key = P .. 'if:' .. d.id
if redis.call('ZADD', key, 'XX', 'CH', now + d.lease, d.tok) > 0 then
  extend(key, d.lease + 60000)
end
if redis.call('ZADD', P .. 'gc:' .. d.g, 'XX', 'CH', now + d.lease, d.tok) > 0 then
  extend(P .. 'gc:' .. d.g, d.lease + 60000)
end
redis.call('PEXPIRE', P .. 'adm:' .. d.h, d.lease)
if d.f then
  local fair_key = P .. 'fair:' .. d.f
  if redis.call('ZADD', fair_key, 'XX', 'CH', now + d.fl, d.e) > 0 then
    extend(fair_key, d.fl)
    extend(P .. 'fairof:' .. d.e, d.fl)
  end
end
return 1
"""
)

END_EXECUTION: Final = (
    _COMMON
    + """
local key = redis.call('GET', P .. 'fairof:' .. d.e)
if key then
  redis.call('ZREM', P .. 'fair:' .. key, d.e)
  redis.call('DEL', P .. 'fairof:' .. d.e)
end
return 1
"""
)

STATS: Final = (
    _COMMON
    + """
local out = {}
for _, id in ipairs(d.ids) do
  table.insert(out, redis.call('ZCOUNT', P .. 'if:' .. id, now, '+inf'))
  table.insert(out, redis.call('HGET', P .. 'lat:' .. id, 'ewma') or '')
  table.insert(out, math.max(0, redis.call('PTTL', P .. 'pause:' .. id)))
end
return out
"""
)
