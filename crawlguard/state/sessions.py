"""Operator login sessions, server side (crawlguard.admin.auth signs the cookies).

A session is live while its record exists: logout deletes it, so a cookie replayed after
logout is refused even though its signature still checks. Records are keyed by the SHA-256 of
the session id (whoever reads the store learns no cookie) and expire with the session.

Backends, chosen by ``state.url`` like the pacing state:

* ``memory://``: `MemorySessions`, this process only (bounded: `MAX_SESSIONS`).
* ``redis://…``: `RedisSessions`, in the same database and ``prefix`` as the pacing state
  (keys ``crawlguard:[NAME:]admin-session:<sha256 hex>``, ``PX`` expiry), shared by every
  process that points at it: a logout on one replica ends the session on all of them.
  While Redis is unreachable every call raises `SessionsUnavailable` at once (fail closed:
  a session that cannot be checked is not accepted, a logout that cannot be recorded is
  reported); `Outage` paces the probes and logs the outage once when it starts and ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from crawlguard.state.outage import Outage

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("crawlguard")

T = TypeVar("T")

MAX_SESSIONS = 10_000
"""`MemorySessions` keeps at most this many; beyond it the oldest login is ended."""


class SessionsUnavailable(Exception):
    """The session store cannot answer; `retry_after` whole seconds (≥ 1) until it is tried
    again."""

    def __init__(self, retry_after: int, cause: str) -> None:
        super().__init__(f"session store unavailable ({cause})")
        self.retry_after = retry_after
        self.cause = cause


class SessionStore(Protocol):
    """Live session ids (already hashed by the caller)."""

    async def add(self, key: str, seconds: float) -> None:
        """Record a session that lives `seconds`."""
        ...

    async def alive(self, key: str) -> bool:
        """True while the session is recorded and not expired."""
        ...

    async def revoke(self, key: str) -> None:
        """End the session (no error if there is none)."""
        ...

    async def close(self) -> None: ...


class MemorySessions:
    """One process's sessions. Expired ones are swept at each login; at most `max_sessions`
    (only a holder of the operator token can add one, so the cap is a safety net)."""

    def __init__(
        self, *, max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_sessions = max_sessions
        self._clock = clock
        self._expiry: dict[str, float] = {}  # insertion order: oldest login first

    def __len__(self) -> int:
        return len(self._expiry)

    async def add(self, key: str, seconds: float) -> None:
        now = self._clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        self._expiry[key] = now + seconds
        while len(self._expiry) > self.max_sessions:
            del self._expiry[next(iter(self._expiry))]

    async def alive(self, key: str) -> bool:
        expiry = self._expiry.get(key)
        return expiry is not None and expiry > self._clock()

    async def revoke(self, key: str) -> None:
        self._expiry.pop(key, None)

    async def close(self) -> None:
        return None


class RedisSessions:
    """Sessions in Redis, shared by every process using the same database and prefix."""

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str,
        description: str = "redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.description = description
        self._clock = clock
        from redis.exceptions import RedisError

        self._outage = Outage(
            expected=(RedisError, OSError), on_start=self._down, on_end=self._up, clock=clock
        )

    @classmethod
    def from_url(cls, url: str) -> RedisSessions:
        from crawlguard.state.redis import connect, parse_redis_url

        settings = parse_redis_url(url)
        return cls(connect(settings), namespace=settings.namespace, description=settings.describe())

    def __repr__(self) -> str:
        return f"RedisSessions({self.description}, namespace={self.namespace!r})"

    def record_key(self, key: str) -> str:
        return f"{self.namespace}admin-session:{key}"

    async def add(self, key: str, seconds: float) -> None:
        ms = max(1, math.ceil(seconds * 1000))
        await self._call(lambda: self.client.set(self.record_key(key), b"1", px=ms))

    async def alive(self, key: str) -> bool:
        return bool(await self._call(lambda: self.client.exists(self.record_key(key))))

    async def revoke(self, key: str) -> None:
        await self._call(lambda: self.client.delete(self.record_key(key)))

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a dead connection must not stop the shutdown
            log.warning("closing the admin session store failed: %s", exc)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        ok, result = await self._outage.call(op)
        if not ok:
            error = self._outage.error
            cause = f"{self.description}: {type(error).__name__}: {error}" if error else "down"
            retry = max(1, math.ceil(self._outage.next_probe - self._clock() - 1e-9))
            raise SessionsUnavailable(retry, cause)
        return result  # type: ignore[return-value]

    def _down(self, exc: Exception) -> None:
        log.warning(
            "admin sessions: %s unreachable (%s: %s); dashboard logins and sessions are "
            "refused with 503 until it is back (the bearer token still works)",
            self.description,
            type(exc).__name__,
            exc,
        )

    def _up(self, seconds: float) -> None:
        log.info("admin sessions: %s reachable again after %.1f s", self.description, seconds)


def open_sessions(url: str) -> SessionStore:
    """The session store for ``state.url`` (see the module docstring); ValueError for any
    other URL (the config has already refused those)."""
    if url == "memory://":
        return MemorySessions()
    if url.startswith(("redis://", "rediss://")):
        return RedisSessions.from_url(url)
    raise ValueError(f"state.url {url!r}: must be memory:// or redis://host:port/db")


__all__ = [
    "MAX_SESSIONS",
    "MemorySessions",
    "RedisSessions",
    "SessionStore",
    "SessionsUnavailable",
    "open_sessions",
]
