"""The platform's per-site budget: one pace per site for all tenants, slots handed out fairly.

A site (`platform.site_key`: a host or a registrable domain) gets one request every
`interval` seconds from the whole platform, at most `max_concurrency` in flight, and the
slots go to the tenants that want them by start-time fair queueing (SFQ, Goyal et al. 1996),
weighted by `tenants[].weight`:

* every tenant t on a site has a finish tag F_t; the site has a virtual time V;
* a tenant asking gets the start tag S_t = max(V, F_t): a tenant back from idleness starts at
  the current virtual time, so idle time earns no credit (work-conserving: while it is idle
  its share goes to the others at once, since only tenants that ask are ever compared);
* a free slot goes to the contender with the smallest (S, first-asked, id) among the asker and
  the tenants that were refused and are due back (their *claims*); the winner's tags become
  V = S_t and F_t = S_t + 1 / w_t.

Fairness (SFQ's bound, Goyal et al. Theorem 1, with every slot of unit size): over any interval
in which tenants i and j both keep asking, the slots they get, W_i and W_j, satisfy
|W_i / w_i - W_j / w_j| <= 1 / w_i + 1 / w_j. So one tenant cannot take more than its share while
others wait, and with weights 2:1:1 the first gets half of the slots, up to two slots.

The asking is polled, not queued: nothing waits inside the state. A refused asker is told the
seconds until its fair slot (`SiteGrant.wait`) and leaves a claim *due* then (a `reject`
tenant's client returns after a whole-second Retry-After, a held `delay` request is re-asked
by the proxy exactly then). A slot that frees while a claimant ahead is not yet due may be
taken by another tenant only when the claimant still finds the following slot free on its
return (borrowing, so no slot is lost to a client's rounding); a claimant that is due and does
not come back blocks the slot only until its claim expires (`CLAIM_GRACE` after its due
time). That is the whole bookkeeping, so a shared backend holds it in one record per site and
decides in one atomic step (one Lua script in Redis, on the server's clock).

The site backs off as one: `slow_down` (a 429/503 to any tenant, sustained 5xx, a rising
response time) divides the site's rate multiplicatively (at most once per interval, so the
answers already in flight do not compound it) and pauses it for an origin's Retry-After;
`speed_up` (a success) adds to it; the rate stays within [RATE_FLOOR, 1] of the configured
budget. `cap` applies a site's own RateLimit / RateLimit-Policy answer for a while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

RATE_FLOOR = 1 / 16  # the slowest the back-off makes a site: 1/16 of its budget
RATE_DECREASE = 0.5  # multiplicative decrease per back-off step
RATE_INCREASE = 1 / 16  # additive increase per success
BACKOFF_INTERVAL = 0.25  # s: the interval a back-off divides when the site has none of its own
GAP_TOLERANCE = 0.02  # s: a tenant's own spacing may be this much short (the hold's timer lag)
CLAIM_GRACE = 1.0  # s: how long a due claimant that does not return keeps its place
CLAIM_GRACE_SLOTS = 1.0  # ...or this many intervals, whichever is longer
LEASE_TTL = 300.0  # s: an in-flight lease nobody released stops counting after this
ACTIVITY_WINDOW = 60.0  # s: grants per tenant shown to operators cover this window
SITE_TTL = 3600.0  # s: an idle site's record (its back-off, its tags) is forgotten after this


@dataclass(frozen=True, slots=True)
class SiteAsk:
    """One request asking its site for a slot.

    interval: the platform's pace on the site before any back-off, seconds (0: none): the
        shared Crawl-delay / Request-rate and 1 / `max_rps`, the largest.
    gap: the tenant's own minimum spacing on the site (its pacing interval), so a request held
        by the site is never forwarded sooner after the tenant's previous one than its pacing.
    max_concurrency: requests in flight at the site at most (None: no cap).
    whole_seconds: a refused asker returns after ceil(wait) (its 429's Retry-After).
    force: granted whatever the budget says (monitor mode); the slot is still taken.
    """

    site: str
    tenant: str
    weight: float = 1.0
    interval: float = 0.0
    gap: float = 0.0
    max_concurrency: int | None = None
    whole_seconds: bool = False
    force: bool = False


@dataclass(frozen=True, slots=True)
class SiteGrant:
    """The answer to `SiteState.grant`.

    granted: the request may go now. lease: release it when the request ends (None without a
    concurrency cap). wait: if refused, seconds until this tenant's fair slot (an estimate
    under the current contention; never below the next free slot). cause: why refused —
    `share` (others' turn first), `slot` (the site's pace), `concurrency`, `paused` (a site's
    Retry-After or RateLimit), `gap` (the tenant's own pacing). interval and rate: the pace in
    force after back-off, for records and operators.
    """

    granted: bool
    wait: float
    cause: str
    interval: float
    rate: float = 1.0
    lease: str | None = None


@dataclass(frozen=True, slots=True)
class TenantShare:
    tenant: str
    weight: float
    grants: int  # slots in the last ACTIVITY_WINDOW seconds
    waiting: bool  # has a claim (was refused and is due back)


@dataclass(frozen=True, slots=True)
class SiteView:
    """A site's budget as operators see it."""

    site: str
    interval: float  # in force, after back-off and caps
    base_interval: float  # the configured pace (last asked)
    rate: float  # back-off factor in [RATE_FLOOR, 1]
    paused_for: float  # seconds the site is still paused
    capped_rps: float | None  # the site's own RateLimit cap, while it holds
    in_flight: int
    max_concurrency: int | None
    grants: int  # slots in the last ACTIVITY_WINDOW seconds, all tenants
    tenants: tuple[TenantShare, ...] = field(default=())


class SiteState(Protocol):
    """Where the site budgets live: `MemorySites` (one process) or `RedisSites` (replicas)."""

    async def grant(self, ask: SiteAsk, now: float) -> SiteGrant: ...

    async def release(self, site: str, lease: str) -> None:
        """The request holding `lease` ended (answered, failed, or never sent)."""
        ...

    async def slow_down(self, site: str, now: float, pause: float | None) -> float:
        """Back off the site: rate * RATE_DECREASE (at most once per interval) and, with
        `pause`, no slot before now + pause. Returns the rate."""
        ...

    async def speed_up(self, site: str, now: float) -> float:
        """A success: rate + RATE_INCREASE, at most 1. Returns the rate."""
        ...

    async def cap(self, site: str, now: float, max_rps: float | None, pause: float | None) -> None:
        """The site's own RateLimit answer: at most `max_rps` for the next ACTIVITY_WINDOW
        seconds, and no slot before now + `pause`."""
        ...

    async def view(self, site: str, now: float) -> SiteView | None: ...

    async def busy(self, now: float, limit: int) -> list[SiteView]:
        """The `limit` sites with the most slots granted in the last ACTIVITY_WINDOW seconds."""
        ...

    async def close(self) -> None: ...


def effective_interval(base: float, rate: float, cap_rps: float | None) -> float:
    """The pace in force: the base divided by the back-off rate (a site without a base pace
    backs off from BACKOFF_INTERVAL), and no faster than a site's own RateLimit cap."""
    iv = base
    if rate < 1.0:
        iv = max(base, BACKOFF_INTERVAL) / max(rate, RATE_FLOOR)
    if cap_rps is not None and cap_rps > 0:
        iv = max(iv, 1.0 / cap_rps)
    return iv


def claim_grace(interval: float) -> float:
    return max(CLAIM_GRACE, CLAIM_GRACE_SLOTS * interval)


def slots_ahead(start: float, ahead: list[tuple[float, float]]) -> int:
    """Slots the contenders `ahead` ((start tag, weight) each) take before a tenant whose start
    tag is `start`, while all keep asking: SFQ serves u's tags S_u, S_u + 1/w_u, ... below
    `start`, and at least one of each (ties go to the earlier claim)."""
    total = 0
    for s_u, w_u in ahead:
        total += max(1, math.ceil((start - s_u) * w_u - 1e-9))
    return total


Claim = tuple[float, float, float, float, str]  # (start tag, weight, due, since, name)


def fair_slot(free_at: float, start: float, interval: float, ahead: list[Claim]) -> float:
    """When a refused tenant whose start tag is `start` may expect its slot, the claims `ahead`
    of it staying as they are: from the next free slot, each claimant in the order it is due
    takes its `slots_ahead` slots, until one is due so late (at or after the slot in question
    plus an interval) that the tenant takes that slot first: the borrowing `grant` allows.
    Without that stop, a claimant held back by its own pacing (due far ahead) would push every
    other tenant one interval further per refusal and leave the site idle meanwhile. With all
    claimants due, this is ``free_at + slots_ahead(start, ahead) * interval``."""
    slot = free_at
    for s_u, w_u, due, _since, _name in sorted(ahead, key=lambda u: (u[2], u[0], u[3], u[4])):
        if due >= slot + interval:
            break
        slot += slots_ahead(start, [(s_u, w_u)]) * interval
    return slot


__all__ = [
    "ACTIVITY_WINDOW",
    "BACKOFF_INTERVAL",
    "CLAIM_GRACE",
    "GAP_TOLERANCE",
    "LEASE_TTL",
    "RATE_DECREASE",
    "RATE_FLOOR",
    "RATE_INCREASE",
    "SITE_TTL",
    "Claim",
    "SiteAsk",
    "SiteGrant",
    "SiteState",
    "SiteView",
    "TenantShare",
    "claim_grace",
    "effective_interval",
    "fair_slot",
    "slots_ahead",
]
