"""The SiteState contract, run against MemorySites and RedisSites (real Redis, one prefix per test).

Both run on an injected fake clock (RedisSites with ``server_clock=False`` takes the caller's
``now``), so their numbers are the same and exact up to Redis's microseconds; one test runs the
fairness simulation on both and compares them grant by grant. A few tests then use the server's
clock (real time, no fixed sleeps) and two RedisSites on one prefix (two replicas); the last
ones are ``state.on_error`` (FailoverSites) against a Redis that is not there and a fake one.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from harness import free_port
from redisutil import redis_base, redis_url  # noqa: F401  (fixtures)

from crawlguard.state import StateBackendError, StateUnavailable, open_state
from crawlguard.state.failover import FailoverState
from crawlguard.state.redis import RedisState
from crawlguard.state.sites import (
    ACTIVITY_WINDOW,
    GAP_TOLERANCE,
    LEASE_TTL,
    RATE_FLOOR,
    RATE_INCREASE,
    SITE_TTL,
    SiteAsk,
    SiteGrant,
    SiteState,
    SiteView,
)
from crawlguard.state.sites_failover import FALLBACK_LEASE, FailoverSites
from crawlguard.state.sites_memory import CONCURRENCY_POLL, SWEEP_EVERY, MemorySites
from crawlguard.state.sites_open import open_sites
from crawlguard.state.sites_redis import ACTIVITY_BUCKET, RedisSites

T0 = 1000.0  # the fake clock's start: a whole ACTIVITY_BUCKET, so buckets line up with seconds
US = 1e-6


@dataclass
class Backend:
    name: str
    state: SiteState
    client: aioredis.Redis | None = None  # Redis: to look at the keys

    async def fields(self, site: str) -> set[str]:
        """The site hash's field names (Redis only)."""
        assert isinstance(self.state, RedisSites) and self.client is not None
        return {k.decode() for k in await self.client.hkeys(self.state.site_key(site))}


@pytest.fixture
def site_url(request: pytest.FixtureRequest) -> str:
    """redisutil's `redis_url` (this test's own prefix, deleted afterwards)."""
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend("memory", MemorySites())
        return
    url = request.getfixturevalue("redis_url")
    state = RedisSites.from_url(url, server_clock=False)
    try:
        yield Backend("redis", state, state.client)
    finally:
        await state.close()


def ask(tenant: str = "a", site: str = "s", **kw: Any) -> SiteAsk:
    return SiteAsk(site, tenant, **kw)


def approx(value: float) -> Any:
    return pytest.approx(value, abs=2 * US)


# -- the interface -------------------------------------------------------------------------


@pytest.mark.parametrize("impl", [MemorySites, RedisSites, FailoverSites])
def test_every_backend_implements_the_protocol_with_its_signatures(impl: type) -> None:
    methods = [
        n for n, v in vars(SiteState).items() if inspect.isfunction(v) and not n.startswith("_")
    ]
    assert {"grant", "release", "slow_down", "speed_up", "cap", "view", "busy", "close"} <= set(
        methods
    )
    for name in methods:
        method = getattr(impl, name)
        assert inspect.iscoroutinefunction(method), name
        assert inspect.signature(method) == inspect.signature(getattr(SiteState, name)), name


# -- grants and refusals -------------------------------------------------------------------


async def test_first_grant_then_slot_refusal_then_granted_after_the_interval(
    backend: Backend,
) -> None:
    st = backend.state
    first = await st.grant(ask(interval=2.0), T0)
    assert first == SiteGrant(True, 0.0, "granted", 2.0, 1.0, None)
    refused = await st.grant(ask("b", interval=2.0), T0 + 0.5)
    assert (refused.granted, refused.cause, refused.lease) == (False, "slot", None)
    assert refused.wait == approx(1.5) and refused.interval == approx(2.0)
    assert (await st.grant(ask("b", interval=2.0), T0 + 2.0)).granted


