"""The platform as one polite crawler (SPEC decision `site-budget`): every tenant's request to a
site takes a slot of that site's one shared budget, handed out fairly (crawlguard.state.sites
has the algorithm and its fairness bound).

What the budget of a site is:

* `platform.crawl_delay: shared` — the site's pace is the largest Crawl-delay / Request-rate
  its robots.txt gives any tenant's product token (a named group of a registered token, and
  `*` while some registered token is not named), or `pacing.default_min_interval`: the
  platform, seen from the site, is one crawler at the pace the site asked for.
  `per-tenant` — robots.txt paces each tenant alone (pacing.py), as before this step existed.
* in both modes `platform.site_budget` (or the first matching `platform.site_overrides`)
  caps the platform's rate and concurrency on the site;
* in `shared` mode the site backs off as one (`observe`): a 429/503 to any tenant, sustained
  5xx, or a median response time that doubles, slow the site for every tenant; successes
  speed it up again; a site's RateLimit / RateLimit-Policy answer caps it. In `per-tenant`
  mode each tenant backs off alone (pacing.py), and a site without `site_budget` caps is not
  asked at all: exactly the behaviour before this step.

Per-tenant pacing still applies first: a tenant faster than its own Crawl-delay is refused
(or held) as before, and a request the site holds keeps the tenant's own spacing (`gap`).
/robots.txt requests (their own lane) and tenants in mode `off` are outside the budget.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crawlguard.policy.decisions import Decision, Kind
from crawlguard.policy.http_dates import parse_retry_after
from crawlguard.policy.pacing import interval as pacing_interval
from crawlguard.policy.pacing import retry_after_seconds
from crawlguard.policy.robots import RobotsRules
from crawlguard.policy.sites import SiteLimits, site_key, site_limits
from crawlguard.policy.ua import TokenIndex
from crawlguard.state.sites import SiteAsk, SiteGrant, SiteState, SiteView

if TYPE_CHECKING:
    from crawlguard.config import PlatformSection

Clock = Callable[[], float]

HEALTH_WINDOW = 20  # responses per site a median response time is taken over
ERROR_WINDOW = 10  # last responses looked at for sustained 5xx...
ERROR_THRESHOLD = 5  # ...of which this many 5xx (other than 503) slow the site
SLOWDOWN_FACTOR = 2.0  # a window's median response time this many times the baseline...
SLOWDOWN_MIN = 0.25  # ...and this many seconds above it: a fast site's jitter, or the proxy's
# own loop lag under load (the time is measured from the forward), is not a site's strain
MAX_SITES_WATCHED = 10_000


@dataclass(frozen=True, slots=True)
class SiteTurn:
    """A forwarded request's place in its site's budget: `lease` once granted (released when
    the request ends), or the ask to repeat (`pending`) while the request is held for it."""

    ask: SiteAsk
    granted: bool = False
    lease: str | None = None
    refusal: SiteGrant | None = None  # the answer that made it wait (None: not asked yet)
    source: str = ""  # what sets the site's pace (for a refusal's rule)

    @property
    def pending(self) -> bool:
        return not self.granted

    @property
    def wait(self) -> float:
        """Seconds until its fair slot, as the site last said (0: ask now)."""
        return self.refusal.wait if self.refusal is not None else 0.0


class SiteHealth:
    """One process's view of each site's answers: sustained 5xx and a rising median response
    time are reasons to slow the site. Bounded (least recently seen sites forgotten)."""

    def __init__(self) -> None:
        self._sites: dict[str, _Health] = {}

    def observe(self, site: str, status: int, seconds: float | None) -> bool:
        """Record one answer; True when it is time to slow the site down."""
        health = self._sites.pop(site, None) or _Health()
        self._sites[site] = health
        if len(self._sites) > MAX_SITES_WATCHED:
            del self._sites[next(iter(self._sites))]
        return health.observe(status, seconds)


class _Health:
    __slots__ = ("baseline", "errors", "latencies")

    def __init__(self) -> None:
        self.errors: deque[bool] = deque(maxlen=ERROR_WINDOW)
        self.latencies: list[float] = []
        self.baseline: float | None = None

    def observe(self, status: int, seconds: float | None) -> bool:
        slow = False
        self.errors.append(status >= 500 and status != 503)
        if sum(self.errors) >= ERROR_THRESHOLD:
            self.errors.clear()  # one step per sustained run, not one per further error
            slow = True
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            self.latencies.append(seconds)
            if len(self.latencies) >= HEALTH_WINDOW:
                median = sorted(self.latencies)[len(self.latencies) // 2]
                self.latencies.clear()
                if self.baseline is None:
                    self.baseline = median
                elif (
                    median >= SLOWDOWN_FACTOR * self.baseline
                    and median - self.baseline >= SLOWDOWN_MIN
                ):
                    slow = True  # the baseline stays: the site must come back to it
                else:
                    self.baseline = 0.8 * self.baseline + 0.2 * median
        return slow


class SiteBudget:
    """Asks the `SiteState` for a slot per forwarded request, and feeds the sites' answers
    back. `clock` drives the state (a shared state may use its own server clock)."""

    def __init__(
        self,
        state: SiteState,
        platform: PlatformSection,
        *,
        default_min_interval: float = 0.0,
        clock: Clock = time.monotonic,
        wallclock: Clock = time.time,
    ) -> None:
        self.state = state
        self.platform = platform
        self.default_min_interval = default_min_interval
        self._clock = clock
        self._wallclock = wallclock
        self.health = SiteHealth()
        # per robots.txt (while the cache holds it): the token index it was read against,
        # and the shared interval with its source
        self._shared: weakref.WeakKeyDictionary[RobotsRules, tuple[int, float, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._slowed: dict[str, None] = {}  # sites this process saw backed off (speed_up calls)

    def configure(self, platform: PlatformSection, *, default_min_interval: float) -> None:
        """A reload: new keys apply to the next ask."""
        self.platform = platform
        self.default_min_interval = default_min_interval
        self._shared = weakref.WeakKeyDictionary()

    def site_of(self, host: str) -> str:
        return site_key(host, self.platform.site_key)

    def limits(self, site: str) -> SiteLimits:
        return site_limits(site, self.platform)

    @property
    def shared(self) -> bool:
        return self.platform.crawl_delay == "shared"

    def shared_interval(self, rules: RobotsRules | None, index: TokenIndex) -> tuple[float, str]:
        """The site's pace for the whole platform: the largest Crawl-delay / Request-rate
        interval of the groups that apply to any registered product token (named groups of
        registered tokens; `*` while some registered token is not named), at least
        `pacing.default_min_interval`."""
        if rules is None:
            default = self.default_min_interval
            return default, f"pacing.default_min_interval: {default:g}"
        memo = self._shared.get(rules)
        if memo is not None and memo[0] == id(index):
            return memo[1], memo[2]
        best, source, _ = shared_pace(rules, index, self.default_min_interval)
        self._shared[rules] = (id(index), best, source)
        return best, source

    def site_interval(
        self, site: str, rules: RobotsRules | None, index: TokenIndex
    ) -> tuple[float, str, SiteLimits]:
        """The platform's pace on `site` before back-off, what sets it, and its limits."""
        limits = self.limits(site)
        seconds, source = 0.0, "no shared pace (platform.crawl_delay: per-tenant)"
        if self.shared:
            seconds, source = self.shared_interval(rules, index)
        if limits.max_rps is not None and 1.0 / limits.max_rps > seconds:
            seconds, source = 1.0 / limits.max_rps, f"site budget max_rps {limits.max_rps:g}"
        return seconds, source, limits

    async def ask(self, ask: SiteAsk) -> SiteGrant:
        return await self.state.grant(ask, self._clock())

    async def wait_turn(self, turn: SiteTurn, deadline: float) -> SiteGrant:
        """Ask again at each fair-slot estimate until granted, or answer the last refusal as
        soon as its estimate would pass `deadline` (the clock's time): the held request's
        poll. Cancel it to give up."""
        grant = turn.refusal
        while True:
            if grant is not None:
                if self._clock() + grant.wait > deadline:
                    return grant
                await asyncio.sleep(grant.wait)
            grant = await self.state.grant(turn.ask, self._clock())
            if grant.granted:
                return grant

    def clock(self) -> float:
        return self._clock()

    async def release(self, site: str, lease: str | None) -> None:
        if lease is not None:
            await self.state.release(site, lease)

    async def observe(
        self,
        site: str,
        status: int,
        retry_after: str | None,
        seconds: float | None,
        rate_cap: tuple[float | None, float | None] = (None, None),
    ) -> bool:
        """A site's answer to any tenant. Returns True when the site was slowed down."""
        now = self._clock()
        max_rps, pause = rate_cap
        if max_rps is not None or pause is not None:
            await self.state.cap(site, now, max_rps, pause)
        slow = self.health.observe(site, status, seconds)
        throttled = status in (429, 503)
        if throttled or slow:
            wait = parse_retry_after(retry_after, self._wallclock()) if throttled else None
            await self.state.slow_down(site, now, wait)
            self._mark_slowed(site)
            return True
        if 200 <= status < 400 and site in self._slowed:  # no state call while not slowed
            rate = await self.state.speed_up(site, now)
            if rate >= 1.0:
                self._slowed.pop(site, None)
        return False

    def note_rate(self, site: str, rate: float) -> None:
        """A grant's answer told the site's back-off rate: below 1, successes must raise it
        (also when another replica slowed it)."""
        if rate < 1.0:
            self._mark_slowed(site)

    def _mark_slowed(self, site: str) -> None:
        self._slowed.pop(site, None)
        self._slowed[site] = None
        if len(self._slowed) > MAX_SITES_WATCHED:
            del self._slowed[next(iter(self._slowed))]

    async def views(self, limit: int) -> list[SiteView]:
        return await self.state.busy(self._clock(), limit)

    async def view(self, site: str) -> SiteView | None:
        return await self.state.view(site, self._clock())


