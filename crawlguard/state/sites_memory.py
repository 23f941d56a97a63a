"""Site budgets in one process (`state.url: memory://`, and the fallback of a shared state in
``state.on_error: open``). The algorithm is crawlguard.state.sites's; `RedisSites` runs the
same steps in one Lua script per call."""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

from crawlguard.state.sites import (
    ACTIVITY_WINDOW,
    BACKOFF_INTERVAL,
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
    claim_grace,
    effective_interval,
    fair_slot,
)

MAX_SITES = 100_000
MAX_ACTIVITY = 10_000  # grants remembered per site for operators (ACTIVITY_WINDOW of them)
CONCURRENCY_POLL = 0.25  # s: how soon a request refused for the concurrency cap asks again
SWEEP_EVERY = 60.0


@dataclass(slots=True)
class _Tenant:
    finish: float = 0.0  # SFQ finish tag
    last: float = -math.inf  # when it was last granted a slot here
    gap: float = 0.0
    weight: float = 1.0
    due: float | None = None  # its claim: refused, back at `due`
    since: float = 0.0  # when the claim was first made (ties: first come)
    expires: float = 0.0


@dataclass(slots=True)
class _Site:
    next: float = -math.inf  # the next free slot
    v: float = 0.0  # virtual time
    rate: float = 1.0
    slowed_at: float = -math.inf
    pause_until: float = -math.inf
    cap_rps: float | None = None
    cap_until: float = -math.inf
    base: float = 0.0
    max_concurrency: int | None = None
    touched: float = 0.0
    tenants: dict[str, _Tenant] = field(default_factory=dict)
    leases: dict[str, float] = field(default_factory=dict)  # lease -> expiry
    activity: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=MAX_ACTIVITY))

    def cap(self, now: float) -> float | None:
        return self.cap_rps if self.cap_until > now else None

    def interval(self, now: float) -> float:
        return effective_interval(self.base, self.rate, self.cap(now))