async def test_share_a_due_claimant_ahead_goes_first(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask("a", interval=1.0), T0)).granted
    b = await st.grant(ask("b", interval=1.0), T0 + 0.1)
    assert (b.cause, b.wait) == ("slot", approx(0.9))
    # a is back first at b's due time: b's start tag is smaller, its claim is due
    a = await st.grant(ask("a", interval=1.0), T0 + 1.0)
    assert (a.granted, a.cause, a.wait) == (False, "share", approx(1.0))
    assert (await st.grant(ask("b", interval=1.0), T0 + 1.0)).granted
    assert (await st.grant(ask("a", interval=1.0), T0 + 2.0)).granted


async def test_concurrency_cap_leases_and_release(backend: Backend) -> None:
    st = backend.state
    g1 = await st.grant(ask(max_concurrency=2), T0)
    g2 = await st.grant(ask(max_concurrency=2), T0)
    assert g1.granted and g2.granted and g1.lease and g2.lease and g1.lease != g2.lease
    full = await st.grant(ask(max_concurrency=2), T0)
    assert (full.granted, full.cause, full.wait) == (False, "concurrency", CONCURRENCY_POLL)
    view = await st.view("s", T0)
    assert view is not None and (view.in_flight, view.max_concurrency) == (2, 2)
    await st.release("s", g1.lease)
    await st.release("s", g1.lease)  # twice: harmless
    await st.release("s", "no-such-lease")
    await st.release("no-such-site", "1")
    g3 = await st.grant(ask(max_concurrency=2), T0 + 0.25)
    assert g3.granted and g3.lease not in (g1.lease, g2.lease)
    assert not (await st.grant(ask(max_concurrency=2), T0 + 0.25)).granted
    # without a cap: no lease
    assert (await st.grant(ask(site="other"), T0)).lease is None


async def test_leases_nobody_released_stop_counting_after_lease_ttl(backend: Backend) -> None:
    st = backend.state
    for _ in range(2):
        assert (await st.grant(ask(max_concurrency=2), T0)).granted
    assert not (await st.grant(ask(max_concurrency=2), T0 + LEASE_TTL - 1)).granted
    view = await st.view("s", T0 + LEASE_TTL)
    assert view is not None and view.in_flight == 0
    assert (await st.grant(ask(max_concurrency=2), T0 + LEASE_TTL)).granted


async def test_gap_the_tenants_own_pacing(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask(interval=1.0, gap=5.0), T0)).granted
    g = await st.grant(ask(interval=1.0, gap=5.0), T0 + 2.0)
    assert (g.granted, g.cause, g.wait) == (False, "gap", approx(3.0 - GAP_TOLERANCE))
    assert (await st.grant(ask("b", interval=1.0), T0 + 2.0)).granted  # others are not held
    assert (await st.grant(ask(interval=1.0, gap=5.0), T0 + 5.0)).granted


async def test_force_is_granted_and_still_takes_the_slot(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask(interval=10.0), T0)).granted
    forced = await st.grant(ask("b", interval=10.0, force=True, max_concurrency=1), T0 + 1.0)
    assert forced.granted and forced.lease is not None  # the cap is counted, not applied
    g = await st.grant(ask(interval=10.0), T0 + 10.5)
    assert (g.cause, g.wait) == ("slot", approx(0.5))  # paced from the forced one


async def test_claim_expires_when_its_claimant_does_not_return(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask("a", interval=1.0), T0)).granted
    assert not (await st.grant(ask("b", interval=1.0), T0 + 0.1)).granted  # due at T0 + 1
    # b never comes back: its place is kept for CLAIM_GRACE (1 s) after its due time
    g = await st.grant(ask("a", interval=1.0), T0 + 1.5)
    assert (g.granted, g.cause) == (False, "share")
    view = await st.view("s", T0 + 1.5)
    assert view is not None and [(t.tenant, t.grants, t.waiting) for t in view.tenants] == [
        ("a", 1, True),  # refused just now
        ("b", 0, True),
    ]
    assert (await st.grant(ask("a", interval=1.0), T0 + 2.0)).granted