def shared_pace(
    rules: RobotsRules, index: TokenIndex, default_min_interval: float
) -> tuple[float, str, tuple[str, ...]]:
    """The platform's pace from one robots.txt: the largest Crawl-delay / Request-rate interval
    of the groups that apply to any registered product token (named groups of registered
    tokens; `*` while some registered token is not named), at least `default_min_interval`;
    with what sets it and the groups read (explain shows them)."""
    best, source = default_min_interval, f"pacing.default_min_interval: {default_min_interval:g}"
    groups: list[str] = []
    star = None
    for name, (delay, rate) in rules.paces().items():
        if name == "*":
            star = (delay, rate)
            continue
        if index.owner(name) is None:
            continue
        groups.append(name)
        seconds = pacing_interval(delay, rate, 0.0)
        if seconds > best:
            best, source = seconds, _source(name, delay, rate)
    if star is not None and len(groups) < len(index.tokens):  # some token falls to `*`
        groups.append("*")
        seconds = pacing_interval(star[0], star[1], 0.0)
        if seconds > best:
            best, source = seconds, _source("*", star[0], star[1])
    return best, source, tuple(groups)


def _source(name: str, delay: float | None, rate: tuple[int, float] | None) -> str:
    group = "User-agent: *" if name == "*" else f"User-agent: {name}"
    if rate is not None and (delay is None or rate[1] / rate[0] > delay):
        return f"Request-rate: {rate[0]}/{rate[1]:g}s ({group})"
    return f"Crawl-delay: {delay:g} ({group})"


