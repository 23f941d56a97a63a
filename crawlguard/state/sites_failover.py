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

from crawlguard.state import StateUnavailable
from crawlguard.state.failover import Failover
from crawlguard.state.sites import SiteAsk, SiteGrant, SiteState, SiteView
from crawlguard.state.sites_memory import MemorySites

FALLBACK_LEASE = "m:"  # the prefix of a lease the fallback granted


class FailoverSites(Failover[SiteState]):
    """A shared `SiteState` (`primary`) with ``state.on_error`` applied while it is down."""

    what = "shared site budget state"
    fallback_does = "site budgets per process"

    def new_fallback(self) -> SiteState:
        return MemorySites()

    async def grant(self, ask: SiteAsk, now: float) -> SiteGrant:
        got = await self._call(lambda s: s.grant(ask, now), required=True)
        if got is None:  # closed: `_call` raised instead (kept for the type checker)
            raise StateUnavailable(self.retry_after())
        if self.down and got.lease is not None:  # the fallback's: released there
            return SiteGrant(
                got.granted, got.wait, got.cause, got.interval, got.rate, FALLBACK_LEASE + got.lease
            )
        return got

    async def release(self, site: str, lease: str) -> None:
        if lease.startswith(FALLBACK_LEASE):
            if self.fallback is not None:
                await self.fallback.release(site, lease.removeprefix(FALLBACK_LEASE))
            return
        await self._outage.call(lambda: self.primary.release(site, lease))

    async def slow_down(self, site: str, now: float, pause: float | None) -> float:
        rate = await self._call(lambda s: s.slow_down(site, now, pause), required=False)
        return 1.0 if rate is None else rate

    async def speed_up(self, site: str, now: float) -> float:
        rate = await self._call(lambda s: s.speed_up(site, now), required=False)
        return 1.0 if rate is None else rate

    async def cap(self, site: str, now: float, max_rps: float | None, pause: float | None) -> None:
        await self._call(lambda s: s.cap(site, now, max_rps, pause), required=False)

    async def view(self, site: str, now: float) -> SiteView | None:
        return await self._call(lambda s: s.view(site, now), required=False)

    async def busy(self, now: float, limit: int) -> list[SiteView]:
        views = await self._call(lambda s: s.busy(now, limit), required=False)
        return [] if views is None else views


__all__ = ["FALLBACK_LEASE", "FailoverSites"]