async def test_borrowing_a_slot_before_a_claimant_that_is_due_later(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask("a", interval=0.25), T0)).granted
    b = await st.grant(ask("b", interval=0.25, whole_seconds=True), T0 + 0.1)
    assert (b.cause, b.wait) == ("slot", approx(0.15))  # due at T0 + 1.1 (whole seconds)
    # b is ahead but due later than the next slot after these: a borrows them
    for t in (0.25, 0.5, 0.75):
        assert (await st.grant(ask("a", interval=0.25), T0 + t)).granted, t
    a = await st.grant(ask("a", interval=0.25), T0 + 1.0)
    assert (a.granted, a.cause) == (False, "share")  # b would not find T0 + 1.1 free
    assert (await st.grant(ask("b", interval=0.25, whole_seconds=True), T0 + 1.1)).granted


async def test_a_tenant_held_by_its_own_gap_does_not_idle_the_site(backend: Backend) -> None:
    """a's claim (due when its own pacing allows) is ahead of b but far off: b is told the
    next slot, not one interval more per refusal."""
    st = backend.state
    assert (await st.grant(ask("a", interval=1.0, gap=10.0), T0)).granted
    assert not (await st.grant(ask("a", interval=1.0, gap=10.0), T0 + 0.05)).granted
    got = []
    now = T0 + 0.05
    while now < T0 + 9.5:
        g = await st.grant(ask("b", interval=1.0), now)
        if g.granted:
            got.append(round(now - T0, 3))
            now += 0.05
        else:
            now += g.wait
    assert got == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]


async def test_whole_seconds_the_claim_is_due_at_a_whole_second(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask("a", interval=1.0), T0)).granted
    b = await st.grant(ask("b", interval=1.0, whole_seconds=True), T0 + 0.7)
    assert b.wait == approx(0.3)  # the estimate; the claim is due at T0 + 1.7
    g = await st.grant(ask("a", interval=1.0), T0 + 1.0)
    assert (g.granted, g.cause) == (False, "share")
    assert (await st.grant(ask("b", interval=1.0, whole_seconds=True), T0 + 1.7)).granted


# -- back-off ------------------------------------------------------------------------------


async def test_slow_down_once_per_interval_to_the_floor_then_pause(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask(interval=1.0), T0)).granted
    assert await st.slow_down("s", T0 + 0.5, None) == 0.5
    assert await st.slow_down("s", T0 + 0.6, None) == 0.5  # in flight already: not compounded
    g = await st.grant(ask("b", interval=1.0), T0 + 1.0)
    # each answer pushes the next slot an interval (in force) past it: T0 + 0.6 + 2
    assert (g.cause, g.wait, g.interval, g.rate) == ("slot", approx(1.6), approx(2.0), 0.5)
    t = T0 + 2.5
    for expected, iv in [(0.25, 4.0), (0.125, 8.0), (RATE_FLOOR, 16.0), (RATE_FLOOR, 16.0)]:
        assert await st.slow_down("s", t, None) == expected
        t += iv
    t -= 16.0
    assert await st.slow_down("s", t, 30.0) == RATE_FLOOR  # too soon to divide; pauses
    g = await st.grant(ask("c", interval=1.0), t)
    assert (g.cause, g.wait, g.interval) == ("paused", approx(30.0), approx(16.0))
    view = await st.view("s", t)
    assert view is not None and view.paused_for == approx(30.0) and view.rate == RATE_FLOOR
    for i in range(1, 20):
        rate = await st.speed_up("s", t)
        assert rate == min(1.0, RATE_FLOOR + i * RATE_INCREASE)
    assert rate == 1.0


async def test_slow_down_without_a_pace_backs_off_from_backoff_interval(
    backend: Backend,
) -> None:
    st = backend.state
    assert await st.slow_down("s", T0, None) == 0.5
    g = await st.grant(ask(), T0)
    assert (g.granted, g.cause, g.wait, g.interval) == (False, "slot", approx(0.5), approx(0.5))


