"""Pacing policy: interval arithmetic, reject/delay pacing, origin back-off, monitor mode."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from crawlguard.policy.decisions import Kind
from crawlguard.policy.pacing import (
    MAX_RETRY_AFTER,
    HeldPool,
    Pacer,
    PacingOutcome,
    interval,
    pacing_key,
    retry_after_seconds,
)
from crawlguard.state import MemoryState

ORIGIN = "https://example.com:443"
OTHER_ORIGIN = "https://example.org:443"
WALL0 = 1_700_000_000.0


def http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state() -> MemoryState:
    return MemoryState()


def make_pacer(
    state: MemoryState, clock: FakeClock, *, default: float = 0.0, max_hold: float = 30.0
) -> Pacer:
    return Pacer(
        state,
        default_min_interval=default,
        max_hold=max_hold,
        clock=clock,
        wallclock=lambda: WALL0 + clock.t,
    )


async def admit(
    pacer: Pacer,
    *,
    tenant: str = "acme",
    origin: str = ORIGIN,
    delay: float | None = 2.0,
    rate: tuple[int, float] | None = None,
    hold: bool = False,
    enforce: bool = True,
) -> PacingOutcome:
    return await pacer.pace(
        tenant, origin, crawl_delay=delay, request_rate=rate, hold=hold, enforce=enforce
    )


# -- arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("crawl_delay", "request_rate", "default", "backoff", "expected"),
    [
        (None, None, 0.0, 0.0, 0.0),
        (5.0, None, 0.0, 0.0, 5.0),
        (None, (1, 10.0), 0.0, 0.0, 10.0),
        (None, (3, 60.0), 0.0, 0.0, 20.0),
        (None, (10, 1.0), 0.0, 0.0, 0.1),
        (2.0, (1, 10.0), 0.0, 0.0, 10.0),
        (12.0, (1, 10.0), 0.0, 0.0, 12.0),
        (1.0, None, 3.0, 0.0, 3.0),
        (1.0, (1, 2.0), 0.5, 8.0, 8.0),
        (0.0, None, 0.0, 0.0, 0.0),
        (None, (0, 10.0), 0.0, 0.0, 0.0),  # nonsense rate ignored
        (float("inf"), None, 1.0, 0.0, 1.0),  # nonsense delay ignored
        (-3.0, None, 0.0, 0.0, 0.0),
    ],
)
def test_interval_is_the_strictest(
    crawl_delay: float | None,
    request_rate: tuple[int, float] | None,
    default: float,
    backoff: float,
    expected: float,
) -> None:
    assert interval(crawl_delay, request_rate, default, backoff) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("wait", "expected"),
    [(0.0, 1), (0.001, 1), (0.999, 1), (1.0, 1), (1.0001, 2), (2.0000000001, 2), (59.5, 60)],
)
def test_retry_after_rounds_up_at_least_one(wait: float, expected: int) -> None:
    assert retry_after_seconds(wait) == expected


# -- reject pacing -------------------------------------------------------------------------


async def test_reject_first_allowed_then_429_with_rounded_retry_after(
    state: MemoryState, clock: FakeClock
) -> None:
    pacer = make_pacer(state, clock)
    first = await admit(pacer, delay=2.5)
    assert (first.kind, first.forward, first.wait, first.retry_after) == (
        Kind.ALLOWED,
        True,
        0.0,
        None,
    )
    assert first.interval == 2.5
    clock.advance(0.2)
    second = await admit(pacer, delay=2.5)
    assert (second.kind, second.forward, second.wait) == (Kind.CRAWL_DELAY, False, 0.0)
    assert second.retry_after == 3  # 2.3 s → 3
    clock.advance(2.25)
    third = await admit(pacer, delay=2.5)
    assert third.kind is Kind.CRAWL_DELAY and third.retry_after == 1  # 0.05 s → 1
    clock.advance(0.05)
    assert (await admit(pacer, delay=2.5)).kind is Kind.ALLOWED


async def test_refused_requests_do_not_consume_slots(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await admit(pacer)
    for _ in range(10):
        clock.advance(0.1)
        assert not (await admit(pacer)).forward
    clock.advance(1.0)  # t = 2.0 exactly
    assert (await admit(pacer)).kind is Kind.ALLOWED


async def test_default_min_interval_applies_without_robots_delay(
    state: MemoryState, clock: FakeClock
) -> None:
    pacer = make_pacer(state, clock, default=1.0)
    assert (await admit(pacer, delay=None)).kind is Kind.ALLOWED
    refused = await admit(pacer, delay=None)
    assert refused.kind is Kind.CRAWL_DELAY and refused.retry_after == 1


async def test_no_interval_never_paces_nor_stores(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    for _ in range(5):
        assert (await admit(pacer, delay=None)).kind is Kind.ALLOWED
    assert len(state) == 0


async def test_request_rate_paces(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await admit(pacer, delay=None, rate=(2, 10.0))
    clock.advance(4.0)
    refused = await admit(pacer, delay=None, rate=(2, 10.0))
    assert refused.kind is Kind.CRAWL_DELAY and refused.retry_after == 1
    clock.advance(1.0)
    assert (await admit(pacer, delay=None, rate=(2, 10.0))).kind is Kind.ALLOWED


# -- delay pacing ----------------------------------------------------------------------------


async def test_delay_concurrent_admits_are_interval_apart(
    state: MemoryState, clock: FakeClock
) -> None:
    pacer = make_pacer(state, clock)
    outcomes = await asyncio.gather(*(admit(pacer, hold=True) for _ in range(5)))
    assert [o.wait for o in outcomes] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(o.forward for o in outcomes)
    assert outcomes[0].kind is Kind.ALLOWED and not outcomes[0].held
    assert all(o.kind is Kind.CRAWL_DELAY and o.held for o in outcomes[1:])
    assert [o.retry_after for o in outcomes[1:]] == [2, 4, 6, 8]


async def test_delay_beyond_max_hold_refused_without_consuming(
    state: MemoryState, clock: FakeClock
) -> None:
    pacer = make_pacer(state, clock, max_hold=5.0)
    waits = [(await admit(pacer, hold=True)).wait for _ in range(3)]
    assert waits == [0.0, 2.0, 4.0]
    over = await admit(pacer, hold=True)
    assert (over.kind, over.forward, over.wait, over.retry_after) == (
        Kind.CRAWL_DELAY,
        False,
        0.0,
        6,
    )
    clock.advance(2.0)  # the queue moved on one slot; the refusal took nothing
    ok = await admit(pacer, hold=True)
    assert ok.forward and ok.wait == 4.0


async def test_delay_exactly_max_hold_is_held(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock, max_hold=4.0)
    await admit(pacer, hold=True)
    await admit(pacer, hold=True)
    edge = await admit(pacer, hold=True)
    assert edge.forward and edge.wait == 4.0


async def test_cancel_frees_the_latest_slot(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await admit(pacer, hold=True)
    held = await admit(pacer, hold=True)
    assert held.held
    await pacer.cancel(held)
    again = await admit(pacer, hold=True)
    assert again.wait == held.wait == 2.0


async def test_cancel_in_the_middle_keeps_queue_order(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await admit(pacer, hold=True)
    middle = await admit(pacer, hold=True)
    last = await admit(pacer, hold=True)
    await pacer.cancel(middle)
    assert (await admit(pacer, hold=True)).wait == last.wait + 2.0


async def test_cancel_of_a_refused_outcome_is_a_no_op(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    granted = await admit(pacer)
    refused = await admit(pacer)
    assert granted.slot is not None and refused.slot is None
    await pacer.cancel(refused)  # it reserved nothing
    assert (await admit(pacer)).kind is Kind.CRAWL_DELAY


async def test_a_granted_request_a_later_step_refuses_gives_its_slot_back(
    state: MemoryState, clock: FakeClock
) -> None:
    """The site budget may refuse a request pacing granted: it was not forwarded, so the
    tenant's own slot goes back (its next request is not too soon by its own pacing)."""
    pacer = make_pacer(state, clock)
    granted = await admit(pacer)
    await pacer.cancel(granted)
    assert (await admit(pacer)).kind is Kind.ALLOWED


