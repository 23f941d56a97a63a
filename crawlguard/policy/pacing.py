"""Crawl-delay pacing and origin back-off (SPEC decisions `crawl-delay`, `origin-backoff`).

Pure policy: no I/O and no mitmproxy. State lives behind `crawlguard.state.PacingState` and the
clocks are injected, so the same arithmetic runs against memory or a shared backend and tests
never sleep. The caller (the addon) does the holding: it awaits `PacingOutcome.wait` seconds
before forwarding, and calls `Pacer.cancel` if the client goes away meanwhile.

Numbers:
* interval = max(Crawl-delay, Request-rate m/n, pacing.default_min_interval, back-off interval);
  the back-off interval is the exponential window of the origin's current back-off level, so a
  throttling origin is also approached more slowly after its window ends, until successes
  decay the level.
* back-off without Retry-After: 1 s, doubling per consecutive 429/503, capped at 1 h;
  an origin's Retry-After is honoured up to 24 h. Each 2xx/3xx lowers the level by one.
* Retry-After sent to clients: whole seconds, rounded up, at least 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from crawlguard.policy.decisions import Decision, Kind
from crawlguard.policy.http_dates import parse_retry_after
from crawlguard.state import PacingState, backoff_window

BACKOFF_BASE = 1.0
BACKOFF_CAP = 3600.0
MAX_RETRY_AFTER = 86400.0  # an origin's Retry-After beyond this is treated as this
THROTTLE_STATUSES = frozenset({429, 503})
MAX_QUIET_KEYS = 100_000  # keys a Pacer remembers as having no back-off (see Pacer._quiet)

Clock = Callable[[], float]


def interval(
    crawl_delay: float | None,
    request_rate: tuple[int, float] | None,
    default_min_interval: float,
    backoff: float = 0.0,
) -> float:
    """Seconds between two requests of one tenant to one origin: the strictest source wins."""
    candidates = [default_min_interval, backoff]
    if crawl_delay is not None and math.isfinite(crawl_delay):
        candidates.append(crawl_delay)
    if request_rate is not None:
        requests, seconds = request_rate
        if requests > 0 and math.isfinite(seconds):
            candidates.append(seconds / requests)
    return max(0.0, *candidates)


def interval_source(
    crawl_delay: float | None,
    request_rate: tuple[int, float] | None,
    default_min_interval: float,
    seconds: float,
) -> str:
    """What sets an interval of `seconds`: the robots line or the operator's setting (the
    largest source wins, as in `interval`); for records and `crawlguard explain` alike."""
    if crawl_delay is not None and crawl_delay >= seconds:
        return f"Crawl-delay: {crawl_delay:g}"
    if request_rate is not None:
        n, m = request_rate
        if n > 0 and m / n >= seconds:
            return f"Request-rate: {n}/{m:g}s"
    if default_min_interval >= seconds:
        return f"pacing.default_min_interval: {default_min_interval:g}"
    return "origin back-off interval"


def retry_after_seconds(wait: float) -> int:
    """Whole seconds for a Retry-After header: rounded up, at least 1."""
    # The epsilon keeps float noise (2.0000000001) from adding a whole second.
    return max(1, math.ceil(wait - 1e-9))


def pacing_key(tenant: str, site: str) -> str:
    """State key per (tenant, site): `site` is what one slot covers (`pacing.scope`: an origin,
    a host, a dialled address). A tenant id contains no space, so keys cannot collide."""
    return f"{tenant} {site}"


@dataclass(frozen=True, slots=True)
class PacingOutcome:
    """What pacing decided for one request.

    kind: ALLOWED, CRAWL_DELAY or ORIGIN_BACKOFF — in monitor mode what *would* have happened.
    forward: True → forward after `wait` seconds; False → answer 429 with `retry_after`.
    wait: seconds to hold before forwarding (> 0 only for a granted `delay`-paced request).
    retry_after: for a non-ALLOWED kind, whole seconds (≥ 1) until the slot or the end of the
        back-off; it is the header value when refused, informative otherwise. None if ALLOWED.
    interval: the interval in force (for records: `crawl_delay`).
    key, slot: the reservation, so `Pacer.cancel` can free it (a held request whose client
        left, or one a later step refuses); slot is None when nothing was reserved.
    also: the further keys the slot was taken on (`pacing.scope: address`).
    """

    kind: Kind
    forward: bool
    wait: float
    retry_after: int | None
    interval: float
    key: str
    slot: float | None = None
    also: tuple[str, ...] = ()

    @property
    def held(self) -> bool:
        return self.forward and self.wait > 0


def pacing_rule(decision: Decision, outcome: PacingOutcome, default_min_interval: float) -> str:
    """The rule a paced request's record names."""
    if outcome.kind is Kind.ORIGIN_BACKOFF:
        return "origin answered 429/503 (Retry-After or exponential back-off)"
    return interval_source(
        decision.crawl_delay, decision.request_rate, default_min_interval, outcome.interval
    )


