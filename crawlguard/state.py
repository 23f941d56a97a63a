"""Pacing state behind a small interface, so a shared backend can replace the in-memory one.

The policy (crawlguard.pacing) owns every decision; a backend only stores two things per key:

* the *next free slot* — the earliest time the next request for the key may be forwarded;
* a *back-off record* — until when an origin asked us to stay away, and how many throttling
  answers came in a row (the exponent of the exponential back-off).

Every method is one atomic step on one key, so a Redis backend can implement each as a single
Lua script (``EVALSHA`` on one key, ``PEXPIREAT`` for idle expiry). Times are seconds on the
caller's clock; results that the policy acts on are *relative* (``wait``, ``remaining``), so a
shared backend may substitute its own server clock for ``now`` (e.g. Redis ``TIME``) and the
policy still works. ``Reservation.slot`` is an opaque token, only handed back to ``release``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

DEFAULT_MAX_KEYS = 100_000
DEFAULT_BACKOFF_TTL = 3600.0  # how long a back-off level is remembered after its window ends
DEFAULT_SWEEP_EVERY = 60.0


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


class PacingState(Protocol):
    """What the pacer needs from storage. Implementations must make each call atomic per key."""

    async def reserve(
        self, key: str, interval: float, now: float, max_wait: float, *, force: bool = False
    ) -> Reservation:
        """Take the next slot for `key`, atomically.

        ``slot = max(now, next_free)``. If ``slot - now > max_wait`` and not `force`: not
        granted, nothing changes. Otherwise granted and ``next_free = slot + interval``.
        With `force` (the request is forwarded *now* whatever the pacing says: monitor mode)
        the would-be slot is still reported, but ``next_free = max(next_free, now + interval)``.
        """
        ...

    async def release(self, key: str, slot: float, interval: float) -> None:
        """A held request gave up its slot. Best effort: frees it only if it is the latest one
        (``next_free == slot + interval``); earlier holders keep their place, later ones do not
        move up."""
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


@dataclass(slots=True)
class _BackoffRecord:
    until: float
    level: int


class MemoryState:
    """In-process `PacingState` for one worker. Bounded: idle keys expire, at most `max_keys`.

    A slot entry is idle once its next free slot has passed (it then carries no information);
    a back-off entry once its window has ended and, if its level is still above 0, another
    `backoff_ttl` seconds have passed. Idle entries are swept every `sweep_every` seconds of the
    callers' clock; beyond `max_keys` the least recently used entries are dropped (which only
    makes pacing for those keys forget history: fail open, never block wrongly).
    """

    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        backoff_ttl: float = DEFAULT_BACKOFF_TTL,
        sweep_every: float = DEFAULT_SWEEP_EVERY,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self.backoff_ttl = backoff_ttl
        self.sweep_every = sweep_every
        # Insertion order doubles as LRU order: every touch re-inserts the key at the end.
        self._slots: dict[str, float] = {}
        self._backoffs: dict[str, _BackoffRecord] = {}
        self._last_sweep = -math.inf

    def __len__(self) -> int:
        return len(self._slots) + len(self._backoffs)

    # -- slots ---------------------------------------------------------------------------

    async def reserve(
        self, key: str, interval: float, now: float, max_wait: float, *, force: bool = False
    ) -> Reservation:
        self._maybe_sweep(now)
        next_free = self._slots.get(key, now)
        slot = max(now, next_free)
        wait = slot - now
        if force:
            self._touch_slot(key, max(next_free, now + interval), now)
            return Reservation(True, slot, wait)
        if wait > max_wait:
            return Reservation(False, slot, wait)
        self._touch_slot(key, slot + interval, now)
        return Reservation(True, slot, wait)

    async def release(self, key: str, slot: float, interval: float) -> None:
        if self._slots.get(key) == slot + interval:
            self._slots[key] = slot

    def _touch_slot(self, key: str, next_free: float, now: float) -> None:
        self._slots.pop(key, None)
        if next_free > now:
            self._slots[key] = next_free
            self._bound(self._slots)

    # -- back-off ------------------------------------------------------------------------

    async def get_backoff(self, key: str, now: float) -> Backoff | None:
        rec = self._backoffs.get(key)
        if rec is None or self._backoff_idle(rec, now):
            return None
        return Backoff(max(0.0, rec.until - now), rec.level)

    async def raise_backoff(
        self, key: str, now: float, retry_after: float | None, base: float, cap: float
    ) -> Backoff:
        self._maybe_sweep(now)
        rec = self._backoffs.pop(key, None)
        if rec is None or self._backoff_idle(rec, now):
            rec = _BackoffRecord(until=now, level=0)
        if rec.until > now:
            if retry_after is not None:
                rec.until = max(rec.until, now + retry_after)
        else:
            rec.level += 1
            window = (
                retry_after if retry_after is not None else backoff_window(rec.level, base, cap)
            )
            rec.until = now + window
        self._backoffs[key] = rec
        self._bound(self._backoffs)
        return Backoff(max(0.0, rec.until - now), rec.level)

    async def decay_backoff(self, key: str, now: float) -> None:
        rec = self._backoffs.get(key)
        if rec is None:
            return
        rec.level = max(0, rec.level - 1)
        if self._backoff_idle(rec, now):
            del self._backoffs[key]

    def _backoff_idle(self, rec: _BackoffRecord, now: float) -> bool:
        if rec.until > now:
            return False
        return rec.level == 0 or now >= rec.until + self.backoff_ttl

    # -- bounds --------------------------------------------------------------------------

    def _bound(self, table: dict[str, _BackoffRecord] | dict[str, float]) -> None:
        while len(table) > self.max_keys:
            del table[next(iter(table))]

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep < self.sweep_every:
            return
        self._last_sweep = now
        self._slots = {k: v for k, v in self._slots.items() if v > now}
        self._backoffs = {k: r for k, r in self._backoffs.items() if not self._backoff_idle(r, now)}

    async def close(self) -> None:
        return None