# -- origin back-off -------------------------------------------------------------------------


async def test_origin_429_with_retry_after_seconds(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 429, "30")
    out = await admit(pacer, delay=None)
    assert (out.kind, out.forward, out.retry_after) == (Kind.ORIGIN_BACKOFF, False, 30)
    clock.advance(29.5)
    out = await admit(pacer, delay=None)
    assert out.kind is Kind.ORIGIN_BACKOFF and out.retry_after == 1
    clock.advance(0.5)
    out = await admit(pacer, delay=None)
    assert out.kind is Kind.ALLOWED


async def test_origin_503_with_http_date(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 503, http_date(WALL0 + clock.t + 120))
    out = await admit(pacer, delay=None, hold=True)
    assert (out.kind, out.forward, out.retry_after) == (Kind.ORIGIN_BACKOFF, False, 120)


async def test_origin_retry_after_is_capped(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 429, "999999999")
    out = await admit(pacer, delay=None)
    assert out.retry_after == int(MAX_RETRY_AFTER)


async def test_backoff_refusal_consumes_no_slot(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 429, "5")
    for _ in range(3):
        assert (await admit(pacer, delay=10.0, hold=True)).kind is Kind.ORIGIN_BACKOFF
    clock.advance(5.0)
    assert (await admit(pacer, delay=10.0)).kind is Kind.ALLOWED