def budget_refusal(
    site: str, grant: SiteGrant, source: str, tenant: str, robots_sha256: str | None
) -> Decision:
    """The `site-budget` decision for a request the site's fair share has no slot for now."""
    why = {
        "share": "other tenants' fair turns come first",
        "slot": "the site's last slot was just taken",
        "concurrency": "the platform already has its maximum of requests in flight there",
        "paused": "the site asked the platform to wait (Retry-After or RateLimit)",
        "gap": "your own pacing on this site comes first",
    }.get(grant.cause, grant.cause)
    backoff = "" if grant.rate >= 1.0 else f"; slowed to {grant.rate:.0%}: the site pushed back"
    return Decision(
        Kind.SITE_BUDGET,
        rule=f"platform budget for {site}: one request every {grant.interval:g} s "
        f"({source}{backoff})",
        reason=f"the platform's requests to {site} share one polite pace among its tenants; "
        f"{why}. Tenant {tenant}'s next fair slot is in about {grant.wait:.1f} s.",
        retry_after=retry_after_seconds(grant.wait),
        crawl_delay=grant.interval,
        robots_sha256=robots_sha256,
    )


__all__ = [
    "SiteBudget",
    "SiteHealth",
    "SiteTurn",
    "budget_refusal",
    "shared_pace",
]