class Pacer:
    """Per-(tenant, origin) pacing over a `PacingState`.

    `clock` drives the slots; with a backend shared by several processes use a clock they
    agree on (or let the backend use its own). `wallclock` only converts HTTP-date Retry-After.
    """

    def __init__(
        self,
        state: PacingState,
        *,
        default_min_interval: float = 0.0,
        max_hold: float = 30.0,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        clock: Clock = time.monotonic,
        wallclock: Clock = time.time,
    ) -> None:
        self.state = state
        self.default_min_interval = default_min_interval
        self.max_hold = max_hold
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._clock = clock
        self._wallclock = wallclock
        # Keys whose last back-off check in this process found none: a success there has
        # nothing to decay, so it costs no state round trip (half of a shared state's
        # per-request work). A back-off another process raised meanwhile is decayed once
        # this process's next check sees it: until then it only stays longer (never shorter).
        self._quiet: dict[str, None] = {}

    async def pace(
        self,
        tenant: str,
        origin: str,
        *,
        also: tuple[str, ...] = (),
        crawl_delay: float | None,
        request_rate: tuple[int, float] | None,
        hold: bool,
        enforce: bool,
    ) -> PacingOutcome:
        """Decide one request; a forwarded one consumes its slot, a refused one does not.

        hold: the tenant's pacing is `delay` (hold up to `max_hold`) rather than `reject`.
        enforce: False in monitor mode — always forward (consuming the slot now, since the
        request does go now), but report the kind that enforcement would have chosen.
        `origin` names the slot (and the back-off) the request is paced on; `also` further
        sites whose slot it takes at the same time (the strictest of them decides).
        """
        key = pacing_key(tenant, origin)
        extra = tuple(pacing_key(tenant, site) for site in also)
        now = self._clock()
        backoff = await self.state.get_backoff(key, now)
        if backoff is None:
            self._mark_quiet(key)
        else:
            self._quiet.pop(key, None)
        level = backoff.level if backoff else 0
        iv = interval(
            crawl_delay,
            request_rate,
            self.default_min_interval,
            backoff_window(level, self.backoff_base, self.backoff_cap),
        )

        if backoff is not None and backoff.remaining > 0:
            retry = retry_after_seconds(backoff.remaining)
            if enforce:
                return PacingOutcome(Kind.ORIGIN_BACKOFF, False, 0.0, retry, iv, key)
            if iv > 0:
                await self.state.reserve(key, iv, now, 0.0, force=True, also=extra)
            return PacingOutcome(Kind.ORIGIN_BACKOFF, True, 0.0, retry, iv, key)

        if iv <= 0:
            return PacingOutcome(Kind.ALLOWED, True, 0.0, None, iv, key)

        if not enforce:
            res = await self.state.reserve(key, iv, now, 0.0, force=True, also=extra)
            if res.wait > 0:
                retry = retry_after_seconds(res.wait)
                return PacingOutcome(Kind.CRAWL_DELAY, True, 0.0, retry, iv, key)
            return PacingOutcome(Kind.ALLOWED, True, 0.0, None, iv, key)

        res = await self.state.reserve(key, iv, now, self.max_hold if hold else 0.0, also=extra)
        if not res.granted:
            retry = retry_after_seconds(res.wait)
            return PacingOutcome(Kind.CRAWL_DELAY, False, 0.0, retry, iv, key)
        if res.wait > 0:
            retry = retry_after_seconds(res.wait)
            return PacingOutcome(
                Kind.CRAWL_DELAY, True, res.wait, retry, iv, key, res.slot, also=extra
            )
        # the slot, too, so a request a later step refuses (the site budget) gives it back
        return PacingOutcome(Kind.ALLOWED, True, 0.0, None, iv, key, res.slot, also=extra)

    async def cancel(self, outcome: PacingOutcome) -> None:
        """A held client disconnected before its slot: give the slot back if nobody queued after."""
        if outcome.slot is not None:
            await self.state.release(outcome.key, outcome.slot, outcome.interval, also=outcome.also)

    async def observe_response(
        self, tenant: str, origin: str, status: int, retry_after: str | None
    ) -> None:
        """Feed an origin's answer back: 429/503 start or extend a back-off, 2xx/3xx decay it."""
        key = pacing_key(tenant, origin)
        now = self._clock()
        if status in THROTTLE_STATUSES:
            self._quiet.pop(key, None)
            seconds = parse_retry_after(retry_after, self._wallclock())
            if seconds is not None:
                seconds = min(seconds, MAX_RETRY_AFTER)
            await self.state.raise_backoff(key, now, seconds, self.backoff_base, self.backoff_cap)
        elif 200 <= status < 400 and key not in self._quiet:
            await self.state.decay_backoff(key, now)

    def _mark_quiet(self, key: str) -> None:
        quiet = self._quiet
        if key not in quiet:
            if len(quiet) >= MAX_QUIET_KEYS:  # bounded: forgetting one costs one round trip
                del quiet[next(iter(quiet))]
            quiet[key] = None


