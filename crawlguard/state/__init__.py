"""Pacing state behind a small interface, so a shared backend can replace the in-memory one.

The policy (crawlguard.policy.pacing) owns every decision; a backend only stores two things per key:

* the *next free slot* — the earliest time the next request for the key may be forwarded;
* a *back-off record* — until when an origin asked us to stay away, and how many throttling
  answers came in a row (the exponent of the exponential back-off).

Every method is one atomic step on one key, so a Redis backend can implement each as a single
Lua script (``EVALSHA`` on one key, ``PEXPIREAT`` for idle expiry). Times are seconds on the
caller's clock; results that the policy acts on are *relative* (``wait``, ``remaining``), so a
shared backend may substitute its own server clock for ``now`` (e.g. Redis ``TIME``) and the
policy still works. ``Reservation.slot`` is an opaque token, only handed back to ``release``.

Backends: `MemoryState` (crawlguard.state.memory, one process) and `RedisState`
(crawlguard.state.redis, shared by replicas; wrapped in `FailoverState` by `open_state`, which
applies ``state.on_error`` when Redis is unreachable).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

DEFAULT_MAX_KEYS = 100_000
DEFAULT_BACKOFF_TTL = 3600.0  # how long a back-off level is remembered after its window ends
DEFAULT_SWEEP_EVERY = 60.0

OnError = Literal["closed", "open"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """Answer to `reserve`. `slot`: when the request may go; `wait`: `slot - now`, never < 0."""

    granted: bool
    slot: float
    wait: float


@dataclass(frozen=True, slots=True)
class Backoff:
    """An origin's back-off for one key. `remaining` > 0 while the window is running."""

    remaining: float
    level: int


class StateBackendError(Exception):
    """A shared backend could not answer (unreachable, timed out, refused the command)."""


class StateUnavailable(Exception):
    """The shared state is down and ``state.on_error`` is ``closed``: the request must be
    refused (decision ``state-unavailable``); `retry_after` whole seconds (≥ 1) until the
    backend is probed again."""

    def __init__(self, retry_after: int, cause: str = "") -> None:
        super().__init__(f"shared pacing state unavailable ({cause or 'down'})")
        self.retry_after = retry_after
        self.cause = cause


class PacingState(Protocol):
    """What the pacer needs from storage. Implementations must make each call atomic per key."""

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
        """Take the next slot for `key` (and every key in `also`), atomically.

        ``slot = max(now, next_free)``, `next_free` being the latest of the keys'. If
        ``slot - now > max_wait`` and not `force`: not granted, nothing changes. Otherwise
        granted and every key's ``next_free = slot + interval``. With `force` (the request is
        forwarded *now* whatever the pacing says: monitor mode) the would-be slot is still
        reported, but each key's ``next_free = max(its next_free, now + interval)``. `also`
        lets one request take one slot on several keys (`pacing.scope: address`: the host's
        and the dialled address's), so the strictest of them decides.
        """
        ...

    async def release(
        self, key: str, slot: float, interval: float, *, also: tuple[str, ...] = ()
    ) -> None:
        """A held request gave up its slot. Best effort, per key: frees it only where it is the
        latest one (``next_free == slot + interval``); earlier holders keep their place, later
        ones do not move up."""
        ...

    async def get_backoff(self, key: str, now: float) -> Backoff | None:
        """The back-off record for `key`, or None if there is none (or it has expired)."""
        ...

    async def raise_backoff(
        self, key: str, now: float, retry_after: float | None, base: float, cap: float
    ) -> Backoff:
        """The origin throttled (429/503), atomically.

        While a window is running (answers that were already in flight), the level stays and
        an explicit `retry_after` can only extend the window. Otherwise the level goes up by
        one and the window is `retry_after` if given, else ``min(cap, base * 2 ** (level - 1))``.
        """
        ...

    async def decay_backoff(self, key: str, now: float) -> None:
        """The origin answered successfully: level down by one. The running window is kept."""
        ...

    async def close(self) -> None:
        """Release connections (no-op in memory)."""
        ...


def backoff_window(level: int, base: float, cap: float) -> float:
    """Exponential back-off for `level` consecutive throttling answers (0 → no back-off)."""
    if level <= 0:
        return 0.0
    # 2 ** 1075 overflows a float; anything past 2**64 is far beyond any cap anyway.
    return min(cap, base * math.ldexp(1.0, min(level - 1, 64)))


def open_state(
    url: str,
    on_error: OnError = "closed",
    *,
    on_fallback: Callable[[], None] | None = None,
) -> PacingState:
    """The pacing state for ``state.url``.

    ``memory://``: a per-process `MemoryState` (it cannot fail, so `on_error` does not apply).
    ``redis://`` / ``rediss://``: a `RedisState` (see crawlguard.state.redis for the URL form)
    behind a `FailoverState` that applies `on_error` while Redis is unreachable: ``closed``
    raises `StateUnavailable` from `reserve` / `get_backoff`; ``open`` paces per process in a
    `MemoryState` meanwhile and calls `on_fallback` once per outage. Raises ValueError for any
    other URL.
    """
    if url == "memory://":
        return MemoryState()
    if url.startswith(("redis://", "rediss://")):
        from crawlguard.state.failover import FailoverState
        from crawlguard.state.redis import RedisState

        return FailoverState(
            RedisState.from_url(url),
            on_error=on_error,
            fallback=MemoryState() if on_error == "open" else None,
            on_fallback=on_fallback,
        )
    raise ValueError(f"state.url {url!r}: must be memory:// or redis://host:port/db")


# At the end: memory.py imports the types above from this package.
from crawlguard.state.memory import MemoryState  # noqa: E402

__all__ = [
    "DEFAULT_BACKOFF_TTL",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_SWEEP_EVERY",
    "Backoff",
    "MemoryState",
    "OnError",
    "PacingState",
    "Reservation",
    "StateBackendError",
    "StateUnavailable",
    "backoff_window",
    "open_state",
]