async def test_speed_up_of_an_unknown_site_creates_nothing(backend: Backend) -> None:
    assert await backend.state.speed_up("nowhere", T0) == 1.0
    assert await backend.state.view("nowhere", T0) is None


async def test_cap_max_rps_for_the_activity_window_and_pause(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask(interval=0.5), T0)).granted
    await st.cap("s", T0, 0.25, None)  # the next slot counts from this answer: T0 + 4
    g = await st.grant(ask(interval=0.5), T0 + 0.5)
    assert (g.cause, g.wait, g.interval) == ("slot", approx(3.5), approx(4.0))
    assert (await st.grant(ask(interval=0.5), T0 + 4.0)).granted
    g = await st.grant(ask(interval=0.5), T0 + 1.0 + 4.0)
    assert (g.cause, g.wait, g.interval) == ("slot", approx(3.0), approx(4.0))
    view = await st.view("s", T0 + 1.0)
    assert view is not None and view.capped_rps == 0.25 and view.interval == approx(4.0)
    later = T0 + ACTIVITY_WINDOW + 0.001
    view = await st.view("s", later)
    assert view is not None and view.capped_rps is None and view.interval == approx(0.5)
    await st.cap("s", later, None, 10.0)
    g = await st.grant(ask(interval=0.5), later)
    assert (g.cause, g.wait) == ("paused", approx(10.0))
    await st.cap("s", later, 0.0, 0.0)  # nothing to apply
    assert (await st.grant(ask(interval=0.5), later + 10.0)).granted


# -- operators -----------------------------------------------------------------------------


async def test_view_and_busy_top_sites_by_grants_with_shares(backend: Backend) -> None:
    st = backend.state
    for t in range(3):
        assert (await st.grant(ask("a", "x", weight=2.0), T0 + t)).granted
    assert (await st.grant(ask("b", "x"), T0 + 3)).granted
    assert (await st.grant(ask("a", "y", interval=10.0), T0)).granted
    assert not (await st.grant(ask("c", "y", interval=10.0), T0 + 1)).granted
    assert (await st.grant(ask("a", "z"), T0 + 2)).granted
    await st.slow_down("w", T0 + 2, None)
    view = await st.view("x", T0 + 5)
    assert view is not None
    assert (view.grants, view.interval, view.base_interval, view.in_flight) == (4, 0.0, 0.0, 0)
    assert [(s.tenant, s.weight, s.grants, s.waiting) for s in view.tenants] == [
        ("a", 2.0, 3, False),
        ("b", 1.0, 1, False),
    ]
    view = await st.view("y", T0 + 5)
    assert view is not None and view.base_interval == 10.0
    assert [(s.tenant, s.grants, s.waiting) for s in view.tenants] == [
        ("a", 1, False),
        ("c", 0, True),
    ]
    top = await st.busy(T0 + 5, 2)
    assert [(v.site, v.grants) for v in top] == [("x", 4), ("y", 1)]
    every = await st.busy(T0 + 5, 10)
    assert [(v.site, v.grants, v.rate) for v in every] == [
        ("x", 4, 1.0),
        ("y", 1, 1.0),
        ("z", 1, 1.0),
        ("w", 0, 0.5),  # slowed: shown without grants
    ]
    assert await st.busy(T0 + 5, 0) == []
    # grants age out after the window (Redis: in whole buckets, up to one more)
    later = T0 + ACTIVITY_WINDOW + ACTIVITY_BUCKET + 1
    view = await st.view("x", later)
    assert view is not None and view.grants == 0 and view.tenants == ()
    assert [v.site for v in await st.busy(later, 10)] == ["w"]
    assert await st.speed_up("w", later) > 0.5
    for _ in range(16):
        await st.speed_up("w", later)
    assert await st.busy(later, 10) == []


async def test_a_paused_site_is_busy_until_its_pause_ends(backend: Backend) -> None:
    st = backend.state
    await st.cap("p", T0, None, 5.0)
    assert [v.site for v in await st.busy(T0 + 1, 5)] == ["p"]
    assert await st.busy(T0 + 5, 5) == []


