"""Pacing state in Redis (`state.url: redis://…`), shared by every proxy process that points at it.

URL::

    redis://[[user]:password@]host[:port][/db][?prefix=NAME&max_connections=N&timeout=S]
    rediss://…   (the same over TLS)

* ``db``: the logical database (default 0); ``prefix``: a namespace inside it, so several
  deployments (or tests) can share one database. Keys are ``crawlguard:[NAME:]slot:<key>``
  (a string: the next free slot, in µs of the server's clock) and
  ``crawlguard:[NAME:]backoff:<key>`` (a hash: ``until`` in µs, ``level``), where ``<key>`` is
  the pacer's ``<tenant> <origin>``.
* ``max_connections`` (default 16): the connection pool's size; a call waits at most
  ``timeout`` for a free connection. ``timeout`` (default 0.5 s): connect and socket timeout,
  so a dead or stalled Redis fails a call fast instead of holding the request.

Each method is ONE Lua script on ONE key (``EVALSHA`` through redis-py's script cache, which
re-loads a script the server forgot, e.g. after a restart), so every step is atomic across
processes. The scripts read the time with ``redis.call('TIME')`` and ignore the caller's
``now``: replicas whose clocks differ still agree, and the policy only acts on relative
results (``wait``, ``remaining``). Idle keys carry a ``PEXPIREAT``: a slot key expires when its
next free slot has passed, a back-off hash when its window has ended (plus ``backoff_ttl``
while its level is above 0). Nothing is retried by redis-py (a retried reservation could be
taken twice): every failure surfaces as `StateBackendError`, and `FailoverState` decides.
Needs Redis ≥ 5 (``TIME`` in a script that writes: effects replication).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from crawlguard.state import (
    DEFAULT_BACKOFF_TTL,
    Backoff,
    Reservation,
    StateBackendError,
)

NAMESPACE = "crawlguard:"
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_TIMEOUT = 0.5
MAX_SECONDS = 1e9  # longer waits or windows than this (~31 years) are clamped: no µs overflow
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_QUERY_KEYS = ("prefix", "max_connections", "timeout")
US = 1_000_000

# -- Lua -------------------------------------------------------------------------------------
# Times are integer microseconds of the server's clock, held in Lua doubles (exact below 2**53,
# i.e. until the year 2255) and written with %.0f: tostring() would keep only 14 digits.

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(x) return string.format('%.0f', x) end
local function expire_at(key, us) redis.call('PEXPIREAT', key, num(math.ceil(us / 1000))) end
"""

# KEYS: the slot keys one request takes a slot on (usually one). ARGV: interval µs, max_wait µs,
# force (1/0) -> {granted, slot µs, wait µs}
RESERVE = (
    _PRELUDE
    + """
local interval = tonumber(ARGV[1])
local frees = {}
local slot = now
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  local next_free = now
  if stored then next_free = tonumber(stored) end
  frees[i] = next_free
  slot = math.max(slot, next_free)
end
local wait = slot - now
if ARGV[3] ~= '1' and wait > tonumber(ARGV[2]) then return {0, slot, wait} end
for i, key in ipairs(KEYS) do
  local new_free
  if ARGV[3] == '1' then new_free = math.max(frees[i], now + interval)
  else new_free = slot + interval end
  if new_free > now then
    redis.call('SET', key, num(new_free))
    expire_at(key, new_free)
  else
    redis.call('DEL', key)
  end
end
return {1, slot, wait}
"""
)

# KEYS: slot keys. ARGV: slot µs, interval µs -> how many keys gave the slot back
RELEASE = (
    _PRELUDE
    + """
local slot = tonumber(ARGV[1])
local freed = 0
for _, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  if stored and tonumber(stored) == slot + tonumber(ARGV[2]) then
    if slot > now then
      redis.call('SET', key, num(slot))
      expire_at(key, slot)
    else
      redis.call('DEL', key)
    end
    freed = freed + 1
  end
end
return freed
"""
)

# Back-off scripts: KEYS[1] back-off hash, ARGV[1] backoff_ttl µs.
_BACKOFF_PRELUDE = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local function idle(until_, level)
  return until_ <= now and (level == 0 or now >= until_ + ttl)
