"""Site budgets in Redis (`state.url: redis://…`), shared by every replica that points at it.

The algorithm is crawlguard.state.sites's, step for step as `MemorySites` runs it; each
`SiteState` call is ONE Lua script (``EVALSHA`` through redis-py's script cache), so a grant is
atomic across replicas, and the scripts read the time with ``redis.call('TIME')`` (µs integers,
like crawlguard.state.redis), so replicas whose clocks differ still agree. ``server_clock=False``
takes the caller's ``now`` instead: only for the contract tests, which run both backends on one
injected clock.

Keys (``<ns>`` is ``crawlguard:`` or ``crawlguard:<prefix>:``, as for pacing):

* ``<ns>site:<site>``, a hash: ``next``, ``v``, ``rate``, ``slowed_at``, ``pause_until``,
  ``cap_rps``, ``cap_until``, ``base``, ``max_concurrency``, ``seq`` (lease ids), ``ap`` (the
  activity pruned up to), and per tenant ``f:<t>`` (finish tag), ``l:<t>`` (last grant),
  ``g:<t>`` (gap), ``w:<t>`` (weight) and its claim ``cd:<t>`` (due), ``cs:<t>`` (since),
  ``ce:<t>`` (expires); times in µs, tags as doubles (``%.17g``: exact). PEXPIRE: SITE_TTL
  after the last grant / slow_down / cap, or the end of the site's pause if later (as
  `MemorySites` sweeps).
* ``<ns>site-leases:<site>``, a zset of lease ids (the per-site ``seq``) scored by expiry;
  PEXPIRE LEASE_TTL after the last lease.
* ``<ns>site-activity:<site>``, a hash of grants per ACTIVITY_BUCKET and tenant
  (``<bucket>:<t>``), for operators: kept apart so a grant does not read it; the buckets the
  window has left are dropped once per bucket; PEXPIRE the window after the last grant.
* ``<ns>sites-busy:<bucket>``, a zset per ACTIVITY_BUCKET: grants per site (ZINCRBY), expiring
  after the window; ``busy`` unions the window's buckets (no SCAN).
* ``<ns>sites-backoff``, a zset of the sites slowed or paused (scored by until when), so ``busy``
  lists them with no grants, as `MemorySites` does.

Differences from `MemorySites`, both for operators only: grants "in the last ACTIVITY_WINDOW
seconds" are counted in whole buckets of ACTIVITY_BUCKET seconds (the window plus up to one
bucket), and nothing bounds the number of sites but their TTL. The ``sites-busy`` bucket's key
is named inside the script from the server's clock (not passed in KEYS): fine on one Redis, not
on Redis Cluster (nor are pacing's multi-key reservations). Nothing is retried by redis-py (a
retried grant could take two slots): every failure is a `StateBackendError`, and
`FailoverSites` applies ``state.on_error``.
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from crawlguard.state import StateBackendError
from crawlguard.state.redis import NAMESPACE, US, RedisState, _us, connect, parse_redis_url
from crawlguard.state.sites import (
    ACTIVITY_WINDOW,
    BACKOFF_INTERVAL,
    CLAIM_GRACE,
    CLAIM_GRACE_SLOTS,
    GAP_TOLERANCE,
    LEASE_TTL,
    RATE_DECREASE,
    RATE_FLOOR,
    RATE_INCREASE,
    SITE_TTL,
    SiteAsk,
    SiteGrant,
    SiteView,
    TenantShare,
    effective_interval,
)
from crawlguard.state.sites_memory import CONCURRENCY_POLL

ACTIVITY_BUCKET = 10.0  # s: grants for operators are counted per bucket of this length
MAX_PAUSE = 86400.0  # s: a pause longer than this is cut (as MemorySites does)

# -- Lua -------------------------------------------------------------------------------------

_CONSTANTS = {
    "SITE_TTL": _us(SITE_TTL),
    "LEASE_TTL": _us(LEASE_TTL),
    "WINDOW": _us(ACTIVITY_WINDOW),
    "BUCKET": _us(ACTIVITY_BUCKET),
    "BACKOFF": _us(BACKOFF_INTERVAL),
    "GRACE": _us(CLAIM_GRACE),
    "GRACE_SLOTS": repr(CLAIM_GRACE_SLOTS),
    "POLL": _us(CONCURRENCY_POLL),
    "MAX_PAUSE": _us(MAX_PAUSE),
    "GAP_TOL": _us(GAP_TOLERANCE),
    "FLOOR": repr(RATE_FLOOR),
    "DEC": repr(RATE_DECREASE),
    "INC": repr(RATE_INCREASE),
}

# ARGV[1]: the caller's now in µs, or '' for the server's TIME. Numbers are Lua doubles (µs are
# exact below 2**53) written with %.17g, which round-trips any double.
_PRELUDE = (
    "".join(f"local {name} = {value}\n" for name, value in _CONSTANTS.items())
    + """