async def test_tenants_behind_the_virtual_time_are_pruned(backend: Backend) -> None:
    st = backend.state
    assert (await st.grant(ask("a"), T0)).granted  # a: finish 1
    assert (await st.grant(ask("b", gap=5.0), T0)).granted  # b: finish 1, own gap 5
    assert (await st.grant(ask("a"), T0 + 1)).granted  # V = 1: b is behind, but its gap runs
    assert (await st.grant(ask("a"), T0 + 2)).granted
    if backend.name == "redis":
        assert {"f:a", "f:b", "g:b"} <= await backend.fields("s")
    assert (await st.grant(ask("a"), T0 + 5)).granted  # b's gap is over: forgotten
    if backend.name == "redis":
        fields = await backend.fields("s")
        assert not {f for f in fields if f.endswith(":b") and not f.startswith("a:")}
        assert {"f:a", "l:a", "g:a", "w:a"} <= fields
    # b back: starts at the virtual time, no credit for its idleness
    b = await st.grant(ask("b", interval=1.0), T0 + 5)
    assert b.granted


async def test_memory_forgets_an_idle_site_after_site_ttl() -> None:
    st = MemorySites()
    assert (await st.grant(ask(site="old"), T0)).granted
    await st.slow_down("other", T0 + SITE_TTL + SWEEP_EVERY + 1, None)
    assert await st.view("old", T0 + SITE_TTL + SWEEP_EVERY + 1) is None


async def test_redis_every_key_expires(site_url: str) -> None:
    st = RedisSites.from_url(site_url, server_clock=False)
    try:
        await st.grant(ask(max_concurrency=3), T0)
        await st.slow_down("s", T0, None)
        await st.cap("long", T0, None, 2 * SITE_TTL)
        await st.busy(T0, 10)
        keys = [k async for k in st.client.scan_iter(match=f"{st.namespace}*")]
        names = {k.decode().removeprefix(st.namespace).split(":")[0] for k in keys}
        assert names == {"site", "site-leases", "site-activity", "sites-busy", "sites-backoff"}
        for key in keys:
            ttl = await st.client.pttl(key)
            assert ttl > 0, key
            name = key.decode()
            if name == st.site_key("s"):
                assert ttl == pytest.approx(SITE_TTL * 1000, abs=60_000)
            if name == st.site_key("long"):
                assert ttl == pytest.approx(2 * SITE_TTL * 1000, abs=60_000)
            if name == st.leases_key("s"):
                assert ttl == pytest.approx(LEASE_TTL * 1000, abs=60_000)
    finally:
        await st.close()


# -- fairness ------------------------------------------------------------------------------


async def simulate(
    state: SiteState,
    weights: dict[str, float],
    *,
    duration: float = 60.0,
    interval: float = 1.0,
    per_tenant: int = 4,
    stop: tuple[str, float] | None = None,
    reject: tuple[str, ...] = (),
) -> dict[str, list[float]]:
    """Each tenant keeps `per_tenant` requests asking: a granted one answers in 50 ms and the
    next asks; a refused one asks again after its wait (`reject` tenants: whole seconds, as a
    client honouring Retry-After). Returns each tenant's grant times from T0."""
    events: list[tuple[float, int, str]] = []
    seq = itertools.count()
    for tenant in weights:
        for _ in range(per_tenant):
            n = next(seq)
            heapq.heappush(events, (T0 + 0.001 * n, n, tenant))
    got: dict[str, list[float]] = {t: [] for t in weights}
    while events:
        now, _, tenant = heapq.heappop(events)
        if now > T0 + duration:
            break
        if stop and tenant == stop[0] and now >= T0 + stop[1]:
            continue
        g = await state.grant(
            SiteAsk("s", tenant, weights[tenant], interval, whole_seconds=tenant in reject), now
        )
        if g.granted:
            got[tenant].append(now - T0)
            nxt = now + 0.05
        else:
            nxt = now + (math.ceil(g.wait - 1e-9) if tenant in reject else g.wait)
        heapq.heappush(events, (nxt, next(seq), tenant))
    return got


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(sorted(times))]


