"""The robots.txt cache shared by replicas in Redis (`state.url: redis://…`, issue 11).

`RobotsCache` (crawlguard.robots.cache) keeps its in-process cache in front: a request whose
robots.txt is fresh in memory never reaches this module. On a local miss it asks
`RedisRobots.claim`, ONE Lua script that atomically either

* returns the origin's fresh shared record (another replica fetched it: no fetch here), or
* takes the origin's fetch lock (``SET lock token NX PX <fetch_timeout + margin>``): this
  process fetches, then `publish` stores the outcome and releases the lock in one script, or
* reports that another replica holds the lock, and for how long: the cache polls `claim`
  (20 ms doubling to 200 ms, never past the lock's end) until the record appears or the lock
  expires (its holder died), when the next `claim` takes the lock and this process fetches.

So concurrent first requests for one origin through any number of replicas cause one fetch.

Keys (``<ns>`` is ``crawlguard:`` or ``crawlguard:<prefix>:`` from the URL's ``?prefix=``,
``<origin>`` is ``scheme://host:port``, IPv6 hosts in brackets; the braces are a Redis Cluster
hash tag keeping both keys of one origin in one slot):

* ``<ns>robots:{<origin>}`` — a hash: ``v`` (format, ``1``), ``result``, ``status`` (HTTP
  status of the last hop, empty when none), ``sha256``, ``detail``, ``failures`` (consecutive
  failed fetches: the back-off exponent), ``fetched_at``, ``expires_at``, ``good_at`` (µs of
  the Redis server's clock; ``good_at``: when the body in force was fetched, for stale copies)
  and ``body`` (the raw bytes in force, ≤ 500 KiB, only for ``ok`` and ``stale``). The key's
  ``PEXPIREAT`` is ``expires_at``: it lives exactly as long as the entry is fresh.
* ``<ns>robots-lock:{<origin>}`` — the fetch lock: a random token, ``PX`` = fetch timeout +
  margin; deleted by its holder's `publish` (compare-and-delete), else it expires.

Times are the server's (``TIME`` in the scripts) and handed to the cache as *relative* seconds
(age, time left), so replicas whose clocks differ agree on expiry. Parsing stays local: each
replica parses the body it loads (and checks its SHA-256 against the record's).

Redis unreachable: robots.txt correctness does not need Redis, only sharing does. Whatever
``state.on_error`` says, `claim` then answers None and the cache fetches per process;
`publish` and `release` are dropped. The outage is logged once when it starts and once when it
ends; while it lasts Redis is left alone for 0.25 s (doubling to 5 s) between probes, so a dead
Redis costs one fast failure per interval, not one per robots.txt miss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from crawlguard.robots.cache import Claim, Origin, SharedRecord
from crawlguard.state.outage import MAX_DOWN_INTERVAL, MIN_DOWN_INTERVAL, Outage
from crawlguard.state.redis import NAMESPACE, US, connect, parse_redis_url

log = logging.getLogger("crawlguard")

FORMAT = "1"
_FIELDS = (
    "v", "expires_at", "fetched_at", "good_at", "result", "status", "sha256", "detail",
    "failures", "body",
)  # fmt: skip

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function num(x) return string.format('%.0f', x) end
"""

# KEYS[1] entry hash, KEYS[2] lock. ARGV[1] token, ARGV[2] lock ttl ms, ARGV[3] format.
# -> {1, now µs, <_FIELDS values>} fresh record | {2} lock taken | {3, lock pttl ms} busy
CLAIM = (
    _PRELUDE
    + """
local rec = redis.call('HMGET', KEYS[1], """
    + ", ".join(f"'{f}'" for f in _FIELDS)
    + """)
if rec[1] == ARGV[3] and rec[2] and tonumber(rec[2]) > now then
  local reply = {1, num(now)}
  for i = 2, #rec do reply[i + 1] = rec[i] end
  return reply
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3, redis.call('PTTL', KEYS[2])}
"""
)