class MemorySites:
    """`SiteState` in process memory: bounded to `max_sites` sites (least recently used go
    first: forgetting a site forgets its tags and back-off, never blocks wrongly)."""

    def __init__(self, *, max_sites: int = MAX_SITES) -> None:
        self.max_sites = max_sites
        self._sites: dict[str, _Site] = {}
        self._leases = itertools.count(1)
        self._last_sweep = -math.inf

    def __len__(self) -> int:
        return len(self._sites)

    def _site(self, name: str, now: float) -> _Site:
        self._maybe_sweep(now)
        site = self._sites.pop(name, None)
        if site is None:
            site = _Site()
        site.touched = now
        self._sites[name] = site  # most recently used last
        while len(self._sites) > self.max_sites:
            del self._sites[next(iter(self._sites))]
        return site

    async def grant(self, ask: SiteAsk, now: float) -> SiteGrant:
        site = self._site(ask.site, now)
        site.base = ask.interval
        site.max_concurrency = ask.max_concurrency
        _prune(site, now)
        eff = site.interval(now)
        me = site.tenants.get(ask.tenant)
        if me is None:
            me = _Tenant(finish=site.v)
        me.gap, me.weight = ask.gap, ask.weight
        start = max(site.v, me.finish)
        if ask.force:
            return self._take(site, ask, me, start, now, eff)

        mine = (start, me.since if me.due is not None else now, ask.tenant)
        ahead = [
            (max(site.v, other.finish), other, name)
            for name, other in site.tenants.items()
            if name != ask.tenant
            and other.due is not None
            and (max(site.v, other.finish), other.since, name) < mine
        ]
        free_at = max(site.next, site.pause_until, now)
        gap_at = me.last + ask.gap - GAP_TOLERANCE
        full = ask.max_concurrency is not None and len(site.leases) >= ask.max_concurrency
        if gap_at > now:  # its own pacing, not the site's: no place in the site's queue
            return SiteGrant(False, gap_at - now, "gap", eff, site.rate)
        if free_at > now:
            cause = "paused" if site.pause_until >= site.next else "slot"
        elif full:
            cause = "concurrency"
        elif eff > 0 and (  # with no pace, nothing to share but the concurrency cap
            any(o.due <= now for _, o, _ in ahead if o.due is not None)
            or min((o.due for _, o, _ in ahead if o.due is not None), default=math.inf) < now + eff
        ):
            cause = "share"  # a claimant ahead is due, or would not find the next slot free
        else:
            return self._take(site, ask, me, start, now, eff)

        slot = fair_slot(
            free_at,
            start,
            eff,
            [(s, o.weight, o.due, o.since, n) for s, o, n in ahead if o.due is not None],
        )
        wait = max(slot - now, gap_at - now, CONCURRENCY_POLL if full else 0.0)
        wait = max(wait, 1e-3)
        due = now + (math.ceil(wait - 1e-9) if ask.whole_seconds else wait)
        if me.due is None:
            me.since = now
        me.due = due
        me.expires = due + claim_grace(eff)
        site.tenants[ask.tenant] = me
        return SiteGrant(False, wait, cause, eff, site.rate)

    def _take(
        self, site: _Site, ask: SiteAsk, me: _Tenant, start: float, now: float, eff: float
    ) -> SiteGrant:
        site.v = start
        me.finish = start + 1.0 / ask.weight
        me.last = now
        me.due = None
        site.tenants[ask.tenant] = me
        site.next = max(site.next, now + eff)
        site.activity.append((now, ask.tenant))
        lease = None
        if ask.max_concurrency is not None:
            lease = str(next(self._leases))
            site.leases[lease] = now + LEASE_TTL
        return SiteGrant(True, 0.0, "granted", eff, site.rate, lease)

    async def release(self, site: str, lease: str) -> None:
        rec = self._sites.get(site)
        if rec is not None:
            rec.leases.pop(lease, None)

    async def slow_down(self, site: str, now: float, pause: float | None) -> float:
        rec = self._site(site, now)
        if now >= rec.slowed_at + max(rec.interval(now), 1.0):
            rec.rate = max(RATE_FLOOR, rec.rate * RATE_DECREASE)
            rec.slowed_at = now
        rec.next = max(rec.next, now + rec.interval(now))
        if pause is not None and pause > 0:
            rec.pause_until = max(rec.pause_until, now + min(pause, 86400.0))
        return rec.rate

    async def speed_up(self, site: str, now: float) -> float:
        rec = self._sites.get(site)
        if rec is None:
            return 1.0
        rec.rate = min(1.0, rec.rate + RATE_INCREASE)
        return rec.rate

    async def cap(self, site: str, now: float, max_rps: float | None, pause: float | None) -> None:
        rec = self._site(site, now)
        if max_rps is not None and max_rps > 0:
            rec.cap_rps = max_rps
            rec.cap_until = now + ACTIVITY_WINDOW
            rec.next = max(rec.next, now + 1.0 / max_rps)  # counted from the answer that says so
        if pause is not None and pause > 0:
            rec.pause_until = max(rec.pause_until, now + min(pause, 86400.0))

    async def view(self, site: str, now: float) -> SiteView | None:
        rec = self._sites.get(site)
        return None if rec is None else _view(site, rec, now)

    async def busy(self, now: float, limit: int) -> list[SiteView]:
        cutoff = now - ACTIVITY_WINDOW
        counts = []
        for name, rec in self._sites.items():
            n = sum(1 for at, _ in rec.activity if at > cutoff)
            if n or rec.rate < 1.0 or rec.pause_until > now:
                counts.append((n, name))
        counts.sort(key=lambda item: (-item[0], item[1]))
        return [_view(name, self._sites[name], now) for _, name in counts[:limit]]

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep < SWEEP_EVERY:
            return
        self._last_sweep = now
        idle = [
            name
            for name, rec in self._sites.items()
            if rec.touched + SITE_TTL < now and not rec.leases and rec.pause_until < now
        ]
        for name in idle:
            del self._sites[name]

    async def close(self) -> None:
        return None


def _prune(site: _Site, now: float) -> None:
    """Drop expired claims and leases, and tenants whose tags no longer matter (finish tag
    behind the virtual time, no claim, their own gap over)."""
    for lease in [k for k, exp in site.leases.items() if exp <= now]:
        del site.leases[lease]
    stale = []
    for name, rec in site.tenants.items():
        if rec.due is not None and rec.expires <= now:
            rec.due = None
        if rec.due is None and rec.finish <= site.v and rec.last + rec.gap <= now:
            stale.append(name)
    for name in stale:
        del site.tenants[name]
    cutoff = now - ACTIVITY_WINDOW
    while site.activity and site.activity[0][0] <= cutoff:
        site.activity.popleft()


def _view(name: str, rec: _Site, now: float) -> SiteView:
    cutoff = now - ACTIVITY_WINDOW
    grants: dict[str, int] = {}
    for at, tenant in rec.activity:
        if at > cutoff:
            grants[tenant] = grants.get(tenant, 0) + 1
    tenants = set(grants) | {t for t, r in rec.tenants.items() if r.due is not None}
    shares = tuple(
        TenantShare(
            tenant=t,
            weight=rec.tenants[t].weight if t in rec.tenants else 1.0,
            grants=grants.get(t, 0),
            waiting=t in rec.tenants and rec.tenants[t].due is not None,
        )
        for t in sorted(tenants, key=lambda t: (-grants.get(t, 0), t))
    )
    return SiteView(
        site=name,
        interval=rec.interval(now),
        base_interval=rec.base,
        rate=rec.rate,
        paused_for=max(0.0, rec.pause_until - now),
        capped_rps=rec.cap(now),
        in_flight=len([1 for exp in rec.leases.values() if exp > now]),
        max_concurrency=rec.max_concurrency,
        grants=sum(grants.values()),
        tenants=shares,
    )


__all__ = ["BACKOFF_INTERVAL", "MemorySites"]