def all_times(got: dict[str, list[float]]) -> list[float]:
    return sorted(t for times in got.values() for t in times)


async def test_fair_equal_shares(backend: Backend) -> None:
    got = await simulate(backend.state, {"a": 1, "b": 1, "c": 1})
    counts = [len(v) for v in got.values()]
    assert max(counts) - min(counts) <= 1 and sum(counts) in (60, 61)
    assert min(gaps(all_times(got))) >= 1.0 - US  # the site sees one request per second


async def test_fair_weights_2_1_1_first_gets_half(backend: Backend) -> None:
    got = await simulate(backend.state, {"a": 2, "b": 1, "c": 1})
    total = len(all_times(got))
    assert abs(len(got["a"]) - total / 2) <= 2
    assert abs(len(got["b"]) - len(got["c"])) <= 1


async def test_fair_a_tenant_stops_and_the_others_take_its_slots_at_once(
    backend: Backend,
) -> None:
    got = await simulate(backend.state, {"a": 1, "b": 1, "c": 1}, stop=("c", 20.0))
    after = [t for t in all_times(got) if t > 20.0]
    assert gaps(after) == pytest.approx([1.0] * (len(after) - 1), abs=1e-3)  # no slot lost
    assert after[0] <= 22.0  # within two intervals
    assert abs(sum(t > 20 for t in got["a"]) - sum(t > 20 for t in got["b"])) <= 1


@pytest.mark.parametrize("reject", [("a",), ("a", "b", "c")])
async def test_fair_reject_tenants_with_whole_second_retries(
    backend: Backend, reject: tuple[str, ...]
) -> None:
    got = await simulate(backend.state, {"a": 1, "b": 1, "c": 1}, reject=reject)
    counts = [len(v) for v in got.values()]
    assert max(counts) - min(counts) <= 1 and sum(counts) >= 58
    assert min(gaps(all_times(got))) >= 1.0 - US


async def test_both_backends_decide_the_same(site_url: str) -> None:
    """The fairness runs, weights, a reject tenant and a stop, grant for grant."""
    redis_state = RedisSites.from_url(site_url, server_clock=False)
    try:
        for i, kw in enumerate(
            [
                {"weights": {"a": 2.0, "b": 1.0, "c": 1.0}},
                {"weights": {"a": 1.0, "b": 1.5, "c": 1.0}, "stop": ("b", 17.0)},
                {"weights": {"a": 1.0, "b": 1.0}, "reject": ("b",), "interval": 0.7},
            ]
        ):
            memory = await simulate(MemorySites(), **kw)  # type: ignore[arg-type]
            await redis_state.client.delete(redis_state.site_key("s"))
            shared = await simulate(redis_state, **kw)  # type: ignore[arg-type]
            assert memory.keys() == shared.keys(), i
            for tenant in memory:
                assert shared[tenant] == pytest.approx(memory[tenant], abs=1e-4), (i, tenant)
    finally:
        await redis_state.close()


# -- Redis on its own clock, and two replicas ----------------------------------------------


async def test_server_clock_one_grant_then_refused_for_about_the_interval(
    site_url: str,
) -> None:
    st = RedisSites.from_url(site_url)
    try:
        wrong_clock = time.time() - 12_345.0  # ignored: the server's TIME decides
        assert (await st.grant(ask(interval=30.0), wrong_clock)).granted
        g = await st.grant(ask("b", interval=30.0), wrong_clock)
        assert (g.granted, g.cause) == (False, "slot") and 25.0 < g.wait <= 30.0
        view = await st.view("s", wrong_clock)
        assert view is not None and view.grants == 1 and 0.0 < view.interval == 30.0
        assert [v.site for v in await st.busy(wrong_clock, 5)] == ["s"]
    finally:
        await st.close()