# KEYS[1] entry hash, KEYS[2] lock. ARGV: token ('' = none), format, lifetime µs, age µs,
# good age µs, result, status, sha256, detail, failures, has body ('1'/'0'), body -> 1
PUBLISH = (
    _PRELUDE
    + """
local expires = now + tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'expires_at', num(expires),
  'fetched_at', num(now - tonumber(ARGV[4])), 'good_at', num(now - tonumber(ARGV[5])),
  'result', ARGV[6], 'status', ARGV[7], 'sha256', ARGV[8], 'detail', ARGV[9],
  'failures', ARGV[10])
if ARGV[11] == '1' then redis.call('HSET', KEYS[1], 'body', ARGV[12]) end
redis.call('PEXPIREAT', KEYS[1], num(math.ceil(expires / 1000)))
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
)

# KEYS[1] lock, ARGV[1] token -> 1 if it was ours and is gone
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def origin_key(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RedisRobots:
    """`SharedRobots` in Redis (see the module docstring). Never raises: an unreachable or
    misbehaving Redis makes `claim` answer None and drops `publish` / `release`."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "",
        description: str = "redis",
        min_interval: float = MIN_DOWN_INTERVAL,
        max_interval: float = MAX_DOWN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = f"{NAMESPACE}{prefix}:" if prefix else NAMESPACE
        self.description = description
        self._claim = client.register_script(CLAIM)
        self._publish = client.register_script(PUBLISH)
        self._release = client.register_script(RELEASE)
        self._outage = Outage(
            expected=(RedisError, OSError),  # OSError: connection refused, TimeoutError
            on_start=self._outage_started,
            on_end=self._outage_ended,
            min_interval=min_interval,
            max_interval=max_interval,
            clock=clock,
        )

    @classmethod
    def from_url(cls, url: str) -> RedisRobots:
        settings = parse_redis_url(url)
        return cls(connect(settings), prefix=settings.prefix, description=settings.describe())

    def __repr__(self) -> str:
        return f"RedisRobots({self.description}, namespace={self.namespace!r})"

    @property
    def down(self) -> bool:
        return self._outage.down

    def entry_key(self, origin: Origin) -> str:
        return f"{self.namespace}robots:{{{origin_key(origin)}}}"

    def lock_key(self, origin: Origin) -> str:
        return f"{self.namespace}robots-lock:{{{origin_key(origin)}}}"

    # -- SharedRobots ------------------------------------------------------------------------

    async def claim(self, origin: Origin, token: str, lock_ttl: float) -> Claim | None:
        keys = [self.entry_key(origin), self.lock_key(origin)]
        reply = await self._call(self._claim, keys, [token, max(1, round(lock_ttl * 1000)), FORMAT])
        if reply is None:
            return None
        try:
            kind = int(reply[0])
            if kind == 2:
                return Claim(locked=True)
            if kind == 3:
                pttl = int(reply[1])
                return Claim(wait=pttl / 1000 if pttl > 0 else 0.0)
            return Claim(record=self._record(reply[1:]))
        except (ValueError, TypeError, IndexError) as exc:  # a foreign or damaged value
            log.warning("shared robots.txt record for %s ignored: %r", origin_key(origin), exc)
            return None

    async def publish(self, origin: Origin, record: SharedRecord, token: str | None) -> None:
        keys = [self.entry_key(origin), self.lock_key(origin)]
        args: list[str | int | bytes] = [
            token or "",
            FORMAT,
            max(1, round(record.lifetime_left * US)),
            max(0, round(record.age * US)),
            max(0, round((record.good_age if record.good_age is not None else record.age) * US)),
            record.result,
            "" if record.status is None else record.status,
            record.sha256 or "",
            record.detail,
            record.failures,
            "0" if record.body is None else "1",
            record.body or b"",
        ]
        await self._call(self._publish, keys, args)

    async def release(self, origin: Origin, token: str) -> None:
        await self._call(self._release, [self.lock_key(origin)], [token])

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a dead connection must not stop the shutdown
            log.warning("closing the shared robots.txt cache failed: %s", exc)

    # -- decoding ----------------------------------------------------------------------------

    @staticmethod
    def _record(values: list[Any]) -> SharedRecord:
        now = int(values[0])
        expires, fetched, good, result, status, sha256, detail, failures, body = values[1:]
        status_text = _text(status)
        sha_text = _text(sha256)
        return SharedRecord(
            result=_text(result),
            body=bytes(body) if body is not None else None,
            sha256=sha_text or None,
            detail=_text(detail),
            status=int(status_text) if status_text else None,
            age=max(0, now - int(fetched)) / US,
            lifetime_left=(int(expires) - now) / US,
            good_age=max(0, now - int(good)) / US,
            failures=max(0, int(failures)),
        )

    # -- outages -----------------------------------------------------------------------------

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script unless Redis is considered down; None when skipped or failed
        (RedisError, OSError: timeouts)."""
        _, reply = await self._outage.call(lambda: script(keys=keys, args=args))
        return reply

    def _outage_started(self, exc: Exception) -> None:
        log.warning(
            "shared robots.txt cache unreachable (%s: %s: %s); fetching robots.txt per "
            "process until it is back (robots.txt decisions do not need it)",
            self.description,
            type(exc).__name__,
            exc,
        )

    def _outage_ended(self, seconds: float) -> None:
        log.info("shared robots.txt cache reachable again after %.1f s; sharing resumed", seconds)


def open_shared_robots(url: str) -> RedisRobots | None:
    """The shared robots.txt cache for ``state.url``: None for ``memory://`` (per process)."""
    if url.startswith(("redis://", "rediss://")):
        return RedisRobots.from_url(url)
    return None
