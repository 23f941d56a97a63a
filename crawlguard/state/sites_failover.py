"""``state.on_error`` around the shared site budgets, as `FailoverState` applies it to pacing.

`FailoverSites` forwards every call to the shared `SiteState` (`RedisSites`) until one fails
with a `StateBackendError`; the backend is then left alone and probed by one call at a time
(crawlguard.state.outage.Outage: 0.25 s, doubling up to 5 s). While it is down:

* ``closed`` (default): `grant` raises `StateUnavailable` (the request gets
  ``state-unavailable``); `release`, `slow_down`, `speed_up` and `cap` (feedback after the
  decision) are dropped; `view` answers None and `busy` [] (operators see nothing rather than
  an error).
* ``open``: every call goes to a per-process `MemorySites` (the budget is per process until
  Redis is back; what it learnt meanwhile is not copied).

A lease is released where it was granted: the fallback's leases carry a ``m:`` prefix, so a
request granted by one backend and ending after the outage started or ended does not free a
slot of the other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from crawlguard.state import OnError, StateBackendError, StateUnavailable
from crawlguard.state.outage import MAX_DOWN_INTERVAL, MIN_DOWN_INTERVAL, Outage
from crawlguard.state.sites import SiteAsk, SiteGrant, SiteState, SiteView
from crawlguard.state.sites_memory import MemorySites

log = logging.getLogger("crawlguard")

T = TypeVar("T")

FALLBACK_LEASE = "m:"  # the prefix of a lease the fallback granted


class FailoverSites:
    """A shared `SiteState` (`primary`) with ``state.on_error`` applied while it is down."""

    def __init__(
        self,
        primary: SiteState,
        *,
        on_error: OnError = "closed",
        fallback: SiteState | None = None,
        on_fallback: Callable[[], None] | None = None,
        min_interval: float = MIN_DOWN_INTERVAL,
        max_interval: float = MAX_DOWN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_error not in ("closed", "open"):
            raise ValueError(f"on_error must be closed or open, not {on_error!r}")
        self.primary = primary
        self.on_error = on_error
        self.fallback: SiteState | None = None
        if on_error == "open":
            self.fallback = fallback if fallback is not None else MemorySites()
        self.on_fallback = on_fallback
        self._clock = clock
        self._outage = Outage(
            expected=(StateBackendError,),
            on_start=self._outage_started,
            on_end=self._outage_ended,
            min_interval=min_interval,
            max_interval=max_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"FailoverSites({self.primary!r}, on_error={self.on_error!r})"

    @property
    def down(self) -> bool:
        return self._outage.down

    def retry_after(self) -> int:
        """Whole seconds (≥ 1) until the backend is probed again."""
        return max(1, math.ceil(self._outage.next_probe - self._clock() - 1e-9))

    # -- SiteState -----------------------------------------------------------------------

    async def grant(self, ask: SiteAsk, now: float) -> SiteGrant:
        ok, result = await self._outage.call(lambda: self.primary.grant(ask, now))
        if ok and result is not None:
            return result
        if self.fallback is None:
            error = self._outage.error
            raise StateUnavailable(self.retry_after(), str(error) if error is not None else "")
        got = await self.fallback.grant(ask, now)
        if got.lease is None:
            return got
        return SiteGrant(
            got.granted, got.wait, got.cause, got.interval, got.rate, FALLBACK_LEASE + got.lease
        )

    async def release(self, site: str, lease: str) -> None:
        if lease.startswith(FALLBACK_LEASE):
            if self.fallback is not None:
                await self.fallback.release(site, lease.removeprefix(FALLBACK_LEASE))
            return
        await self._outage.call(lambda: self.primary.release(site, lease))

    async def slow_down(self, site: str, now: float, pause: float | None) -> float:
        rate = await self._call(lambda s: s.slow_down(site, now, pause))
        return 1.0 if rate is None else rate

    async def speed_up(self, site: str, now: float) -> float:
        rate = await self._call(lambda s: s.speed_up(site, now))
        return 1.0 if rate is None else rate

    async def cap(self, site: str, now: float, max_rps: float | None, pause: float | None) -> None:
        await self._call(lambda s: s.cap(site, now, max_rps, pause))

    async def view(self, site: str, now: float) -> SiteView | None:
        return await self._call(lambda s: s.view(site, now))

    async def busy(self, now: float, limit: int) -> list[SiteView]:
        views = await self._call(lambda s: s.busy(now, limit))
        return [] if views is None else views

    async def close(self) -> None:
        try:
            await self.primary.close()
        except Exception as exc:  # closing a dead connection must not stop the shutdown
            log.warning("closing the shared site budget state failed: %s", exc)
        if self.fallback is not None:
            await self.fallback.close()

    # -- failover ------------------------------------------------------------------------

    async def _call(self, op: Callable[[SiteState], Awaitable[T]]) -> T | None:
        """`op` on the primary unless it is down; else on the fallback (open) or None."""
        ok, result = await self._outage.call(lambda: op(self.primary))
        if ok:
            return result
        if self.fallback is not None:
            return await op(self.fallback)
        return None

    def _outage_started(self, exc: Exception) -> None:
        if self.fallback is not None:
            what = "site budgets per process (state.on_error: open) until it is back"
        else:
            what = "refusing requests with 503 state-unavailable (state.on_error: closed)"
        log.warning("shared site budget state unreachable (%s); %s", exc, what)
        if self.fallback is not None and self.on_fallback is not None:
            self.on_fallback()

    def _outage_ended(self, seconds: float) -> None:
        log.info("shared site budget state reachable again after %.1f s", seconds)


__all__ = ["FALLBACK_LEASE", "FailoverSites"]