async def test_two_replicas_share_one_site(site_url: str) -> None:
    one, two = RedisSites.from_url(site_url), RedisSites.from_url(site_url)
    try:
        assert (await one.grant(ask("a", interval=30.0), 0.0)).granted
        g = await two.grant(ask("b", interval=30.0), 0.0)
        assert (g.granted, g.cause) == (False, "slot") and 25.0 < g.wait <= 30.0
        view = await one.view("s", 0.0)
        assert view is not None
        assert [(s.tenant, s.waiting) for s in view.tenants] == [("a", False), ("b", True)]
        assert await two.slow_down("s", 0.0, None) == 0.5
        again = await one.grant(ask("a", interval=30.0), 0.0)
        assert again.rate == 0.5 and again.interval == 60.0
        # concurrent grants through both: the cap holds across them, leases are distinct
        asks = [ask(f"t{i}", "c", max_concurrency=3) for i in range(12)]
        results = await asyncio.gather(
            *((one if i % 2 else two).grant(a, 0.0) for i, a in enumerate(asks))
        )
        leases = [r.lease for r in results if r.granted]
        assert len(leases) == 3 and len(set(leases)) == 3
        await two.release("c", leases[0] or "")
        view = await one.view("c", 0.0)
        assert view is not None and (view.in_flight, view.max_concurrency) == (2, 3)
    finally:
        await one.close()
        await two.close()


# -- state.on_error --------------------------------------------------------------------------


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0?timeout=0.5"  # nothing listens there


async def test_closed_refuses_fast_and_drops_feedback_when_redis_is_not_there() -> None:
    sites = open_sites(dead_url(), "closed")
    assert isinstance(sites, FailoverSites)
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable) as exc:
            await sites.grant(ask(interval=1.0), 0.0)
        assert exc.value.retry_after >= 1 and "127.0.0.1" in exc.value.cause
        assert time.monotonic() - started < 5.0  # refused at once, not after retries
        assert sites.down
        with pytest.raises(StateUnavailable):  # left alone meanwhile
            await sites.grant(ask(interval=1.0), 0.0)
        await sites.release("s", "1")
        assert await sites.slow_down("s", 0.0, 5.0) == 1.0
        assert await sites.speed_up("s", 0.0) == 1.0
        await sites.cap("s", 0.0, 1.0, 1.0)
        assert await sites.view("s", 0.0) is None
        assert await sites.busy(0.0, 5) == []
    finally:
        await sites.close()


async def test_open_falls_back_to_memory_when_redis_is_not_there() -> None:
    fallbacks: list[int] = []
    sites = open_sites(dead_url(), "open", on_fallback=lambda: fallbacks.append(1))
    try:
        g = await sites.grant(ask(interval=10.0, max_concurrency=2), 0.0)
        assert g.granted and g.lease is not None and g.lease.startswith(FALLBACK_LEASE)
        refused = await sites.grant(ask("b", interval=10.0, max_concurrency=2), 1.0)
        assert (refused.cause, refused.wait) == ("slot", approx(9.0))  # paced per process
        view = await sites.view("s", 1.0)
        assert view is not None and view.in_flight == 1
        await sites.release("s", g.lease)
        view = await sites.view("s", 1.0)
        assert view is not None and view.in_flight == 0
        assert [v.site for v in await sites.busy(1.0, 5)] == ["s"]
        assert fallbacks == [1]  # once per outage
    finally:
        await sites.close()


def test_open_sites_urls() -> None:
    assert isinstance(open_sites("memory://"), MemorySites)
    with pytest.raises(ValueError, match="memory:// or redis://"):
        open_sites("postgres://x")
    with pytest.raises(ValueError):
        open_sites("redis://127.0.0.1:6379/0?nope=1")


async def test_open_sites_shares_the_pacing_pool(site_url: str) -> None:
    pacing = open_state(site_url, "closed")
    sites = open_sites(site_url, "closed", pacing=pacing)
    try:
        assert isinstance(pacing, FailoverState) and isinstance(pacing.primary, RedisState)
        assert isinstance(sites, FailoverSites) and isinstance(sites.primary, RedisSites)
        assert sites.primary.client is pacing.primary.client
        assert sites.primary.namespace == pacing.primary.namespace
        assert (await sites.grant(ask(interval=5.0), 0.0)).granted
        await sites.close()  # leaves the shared pool to pacing
        assert (await pacing.reserve("k", 1.0, 0.0, 0.0)).granted
    finally:
        await pacing.close()