class HeldPool:
    """`pacing.max_held` requests held by `delay` pacing at once, shared fairly by tenants.

    A tenant is *active* while it holds a request or asked for a hold in the last `window`
    seconds (`pacing.max_hold`: no hold outlives it). Each active tenant is guaranteed
    ``share = max_held // active`` holds; beyond its share it borrows idle capacity, but never
    the part of the pool the other active tenants' unused shares need. So a tenant filling the
    pool cannot make another one's request wait in a 429 it did not earn.

    `take` answers None (held), `Kind.CRAWL_DELAY` (the tenant is at or over its share: it
    asks for more than its fair part, a violation of its pacing as before) or
    `Kind.PROXY_BUSY` (the pool is full with others' borrowed holds, typically just after
    this tenant became active: not this tenant's making). Pure: the clock is injected.
    """

    def __init__(self, limit: int, window: float, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self.held: dict[str, int] = {}  # tenant -> requests it holds now (> 0 only)
        self._asked: dict[str, float] = {}  # tenant -> last time it asked for a hold
        self.total = 0

    def _active(self, now: float) -> list[str]:
        cutoff = now - self.window
        stale = [t for t, at in self._asked.items() if at < cutoff and t not in self.held]
        for tenant in stale:
            del self._asked[tenant]
        return list(self._asked)

    def take(self, tenant: str) -> Kind | None:
        now = self._clock()
        self._asked[tenant] = now
        active = self._active(now)
        share = self.limit // max(1, len(active))
        mine = self.held.get(tenant, 0)
        reserved = sum(max(0, share - self.held.get(t, 0)) for t in active if t != tenant)
        # within its share a tenant may take any free place; beyond it, none another's needs
        free = self.total if mine < share else self.total + reserved
        if free < self.limit:
            self.held[tenant] = mine + 1
            self.total += 1
            return None
        return Kind.PROXY_BUSY if mine < share else Kind.CRAWL_DELAY

    def give_back(self, tenant: str) -> None:
        mine = self.held.get(tenant, 0)
        if mine <= 1:
            self.held.pop(tenant, None)
        else:
            self.held[tenant] = mine - 1
        self.total = max(0, self.total - (mine > 0))
        self._asked[tenant] = self._clock()  # stays active while its holds end