end
local function store(until_, level)
  if idle(until_, level) then redis.call('DEL', KEYS[1]) return end
  redis.call('HSET', KEYS[1], 'until', num(until_), 'level', num(level))
  if level > 0 then expire_at(KEYS[1], until_ + ttl) else expire_at(KEYS[1], until_) end
end
local rec = redis.call('HMGET', KEYS[1], 'until', 'level')
local until_ = nil
local level = 0
if rec[1] and rec[2] then until_ = tonumber(rec[1]); level = tonumber(rec[2]) end
"""
)

# -> {remaining µs, level} or nil
GET_BACKOFF = (
    _BACKOFF_PRELUDE
    + """
if not until_ or idle(until_, level) then return false end
return {math.max(0, until_ - now), level}
"""
)

# ARGV[2] retry_after µs or '', ARGV[3] base µs, ARGV[4] cap µs -> {remaining µs, level}
RAISE_BACKOFF = (
    _BACKOFF_PRELUDE
    + """
if not until_ or idle(until_, level) then until_ = now; level = 0 end
local retry_after = nil
if ARGV[2] ~= '' then retry_after = tonumber(ARGV[2]) end
if until_ > now then
  if retry_after then until_ = math.max(until_, now + retry_after) end
else
  level = level + 1
  local window = retry_after
  if not window then
    local base = tonumber(ARGV[3]) * 2 ^ math.min(level - 1, 64)
    window = math.min(tonumber(ARGV[4]), math.floor(base + 0.5))
  end
  until_ = now + window
end
store(until_, level)
return {math.max(0, until_ - now), level}
"""
)

# -> 1 if there was a record
DECAY_BACKOFF = (
    _BACKOFF_PRELUDE
    + """
if not until_ then return 0 end
store(until_, math.max(0, level - 1))
return 1
"""
)


def _us(seconds: float) -> int:
    """Seconds as whole microseconds, clamped to [0, MAX_SECONDS]."""
    if not seconds > 0:  # also NaN
        return 0
    return round(min(seconds, MAX_SECONDS) * US)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """A parsed, validated `state.url`."""

    host: str
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    prefix: str = ""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    timeout: float = DEFAULT_TIMEOUT

    @property
    def namespace(self) -> str:
        return f"{NAMESPACE}{self.prefix}:" if self.prefix else NAMESPACE

    def describe(self) -> str:
        """For logs: where, without credentials."""
        scheme = "rediss" if self.tls else "redis"
        query = f"?prefix={self.prefix}" if self.prefix else ""
        return f"{scheme}://{self.host}:{self.port}/{self.db}{query}"


def parse_redis_url(url: str) -> RedisSettings:
    """Validate a ``redis://`` / ``rediss://`` URL; ValueError says what is wrong (never
    echoing the password)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must be memory:// or redis://host:port/db (or rediss:// for TLS)")
    host = parts.hostname
    if not host:
        raise ValueError("redis URL needs a host: redis://host:port/db")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("redis URL port must be a number from 1 to 65535") from None
    if port == 0:
        raise ValueError("redis URL port must be a number from 1 to 65535")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"redis URL database must be a number (redis://host:port/0), not {path!r}")
    db = int(path) if path else 0
    if db > 1_000_000:
        raise ValueError("redis URL database number is out of range")
    if parts.fragment:
        raise ValueError("redis URL must not have a #fragment")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError("redis URL query must be name=value pairs joined by &") from None
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise ValueError(
            f"unknown redis URL parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(_QUERY_KEYS)}"
        )
    for name, values in query.items():
        if len(values) != 1:
            raise ValueError(f"redis URL parameter {name} given more than once")
    prefix = query.get("prefix", [""])[0]
    if "prefix" in query and not _PREFIX_RE.fullmatch(prefix):
        raise ValueError("redis URL prefix must be 1-64 characters of A-Z a-z 0-9 _ . -")
    max_connections = DEFAULT_MAX_CONNECTIONS
    if "max_connections" in query:
        raw = query["max_connections"][0]
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1024:
            raise ValueError("redis URL max_connections must be a whole number from 1 to 1024")
        max_connections = int(raw)
    timeout = DEFAULT_TIMEOUT
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][0])
        except ValueError:
            timeout = math.nan
        if not 0 < timeout <= 30:
            raise ValueError("redis URL timeout must be seconds, more than 0 and at most 30")
    return RedisSettings(
        host=host,
        port=port or 6379,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
        prefix=prefix,
        max_connections=max_connections,
        timeout=timeout,
    )