class FlakySites:
    """MemorySites until `down`; counts the calls that reach it."""

    def __init__(self) -> None:
        self.inner = MemorySites()
        self.down = False
        self.calls = 0
        self.released: list[str] = []

    async def _enter(self) -> None:
        self.calls += 1
        if self.down:
            raise StateBackendError("redis://127.0.0.1:1/0: ConnectionError: refused")

    async def grant(self, ask: SiteAsk, now: float) -> SiteGrant:
        await self._enter()
        return await self.inner.grant(ask, now)

    async def release(self, site: str, lease: str) -> None:
        await self._enter()
        self.released.append(lease)
        await self.inner.release(site, lease)

    async def slow_down(self, site: str, now: float, pause: float | None) -> float:
        await self._enter()
        return await self.inner.slow_down(site, now, pause)

    async def speed_up(self, site: str, now: float) -> float:
        await self._enter()
        return await self.inner.speed_up(site, now)

    async def cap(self, site: str, now: float, max_rps: float | None, pause: float | None) -> None:
        await self._enter()
        await self.inner.cap(site, now, max_rps, pause)

    async def view(self, site: str, now: float) -> SiteView | None:
        await self._enter()
        return await self.inner.view(site, now)

    async def busy(self, now: float, limit: int) -> list[SiteView]:
        await self._enter()
        return await self.inner.busy(now, limit)

    async def close(self) -> None:
        return None


class FakeClock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


async def test_failover_leases_go_back_where_they_were_granted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    primary, clock = FlakySites(), FakeClock()
    sites = FailoverSites(primary, on_error="open", clock=clock)
    shared = await sites.grant(ask(max_concurrency=5), 0.0)
    assert shared.lease is not None and not shared.lease.startswith(FALLBACK_LEASE)
    primary.down = True
    local = await sites.grant(ask(max_concurrency=5), 0.0)
    assert local.lease is not None and local.lease.startswith(FALLBACK_LEASE)
    calls = primary.calls
    await sites.release("s", shared.lease)  # the shared one while down: dropped
    await sites.release("s", local.lease)  # the local one: to the fallback, not probing Redis
    assert primary.calls == calls
    clock.t += 1.0
    primary.down = False
    assert (await sites.grant(ask(max_concurrency=5), 1.0)).granted  # the probe: back
    assert not sites.down
    await sites.release("s", local.lease)  # after the outage: still not to Redis
    await sites.release("s", shared.lease)
    assert primary.released == [shared.lease]
    messages = [r.getMessage() for r in caplog.records if r.name == "crawlguard"]
    assert sum("site budget state unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


async def test_failover_closed_skips_the_backend_until_the_probe() -> None:
    primary, clock = FlakySites(), FakeClock()
    sites = FailoverSites(primary, on_error="closed", clock=clock)
    assert sites.fallback is None
    primary.down = True
    with pytest.raises(StateUnavailable):
        await sites.grant(ask(), 0.0)
    calls = primary.calls
    ops: list[Callable[[], Awaitable[Any]]] = [
        lambda: sites.slow_down("s", 0.0, 1.0),
        lambda: sites.speed_up("s", 0.0),
        lambda: sites.cap("s", 0.0, 1.0, None),
        lambda: sites.view("s", 0.0),
        lambda: sites.busy(0.0, 3),
        lambda: sites.release("s", "1"),
    ]
    for op in ops:
        await op()
    with pytest.raises(StateUnavailable):
        await sites.grant(ask(), 0.0)
    assert primary.calls == calls
    clock.t += 0.3  # past the first down interval: one probe
    primary.down = False
    assert (await sites.grant(ask(), 0.0)).granted
    assert primary.calls == calls + 1