local NEG = -math.huge
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local function fmt(x) return string.format('%.17g', x) end
local function num(x, default) if x then return tonumber(x) end return default end
local function expire_in(key, us)
  redis.call('PEXPIRE', key, fmt(math.max(1, math.ceil(us / 1000))))
end
-- bytewise, as Python compares ids (Lua's < on strings follows the server's locale)
local function str_lt(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function interval(base, rate, cap)
  local iv = base
  if rate < 1 then iv = math.max(base, BACKOFF) / math.max(rate, FLOOR) end
  if cap and cap > 0 then iv = math.max(iv, 1000000 / cap) end
  return iv
end
local function cap_now(rps, until_)
  if rps and num(until_, NEG) > now then return tonumber(rps) end
  return nil
end
-- the site hash lives SITE_TTL after a touch, or to the end of its pause
local function touch(key, pause_until)
  expire_in(key, math.max(SITE_TTL, pause_until - now))
end
-- the sites operators see with no grants: slowed (while the record lives) or paused
local function mark(bkey, site, rate, pause_until)
  local until_ = pause_until
  if rate < 1 then until_ = math.max(until_, now + SITE_TTL) end
  if until_ > now then
    redis.call('ZADD', bkey, fmt(until_), site)
    expire_in(bkey, SITE_TTL + MAX_PAUSE)
  else
    redis.call('ZREM', bkey, site)
  end
end
"""
)

# KEYS: site hash, leases zset, back-off zset, activity hash. ARGV: now, tenant, weight,
# interval µs, gap µs, max_concurrency or '', whole_seconds 1/0, force 1/0, site, busy prefix
# -> {granted 1/0, wait µs, cause, interval µs, rate, lease or nil}
GRANT = (
    _PRELUDE
    + """
local key, lkey = KEYS[1], KEYS[2]
local tenant, weight = ARGV[2], tonumber(ARGV[3])
local base, gap, mc = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local whole, force, site = ARGV[7] == '1', ARGV[8] == '1', ARGV[9]

local raw = redis.call('HGETALL', key)
local h, T = {}, {}
for i = 1, #raw, 2 do
  local k, val = raw[i], raw[i + 1]
  local p, rest = string.match(k, '^(%a+):(.*)$')
  if not p then h[k] = val
  else
    local t = T[rest]
    if not t then t = {}; T[rest] = t end
    t[p] = tonumber(val)
  end
end
-- the pace and cap last asked (for operators), written with the tenant's fields below
local site_fields = {'base', fmt(base)}
if mc then site_fields = {'base', fmt(base), 'max_concurrency', fmt(mc)}
elseif h.max_concurrency then redis.call('HDEL', key, 'max_concurrency') end

-- prune: expired leases and claims, tenants whose tags no longer matter
redis.call('ZREMRANGEBYSCORE', lkey, '-inf', fmt(now))
local v = num(h.v, 0)
for name, r in pairs(T) do
  if r.cd and r.ce <= now then
    r.cd = nil
    redis.call('HDEL', key, 'cd:' .. name, 'cs:' .. name, 'ce:' .. name)
  end
  if not r.cd and num(r.f, 0) <= v and num(r.l, NEG) + num(r.g, 0) <= now then
    redis.call('HDEL', key, 'f:' .. name, 'l:' .. name, 'g:' .. name, 'w:' .. name)
    T[name] = nil
  end
end

local rate = num(h.rate, 1)
local pause_until, nxt = num(h.pause_until, NEG), num(h.next, NEG)
local eff = interval(base, rate, cap_now(h.cap_rps, h.cap_until))
local me = T[tenant]
if not me then me = {} end
if not me.f then me.f = v end
local start = math.max(v, me.f)

local function take()
  local nf = start + 1 / weight
  nxt = math.max(nxt, now + eff)
  redis.call('HSET', key, 'v', fmt(start), 'next', fmt(nxt), 'f:' .. tenant, fmt(nf),
    'l:' .. tenant, fmt(now), 'g:' .. tenant, fmt(gap), 'w:' .. tenant, fmt(weight),
    unpack(site_fields))
  if me.cd then redis.call('HDEL', key, 'cd:' .. tenant, 'cs:' .. tenant, 'ce:' .. tenant) end
  -- activity: counters per bucket; the buckets the window has left are dropped once per bucket
  local b = math.floor(now / BUCKET)
  local akey = KEYS[4]
  local oldest = math.floor((now - WINDOW) / BUCKET)
  if num(h.ap, NEG) < oldest then
    for _, k in ipairs(redis.call('HKEYS', akey)) do
      local kb = tonumber(string.match(k, '^(%d+):'))
      if not kb or kb < oldest then redis.call('HDEL', akey, k) end
    end
    redis.call('HSET', key, 'ap', fmt(oldest))
  end
  redis.call('HINCRBY', akey, fmt(b) .. ':' .. tenant, 1)
  local keep = (b + 1) * BUCKET + WINDOW - now + BUCKET
  expire_in(akey, keep)
  local bkey = ARGV[10] .. fmt(b)
  redis.call('ZINCRBY', bkey, 1, site)
  expire_in(bkey, keep)
  local lease = false
  if mc then
    lease = tostring(redis.call('HINCRBY', key, 'seq', 1))
    redis.call('ZADD', lkey, fmt(now + LEASE_TTL), lease)
    expire_in(lkey, LEASE_TTL)
  end
  touch(key, pause_until)
  if rate < 1 then mark(KEYS[3], site, rate, pause_until) end
  return {1, '0', 'granted', fmt(eff), fmt(rate), lease}
end

if force then return take() end

local mine_since = now
if me.cd then mine_since = me.cs end
local ahead = {}
for name, o in pairs(T) do
  if name ~= tenant and o.cd then
    local s = math.max(v, o.f or v)
    if s < start or (s == start and (o.cs < mine_since
        or (o.cs == mine_since and str_lt(name, tenant)))) then
      ahead[#ahead + 1] = {s = s, w = num(o.w, 1), due = o.cd, since = o.cs, name = name}
    end
  end
end
local free_at = math.max(nxt, pause_until, now)
local gap_at = num(me.l, NEG) + gap - GAP_TOL
local full = mc and redis.call('ZCARD', lkey) >= mc
local cause = nil
local min_due, any_due = math.huge, false
for _, o in ipairs(ahead) do
  if o.due <= now then any_due = true end
  if o.due < min_due then min_due = o.due end
end
if gap_at > now then  -- its own pacing, not the site's: no place in the site's queue
  touch(key, pause_until)
  return {0, fmt(gap_at - now), 'gap', fmt(eff), fmt(rate), false}
end
if free_at > now then
  if pause_until >= nxt then cause = 'paused' else cause = 'slot' end
elseif full then cause = 'concurrency'
elseif eff > 0 and (any_due or min_due < now + eff) then cause = 'share'
else return take() end

-- fair_slot: claimants ahead in the order they are due, until one is due after the slot
table.sort(ahead, function(a, b)
  if a.due ~= b.due then return a.due < b.due end
  if a.s ~= b.s then return a.s < b.s end
  if a.since ~= b.since then return a.since < b.since end
  return str_lt(a.name, b.name)
end)
local slot = free_at
for _, o in ipairs(ahead) do
  if o.due >= slot + eff then break end
  slot = slot + math.max(1, math.ceil((start - o.s) * o.w - 1e-9)) * eff
end
local poll = 0
if full then poll = POLL end
local wait = math.max(slot - now, gap_at - now, poll, 1000)
local due = now + wait
if whole then due = now + math.ceil(wait / 1000000 - 1e-9) * 1000000 end
if not me.cd then me.cs = now end
redis.call('HSET', key, 'f:' .. tenant, fmt(me.f), 'g:' .. tenant, fmt(gap),
  'w:' .. tenant, fmt(weight), 'cd:' .. tenant, fmt(due), 'cs:' .. tenant, fmt(me.cs),
  'ce:' .. tenant, fmt(due + math.max(GRACE, GRACE_SLOTS * eff)), unpack(site_fields))
touch(key, pause_until)
return {0, fmt(wait), cause, fmt(eff), fmt(rate), false}
"""
)

# KEYS: leases zset. ARGV: now (unused), lease
RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[2])
return 1
"""

# KEYS: site hash, back-off zset. ARGV: now, pause µs or '', site -> rate
SLOW_DOWN = (
    _PRELUDE
    + """
local key = KEYS[1]
local h = redis.call('HMGET', key, 'rate', 'slowed_at', 'pause_until', 'next', 'base',
  'cap_rps', 'cap_until')
local rate, slowed, pause_until = num(h[1], 1), num(h[2], NEG), num(h[3], NEG)
local base, cap = num(h[5], 0), cap_now(h[6], h[7])
if now >= slowed + math.max(interval(base, rate, cap), 1000000) then
  rate = math.max(FLOOR, rate * DEC)
  redis.call('HSET', key, 'rate', fmt(rate), 'slowed_at', fmt(now))
end
local nxt = math.max(num(h[4], NEG), now + interval(base, rate, cap))
redis.call('HSET', key, 'next', fmt(nxt))
local pause = tonumber(ARGV[2])
if pause and pause > 0 then
  pause_until = math.max(pause_until, now + math.min(pause, MAX_PAUSE))
  redis.call('HSET', key, 'pause_until', fmt(pause_until))
end
touch(key, pause_until)
mark(KEYS[2], ARGV[3], rate, pause_until)
return fmt(rate)
"""
)

# KEYS: site hash, back-off zset. ARGV: now, site -> rate
SPEED_UP = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return '1' end
local h = redis.call('HMGET', KEYS[1], 'rate', 'pause_until')
local rate = math.min(1, num(h[1], 1) + INC)
redis.call('HSET', KEYS[1], 'rate', fmt(rate))
if rate >= 1 then mark(KEYS[2], ARGV[2], rate, num(h[2], NEG)) end
return fmt(rate)
"""
)

# KEYS: site hash, back-off zset. ARGV: now, max_rps or '', pause µs or '', site
CAP = (
    _PRELUDE
    + """
local key = KEYS[1]
local h = redis.call('HMGET', key, 'rate', 'pause_until')
local rate, pause_until = num(h[1], 1), num(h[2], NEG)
redis.call('HSETNX', key, 'v', '0')
local rps = tonumber(ARGV[2])
if rps and rps > 0 then
  redis.call('HSET', key, 'cap_rps', fmt(rps), 'cap_until', fmt(now + WINDOW))
  -- counted from the answer that says so, as MemorySites does
  local nxt = math.max(num(redis.call('HGET', key, 'next'), NEG), now + 1000000 / rps)
  redis.call('HSET', key, 'next', fmt(nxt))
end
local pause = tonumber(ARGV[3])
if pause and pause > 0 then
  pause_until = math.max(pause_until, now + math.min(pause, MAX_PAUSE))
  redis.call('HSET', key, 'pause_until', fmt(pause_until))
  mark(KEYS[2], ARGV[4], rate, pause_until)
end
touch(key, pause_until)
return 1
"""
)

# KEYS: site hash, leases zset, activity hash. ARGV: now
# -> {now µs, the site's fields, leases in flight, the activity counters}
VIEW = (
    _PRELUDE
    + """
local raw = redis.call('HGETALL', KEYS[1])
if #raw == 0 then return false end
return {fmt(now), raw, redis.call('ZCOUNT', KEYS[2], '(' .. fmt(now), '+inf'),
  redis.call('HGETALL', KEYS[3])}
"""
)

# KEYS: back-off zset, a scratch key. ARGV: now, limit, busy key prefix
# -> {site, -grants, ...} most grants first, then by name (as MemorySites sorts)
BUSY = (
    _PRELUDE
    + """
local limit = tonumber(ARGV[2])
if limit <= 0 then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
local args = {'ZUNIONSTORE', KEYS[2], 0}
local weights = {'WEIGHTS'}
for b = math.floor((now - WINDOW) / BUCKET), math.floor(now / BUCKET) do
  args[#args + 1] = ARGV[3] .. fmt(b)
  weights[#weights + 1] = -1
end
args[#args + 1] = KEYS[1]
weights[#weights + 1] = 0
args[3] = #args - 3
for _, w in ipairs(weights) do args[#args + 1] = w end
redis.call(unpack(args))
local top = redis.call('ZRANGE', KEYS[2], 0, limit - 1, 'WITHSCORES')
redis.call('DEL', KEYS[2])
return top
"""
)


class RedisSites:
    """`SiteState` in Redis: one Lua script per call on the site's keys, the server's clock
    (unless ``server_clock=False``), idle keys expire. Errors raise `StateBackendError`."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "",
        namespace: str | None = None,
        server_clock: bool = True,
        description: str = "redis",
        owns_client: bool = True,
    ) -> None:
        self.client = client
        if namespace is None:
            namespace = f"{NAMESPACE}{prefix}:" if prefix else NAMESPACE
        self.namespace = namespace
        self.server_clock = server_clock
        self.description = description
        self.owns_client = owns_client
        self._grant = client.register_script(GRANT)
        self._release = client.register_script(RELEASE)
        self._slow_down = client.register_script(SLOW_DOWN)
        self._speed_up = client.register_script(SPEED_UP)
        self._cap = client.register_script(CAP)
        self._view = client.register_script(VIEW)
        self._busy = client.register_script(BUSY)

    @classmethod
    def from_url(cls, url: str, *, server_clock: bool = True) -> RedisSites:
        """Its own connection pool (see crawlguard.state.redis for the URL)."""
        settings = parse_redis_url(url)
        return cls(
            connect(settings),
            prefix=settings.prefix,
            server_clock=server_clock,
            description=settings.describe(),
        )

    @classmethod
    def sharing(cls, pacing: RedisState) -> RedisSites:
        """On the pacing state's connection pool and namespace (closed by it, not here)."""
        return cls(
            pacing.client,
            namespace=pacing.namespace,
            description=pacing.description,
            owns_client=False,
        )

    def __repr__(self) -> str:
        return f"RedisSites({self.description}, namespace={self.namespace!r})"

    def site_key(self, site: str) -> str:
        return f"{self.namespace}site:{site}"

    def leases_key(self, site: str) -> str:
        return f"{self.namespace}site-leases:{site}"

    def activity_key(self, site: str) -> str:
        return f"{self.namespace}site-activity:{site}"

    @property
    def busy_prefix(self) -> str:
        return f"{self.namespace}sites-busy:"

    @property
    def backoff_key(self) -> str:
        return f"{self.namespace}sites-backoff"

    def _now(self, now: float) -> str:
        return "" if self.server_clock else str(round(now * US))

    async def _run(self, script: Any, keys: list[str], *args: int | str) -> Any:
        try:
            return await script(keys=keys, args=list(args))
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise StateBackendError(f"{self.description}: {type(exc).__name__}: {exc}") from exc

    # -- SiteState -----------------------------------------------------------------------

    async def grant(self, ask: SiteAsk, now: float) -> SiteGrant:
        reply = await self._run(
            self._grant,
            [
                self.site_key(ask.site),
                self.leases_key(ask.site),
                self.backoff_key,
                self.activity_key(ask.site),
            ],
            self._now(now),
            ask.tenant,
            repr(float(ask.weight)),
            _us(ask.interval),
            _us(ask.gap),
            "" if ask.max_concurrency is None else ask.max_concurrency,
            int(ask.whole_seconds),
            int(ask.force),
            ask.site,
            self.busy_prefix,
        )
        granted, wait, cause, eff, rate = reply[:5]
        lease = reply[5] if len(reply) > 5 else None
        return SiteGrant(
            bool(granted),
            float(wait) / US,
            cause.decode() if isinstance(cause, bytes) else str(cause),
            float(eff) / US,
            float(rate),
            None if lease is None else (lease.decode() if isinstance(lease, bytes) else lease),
        )

    async def release(self, site: str, lease: str) -> None:
        await self._run(self._release, [self.leases_key(site)], "", lease)

    async def slow_down(self, site: str, now: float, pause: float | None) -> float:
        rate = await self._run(
            self._slow_down,
            [self.site_key(site), self.backoff_key],
            self._now(now),
            _us(pause) if pause is not None and pause > 0 else "",
            site,
        )
        return float(rate)

    async def speed_up(self, site: str, now: float) -> float:
        rate = await self._run(
            self._speed_up, [self.site_key(site), self.backoff_key], self._now(now), site
        )
        return float(rate)

    async def cap(self, site: str, now: float, max_rps: float | None, pause: float | None) -> None:
        await self._run(
            self._cap,
            [self.site_key(site), self.backoff_key],
            self._now(now),
            repr(float(max_rps)) if max_rps is not None and max_rps > 0 else "",
            _us(pause) if pause is not None and pause > 0 else "",
            site,
        )

    async def view(self, site: str, now: float) -> SiteView | None:
        reply = await self._run(
            self._view,
            [self.site_key(site), self.leases_key(site), self.activity_key(site)],
            self._now(now),
        )
        return _view(site, reply)

    async def busy(self, now: float, limit: int) -> list[SiteView]:
        top = await self._run(
            self._busy,
            [self.backoff_key, f"{self.namespace}sites-busy-scratch"],
            self._now(now),
            int(limit),
            self.busy_prefix,
        )
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in top[::2]]
        if not names:
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    await self._view(
                        keys=[
                            self.site_key(name),
                            self.leases_key(name),
                            self.activity_key(name),
                        ],
                        args=[self._now(now)],
                        client=pipe,
                    )
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StateBackendError(f"{self.description}: {type(exc).__name__}: {exc}") from exc
        views = [_view(name, reply) for name, reply in zip(names, replies, strict=True)]
        shown = [
            v for v in views if v is not None and (v.grants or v.rate < 1.0 or v.paused_for > 0)
        ]
        shown.sort(key=lambda v: (-v.grants, v.site))
        return shown

    async def close(self) -> None:
        if self.owns_client:
            await self.client.aclose()


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _view(site: str, reply: Any) -> SiteView | None:
    """The VIEW script's answer as `MemorySites` shows it (grants counted per bucket)."""
    if not reply:
        return None
    now = float(reply[0])
    raw, in_flight, activity = reply[1], int(reply[2]), reply[3]
    fields: dict[str, str] = {}
    weights: dict[str, float] = {}
    waiting: set[str] = set()
    grants: dict[str, int] = {}
    oldest = math.floor((now - _us(ACTIVITY_WINDOW)) / _us(ACTIVITY_BUCKET))
    for i in range(0, len(raw), 2):
        name, value = _text(raw[i]), _text(raw[i + 1])
        kind, sep, rest = name.partition(":")
        if not sep:
            fields[name] = value
        elif kind == "w":
            weights[rest] = float(value)
        elif kind == "cd":
            waiting.add(rest)

    for i in range(0, len(activity), 2):
        bucket, _, tenant = _text(activity[i]).partition(":")
        if bucket.isdigit() and int(bucket) >= oldest:
            grants[tenant] = grants.get(tenant, 0) + int(activity[i + 1])

    def get(name: str, default: float) -> float:
        return float(fields[name]) if name in fields else default

    cap_rps = get("cap_rps", 0.0) if get("cap_until", -math.inf) > now else None
    base = get("base", 0.0) / US
    rate = get("rate", 1.0)
    tenants = sorted(set(grants) | waiting, key=lambda t: (-grants.get(t, 0), t))
    return SiteView(
        site=site,
        interval=effective_interval(base, rate, cap_rps),
        base_interval=base,
        rate=rate,
        paused_for=max(0.0, get("pause_until", -math.inf) - now) / US,
        capped_rps=cap_rps,
        in_flight=in_flight,
        max_concurrency=int(fields["max_concurrency"]) if "max_concurrency" in fields else None,
        grants=sum(grants.values()),
        tenants=tuple(
            TenantShare(
                tenant=t, weight=weights.get(t, 1.0), grants=grants.get(t, 0), waiting=t in waiting
            )
            for t in tenants
        ),
    )


__all__ = ["ACTIVITY_BUCKET", "RedisSites"]