async def test_exponential_backoff_without_retry_after(
    state: MemoryState, clock: FakeClock
) -> None:
    pacer = make_pacer(state, clock)
    windows = []
    for _ in range(5):
        await pacer.observe_response("acme", ORIGIN, 503, None)
        out = await admit(pacer, delay=None)
        assert out.kind is Kind.ORIGIN_BACKOFF
        windows.append(out.retry_after)
        clock.advance(float(out.retry_after or 0))
    assert windows == [1, 2, 4, 8, 16]
    # After the window the origin is still approached at the back-off pace (16 s)...
    first = await admit(pacer, delay=None)
    assert first.kind is Kind.ALLOWED and first.interval == 16.0


async def test_backoff_capped_at_one_hour(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    for _ in range(20):
        await pacer.observe_response("acme", ORIGIN, 429, "garbage")
        backoff = await state.get_backoff(pacing_key("acme", ORIGIN), clock())
        assert backoff is not None
        clock.advance(backoff.remaining)
    assert (await admit(pacer, delay=None)).interval == 3600.0


async def test_in_flight_throttles_do_not_escalate(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    for _ in range(10):  # ten requests in flight all answered 503 at once
        await pacer.observe_response("acme", ORIGIN, 503, None)
    out = await admit(pacer, delay=None)
    assert out.retry_after == 1


async def test_success_decays_backoff(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    for _ in range(3):
        await pacer.observe_response("acme", ORIGIN, 429, None)
        clock.advance(10.0)
    assert (await admit(pacer, delay=None)).interval == 4.0
    await pacer.observe_response("acme", ORIGIN, 200, None)
    clock.advance(10.0)
    assert (await admit(pacer, delay=None)).interval == 2.0
    await pacer.observe_response("acme", ORIGIN, 304, None)
    await pacer.observe_response("acme", ORIGIN, 204, None)
    clock.advance(10.0)
    assert (await admit(pacer, delay=None)).interval == 0.0
    # The next throttle starts again from 1 s.
    await pacer.observe_response("acme", ORIGIN, 503, None)
    assert (await admit(pacer, delay=None)).retry_after == 1


async def test_other_statuses_leave_backoff_alone(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 429, None)
    clock.advance(5.0)
    for status in (404, 500, 502, 101):
        await pacer.observe_response("acme", ORIGIN, status, "60")
    assert (await admit(pacer, delay=None)).interval == 1.0
    await pacer.observe_response("acme", ORIGIN, 404, None)
    assert len(state) == 2  # the back-off record and the slot just taken


async def test_success_does_not_cut_a_running_window(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 503, "60")
    await pacer.observe_response("acme", ORIGIN, 200, None)  # was already in flight
    assert (await admit(pacer, delay=None)).kind is Kind.ORIGIN_BACKOFF


class CountingState(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.decays = 0

    async def decay_backoff(self, key: str, now: float) -> None:
        self.decays += 1
        await super().decay_backoff(key, now)


async def test_a_success_without_backoff_costs_no_state_call(clock: FakeClock) -> None:
    """Issue 12: with a shared state every call is a round trip; a success on an origin this
    process last saw without back-off has nothing to decay."""
    state = CountingState()
    pacer = make_pacer(state, clock)
    for _ in range(3):
        await admit(pacer, delay=None)
        await pacer.observe_response("acme", ORIGIN, 200, None)
    assert state.decays == 0
    await pacer.observe_response("acme", ORIGIN, 429, None)  # seen here: decayed from now on
    await pacer.observe_response("acme", ORIGIN, 200, None)
    assert state.decays == 1
    # Another process raises a back-off: it is decayed once this one's next check sees it.
    other = make_pacer(state, clock)
    await pacer.observe_response("acme", OTHER_ORIGIN, 200, None)  # never checked here: decays
    assert state.decays == 2
    await admit(pacer, delay=None, origin=OTHER_ORIGIN)  # no back-off: quiet
    await other.observe_response("acme", OTHER_ORIGIN, 503, None)
    await pacer.observe_response("acme", OTHER_ORIGIN, 200, None)
    assert state.decays == 2
    clock.advance(5.0)
    await admit(pacer, delay=None, origin=OTHER_ORIGIN)  # sees the back-off
    await pacer.observe_response("acme", OTHER_ORIGIN, 200, None)
    assert state.decays == 3
    assert (await admit(pacer, delay=None, origin=OTHER_ORIGIN)).interval == 0.0  # decayed


# -- monitor mode --------------------------------------------------------------------------


async def test_monitor_forwards_but_reports_crawl_delay(
    state: MemoryState, clock: FakeClock
) -> None:
    pacer = make_pacer(state, clock)
    first = await admit(pacer, enforce=False)
    assert (first.kind, first.forward) == (Kind.ALLOWED, True)
    clock.advance(0.5)
    second = await admit(pacer, enforce=False)
    assert (second.kind, second.forward, second.wait, second.retry_after) == (
        Kind.CRAWL_DELAY,
        True,
        0.0,
        2,
    )
    # The forwarded request consumed the slot at t+0.5, so t+2.0 is still too soon ...
    clock.advance(1.5)
    assert (await admit(pacer, enforce=False)).kind is Kind.CRAWL_DELAY
    # ... and the slot moved only to that request's time + interval, not further.
    clock.advance(2.0)
    assert (await admit(pacer, enforce=False)).kind is Kind.ALLOWED


async def test_monitor_delay_tenant_is_never_held(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    outcomes = await asyncio.gather(*(admit(pacer, hold=True, enforce=False) for _ in range(3)))
    assert all(o.forward and o.wait == 0.0 and not o.held for o in outcomes)
    assert [o.kind for o in outcomes] == [Kind.ALLOWED, Kind.CRAWL_DELAY, Kind.CRAWL_DELAY]


async def test_monitor_reports_origin_backoff(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    await pacer.observe_response("acme", ORIGIN, 429, "10")
    out = await admit(pacer, delay=None, enforce=False)
    assert (out.kind, out.forward, out.retry_after) == (Kind.ORIGIN_BACKOFF, True, 10)


# -- isolation -----------------------------------------------------------------------------


async def test_tenants_are_isolated(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    assert (await admit(pacer, tenant="acme")).kind is Kind.ALLOWED
    assert (await admit(pacer, tenant="other")).kind is Kind.ALLOWED
    assert (await admit(pacer, tenant="acme")).kind is Kind.CRAWL_DELAY
    await pacer.observe_response("acme", ORIGIN, 429, "60")
    clock.advance(2.0)
    assert (await admit(pacer, tenant="acme")).kind is Kind.ORIGIN_BACKOFF
    assert (await admit(pacer, tenant="other")).kind is Kind.ALLOWED


async def test_origins_are_isolated(state: MemoryState, clock: FakeClock) -> None:
    pacer = make_pacer(state, clock)
    assert (await admit(pacer, origin=ORIGIN)).kind is Kind.ALLOWED
    assert (await admit(pacer, origin=OTHER_ORIGIN)).kind is Kind.ALLOWED
    assert (await admit(pacer, origin="http://example.com:80")).kind is Kind.ALLOWED
    assert (await admit(pacer, origin=ORIGIN)).kind is Kind.CRAWL_DELAY
    await pacer.observe_response("acme", ORIGIN, 503, "60")
    clock.advance(2.0)
    assert (await admit(pacer, origin=ORIGIN)).kind is Kind.ORIGIN_BACKOFF
    assert (await admit(pacer, origin=OTHER_ORIGIN)).kind is Kind.ALLOWED


def test_keys_distinct_per_tenant_and_origin() -> None:
    keys = {pacing_key(t, o) for t in ("a", "b") for o in (ORIGIN, OTHER_ORIGIN)}
    assert len(keys) == 4


# -- bounded memory through the pacer --------------------------------------------------------


async def test_many_origins_stay_bounded(clock: FakeClock) -> None:
    state = MemoryState(max_keys=100, sweep_every=60.0)
    pacer = make_pacer(state, clock)
    for i in range(1000):
        await admit(pacer, origin=f"https://h{i}.example:443")
    assert len(state) <= 100
    clock.advance(120.0)
    await admit(pacer, origin="https://late.example:443")
    assert len(state) == 1


# -- the held pool (pacing.max_held), shared fairly ---------------------------------------------


def take_all(pool: HeldPool, tenant: str, n: int) -> list[Kind | None]:
    return [pool.take(tenant) for _ in range(n)]


def test_a_lone_tenant_may_borrow_the_whole_pool(clock: FakeClock) -> None:
    pool = HeldPool(4, window=30, clock=clock)
    assert take_all(pool, "a", 5) == [None, None, None, None, Kind.CRAWL_DELAY]
    assert pool.total == 4 and pool.held == {"a": 4}


def test_a_newly_active_tenant_is_busy_not_a_violator_until_borrowed_holds_end(
    clock: FakeClock,
) -> None:
    pool = HeldPool(4, window=30, clock=clock)
    take_all(pool, "a", 4)
    assert pool.take("b") is Kind.PROXY_BUSY  # within its share (2), the pool is full
    pool.give_back("a")
    assert pool.take("b") is None  # the first place that frees is b's
    pool.give_back("a")
    assert pool.take("a") is Kind.CRAWL_DELAY  # a holds 2 = its share; b's other one is kept
    assert pool.take("b") is None
    assert pool.take("b") is Kind.CRAWL_DELAY  # b at its share, and the pool is full
    assert pool.held == {"a": 2, "b": 2}


def test_borrowing_leaves_room_for_every_active_tenants_unused_share(clock: FakeClock) -> None:
    pool = HeldPool(6, window=30, clock=clock)
    assert pool.take("a") is None
    assert pool.take("b") is None
    pool.give_back("b")  # b stays active for the window: its share (3) stays reserved
    assert take_all(pool, "a", 4) == [None, None, Kind.CRAWL_DELAY, Kind.CRAWL_DELAY]
    clock.advance(31)  # b has held nothing for a whole window: no longer reserved
    assert take_all(pool, "a", 4) == [None, None, None, Kind.CRAWL_DELAY]


def test_an_empty_pool_holds_nothing(clock: FakeClock) -> None:
    assert HeldPool(0, window=30, clock=clock).take("a") is Kind.CRAWL_DELAY