def connect(settings: RedisSettings) -> Redis:
    """An asyncio client (hiredis parser when installed) with a bounded, blocking pool, short
    timeouts and no retries. Connections are made lazily, on the first call."""
    kwargs: dict[str, Any] = {}
    if settings.tls:
        kwargs["connection_class"] = SSLConnection
    pool = BlockingConnectionPool(
        max_connections=settings.max_connections,
        timeout=settings.timeout,  # waiting for a free connection
        host=settings.host,
        port=settings.port,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        socket_timeout=settings.timeout,
        socket_connect_timeout=settings.timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name="crawlguard",
        **kwargs,
    )
    return Redis.from_pool(pool)


class RedisState:
    """`PacingState` in Redis: one Lua script per call, the server's clock, idle keys expire.

    Errors (unreachable, timeout, a refused command) raise `StateBackendError`.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "",
        backoff_ttl: float = DEFAULT_BACKOFF_TTL,
        description: str = "redis",
    ) -> None:
        self.client = client
        self.namespace = f"{NAMESPACE}{prefix}:" if prefix else NAMESPACE
        self.backoff_ttl = backoff_ttl
        self.description = description
        self._reserve = client.register_script(RESERVE)
        self._release = client.register_script(RELEASE)
        self._get_backoff = client.register_script(GET_BACKOFF)
        self._raise_backoff = client.register_script(RAISE_BACKOFF)
        self._decay_backoff = client.register_script(DECAY_BACKOFF)

    @classmethod
    def from_url(cls, url: str, *, backoff_ttl: float = DEFAULT_BACKOFF_TTL) -> RedisState:
        settings = parse_redis_url(url)
        return cls(
            connect(settings),
            prefix=settings.prefix,
            backoff_ttl=backoff_ttl,
            description=settings.describe(),
        )

    def __repr__(self) -> str:
        return f"RedisState({self.description}, namespace={self.namespace!r})"

    def slot_key(self, key: str) -> str:
        return f"{self.namespace}slot:{key}"

    def backoff_key(self, key: str) -> str:
        return f"{self.namespace}backoff:{key}"

    async def _run(self, script: Any, key: str | list[str], *args: int | str) -> Any:
        try:
            return await script(keys=[key] if isinstance(key, str) else key, args=list(args))
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            raise StateBackendError(f"{self.description}: {type(exc).__name__}: {exc}") from exc

    # -- slots ---------------------------------------------------------------------------

    async def reserve(
        self,
        key: str,
        interval: float,
        now: float,
        max_wait: float,
        *,
        force: bool = False,
        also: tuple[str, ...] = (),
    ) -> Reservation:
        keys = [self.slot_key(k) for k in (key, *also)]
        granted, slot, wait = await self._run(
            self._reserve, keys, _us(interval), _us(max_wait), int(force)
        )
        return Reservation(bool(granted), int(slot) / US, int(wait) / US)

    async def release(
        self, key: str, slot: float, interval: float, *, also: tuple[str, ...] = ()
    ) -> None:
        keys = [self.slot_key(k) for k in (key, *also)]
        await self._run(self._release, keys, round(slot * US), _us(interval))

    # -- back-off ------------------------------------------------------------------------

    async def get_backoff(self, key: str, now: float) -> Backoff | None:
        reply = await self._run(self._get_backoff, self.backoff_key(key), _us(self.backoff_ttl))
        if not reply:
            return None
        remaining, level = reply
        return Backoff(int(remaining) / US, int(level))

    async def raise_backoff(
        self, key: str, now: float, retry_after: float | None, base: float, cap: float
    ) -> Backoff:
        remaining, level = await self._run(
            self._raise_backoff,
            self.backoff_key(key),
            _us(self.backoff_ttl),
            "" if retry_after is None else _us(retry_after),
            _us(base),
            _us(cap),
        )
        return Backoff(int(remaining) / US, int(level))

    async def decay_backoff(self, key: str, now: float) -> None:
        await self._run(self._decay_backoff, self.backoff_key(key), _us(self.backoff_ttl))

    async def close(self) -> None:
        await self.client.aclose()
