"""In-process pacing state (`state.url: memory://`), and the fallback of a shared state in
``state.on_error: open``. See crawlguard.state for the contract."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crawlguard.state import (
    DEFAULT_BACKOFF_TTL,
    DEFAULT_MAX_KEYS,
    DEFAULT_SWEEP_EVERY,
    Backoff,
    Reservation,
    backoff_window,
)


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
        self,
        key: str,
        interval: float,
        now: float,
        max_wait: float,
        *,
        force: bool = False,
        also: tuple[str, ...] = (),
    ) -> Reservation:
        self._maybe_sweep(now)
        keys = (key, *also)
        frees = [self._slots.get(k, now) for k in keys]
        slot = max(now, *frees)
        wait = slot - now
        if force:
            for k, next_free in zip(keys, frees, strict=True):
                self._touch_slot(k, max(next_free, now + interval), now)
            return Reservation(True, slot, wait)
        if wait > max_wait:
            return Reservation(False, slot, wait)
        for k in keys:
            self._touch_slot(k, slot + interval, now)
        return Reservation(True, slot, wait)

    async def release(
        self, key: str, slot: float, interval: float, *, also: tuple[str, ...] = ()
    ) -> None:
        for k in (key, *also):
            if self._slots.get(k) == slot + interval:
                self._slots[k] = slot

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
