"""The PacingState contract, run against every backend: MemoryState and RedisState (real Redis).

MemoryState runs on a fake clock, so its numbers are exact. RedisState reads the Redis server's
clock and ignores the caller's `now`, so for it "time passes" means polling the server's TIME
until it has (`ServerClock.advance`, never a fixed sleep), and a duration it reports may be
smaller than the exact value by the time the test itself took: `near` allows up to SLACK below
(windows under test are long, 60 s, so no realistic stall breaks it) and nothing above.
Memory-only internals (LRU bound, sweep interval) stay in test_state.py.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redisutil import redis_base, redis_url  # noqa: F401  (fixtures)

from crawlguard.state import Backoff, MemoryState, PacingState, Reservation
from crawlguard.state.failover import FailoverState
from crawlguard.state.redis import RedisState

SLACK = 5.0  # seconds a Redis-reported duration may be below the exact one (test's own time)
US = 1e-6  # Redis keeps microseconds


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def advance(self, seconds: float) -> None:
        self.t += seconds


class ServerClock:
    """The Redis server's clock. `__call__` is what callers pass as `now` (ignored by
    RedisState: deliberately far off); `advance` polls TIME until `seconds` have passed."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    def __call__(self) -> float:
        return time.monotonic() - 12_345.0

    async def server_time(self) -> float:
        sec, usec = await self.client.time()
        return sec + usec / 1e6

    async def advance(self, seconds: float) -> None:
        target = await self.server_time() + seconds
        deadline = time.monotonic() + seconds + 30
        while await self.server_time() < target:
            assert time.monotonic() < deadline, "Redis TIME did not advance"
            await asyncio.sleep(min(0.01, seconds))


@dataclass
class Backend:
    name: str
    make: Callable[..., PacingState]  # make(backoff_ttl=...) -> a fresh state, same namespace
    clock: FakeClock | ServerClock
    stored: Callable[[PacingState], Awaitable[int]]  # live entries the state holds

    @property
    def exact(self) -> bool:
        return self.name == "memory"

    def near(self, value: float, expected: float) -> bool:
        if self.exact:
            return value == pytest.approx(expected, abs=1e-9)
        return max(0.0, expected - SLACK) - US <= value <= expected + US

    def at_most(self, value: float, expected: float) -> bool:
        """For short windows that real time eats into: exact in memory, ≤ in Redis."""
        if self.exact:
            return value == pytest.approx(expected, abs=1e-9)
        return 0.0 <= value <= expected + US


async def _memory_stored(state: PacingState) -> int:
    assert isinstance(state, MemoryState)
    return len(state)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend(
            "memory",
            lambda **kw: MemoryState(sweep_every=0.0, **kw),
            FakeClock(),
            _memory_stored,
        )
        return
    url = request.getfixturevalue("redis_url")
    made: list[RedisState] = []

    def make(**kw: Any) -> PacingState:
        state = RedisState.from_url(url, **kw)
        made.append(state)
        return state

    async def stored(state: PacingState) -> int:
        assert isinstance(state, RedisState)
        keys = [k async for k in state.client.scan_iter(match=f"{state.namespace}*")]
        # EXISTS expires a due key on access: count only keys that are really live
        return int(await state.client.exists(*keys)) if keys else 0

    probe = RedisState.from_url(url)
    made.append(probe)
    try:
        yield Backend("redis", make, ServerClock(probe.client), stored)
    finally:
        for state in made:
            await state.close()


@pytest.fixture
def state(backend: Backend) -> PacingState:
    return backend.make()


# -- the interface -------------------------------------------------------------------------


@pytest.mark.parametrize("impl", [MemoryState, RedisState, FailoverState])
def test_every_backend_implements_the_protocol_with_its_signatures(impl: type) -> None:
    methods = [
        n for n, v in vars(PacingState).items() if inspect.isfunction(v) and not n.startswith("_")
    ]
    assert {"reserve", "release", "get_backoff", "raise_backoff", "decay_backoff", "close"} <= set(
        methods
    )
    for name in methods:
        impl_method = getattr(impl, name)
        assert inspect.iscoroutinefunction(impl_method), name
        assert inspect.signature(impl_method) == inspect.signature(getattr(PacingState, name)), name


# -- slots ---------------------------------------------------------------------------------


async def test_first_request_goes_now(backend: Backend, state: PacingState) -> None:
    now = backend.clock()
    res = await state.reserve("k", 2.0, now, 0.0)
    assert res.granted and res.wait == 0.0
    if backend.exact:
        assert res.slot == now


async def test_too_soon_refused_and_the_refusal_takes_nothing(
    backend: Backend, state: PacingState
) -> None:
    first = await state.reserve("k", 60.0, backend.clock(), 0.0)
    refused = await state.reserve("k", 60.0, backend.clock(), 0.0)
    assert not refused.granted
    assert backend.near(refused.wait, 60.0)
    assert refused.slot == pytest.approx(first.slot + 60.0, abs=US)
    again = await state.reserve("k", 60.0, backend.clock(), 0.0)
    assert not again.granted and again.slot == refused.slot  # nothing was consumed


async def test_granted_again_once_the_interval_has_passed(
    backend: Backend, state: PacingState
) -> None:
    assert (await state.reserve("k", 1.0, backend.clock(), 0.0)).granted
    assert not (await state.reserve("k", 1.0, backend.clock(), 0.0)).granted
    await backend.clock.advance(1.0)
    res = await state.reserve("k", 1.0, backend.clock(), 0.0)
    assert res.granted and res.wait == 0.0


async def test_reserve_queues_up_to_max_wait(backend: Backend, state: PacingState) -> None:
    slots = [await state.reserve("k", 10.0, backend.clock(), 25.0) for _ in range(4)]
    assert [r.granted for r in slots] == [True, True, True, False]
    assert [r.slot - slots[0].slot for r in slots] == pytest.approx([0, 10, 20, 30], abs=US)
    assert slots[0].wait == 0.0
    for res, expected in zip(slots, [0.0, 10.0, 20.0, 30.0], strict=True):
        assert backend.near(res.wait, expected), (res, expected)


async def test_concurrent_reservations_get_distinct_slots_exactly_interval_apart(
    backend: Backend, state: PacingState
) -> None:
    results = await asyncio.gather(
        *(state.reserve("k", 1.5, backend.clock(), 100.0) for _ in range(20))
    )
    assert all(r.granted for r in results)
    slots = sorted(r.slot for r in results)
    assert len(set(slots)) == 20
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps == pytest.approx([1.5] * 19, abs=US)


async def test_force_reports_the_would_be_slot_but_paces_from_now(
    backend: Backend, state: PacingState
) -> None:
    first = await state.reserve("k", 60.0, backend.clock(), 0.0, force=True)
    assert first.granted and first.wait == 0.0
    forced = await state.reserve("k", 60.0, backend.clock(), 0.0, force=True)
    assert forced.granted and backend.near(forced.wait, 60.0)
    # Forced requests went now, so the next free slot is now + 60, not first + 120.
    nxt = await state.reserve("k", 60.0, backend.clock(), 0.0)
    assert not nxt.granted and backend.near(nxt.wait, 60.0)


async def test_force_in_memory_clock_terms(backend: Backend, state: PacingState) -> None:
    """The original fake-clock case: forced at 0 and 0.5 with interval 2 -> free at 2.5."""
    await state.reserve("k", 2.0, backend.clock(), 0.0, force=True)
    await backend.clock.advance(0.5)
    res = await state.reserve("k", 2.0, backend.clock(), 0.0, force=True)
    assert res.granted and backend.at_most(res.wait, 1.5)
    await backend.clock.advance(2.0)
    nxt = await state.reserve("k", 2.0, backend.clock(), 0.0)
    assert nxt.granted and nxt.wait == 0.0


async def test_zero_interval_stores_nothing(backend: Backend, state: PacingState) -> None:
    res = await state.reserve("k", 0.0, backend.clock(), 0.0)
    assert res.granted and res.wait == 0.0
    assert await backend.stored(state) == 0


async def test_release_of_the_latest_slot_frees_it(backend: Backend, state: PacingState) -> None:
    await state.reserve("k", 10.0, backend.clock(), 100.0)
    held = await state.reserve("k", 10.0, backend.clock(), 100.0)
    await state.release("k", held.slot, 10.0)
    again = await state.reserve("k", 10.0, backend.clock(), 100.0)
    assert again.slot == held.slot


async def test_release_of_a_middle_slot_keeps_later_ones(
    backend: Backend, state: PacingState
) -> None:
    await state.reserve("k", 10.0, backend.clock(), 100.0)
    middle = await state.reserve("k", 10.0, backend.clock(), 100.0)
    last = await state.reserve("k", 10.0, backend.clock(), 100.0)
    await state.release("k", middle.slot, 10.0)
    nxt = await state.reserve("k", 10.0, backend.clock(), 100.0)
    assert nxt.slot == pytest.approx(last.slot + 10.0, abs=US)


async def test_release_twice_is_harmless(backend: Backend, state: PacingState) -> None:
    await state.reserve("k", 10.0, backend.clock(), 100.0)
    held = await state.reserve("k", 10.0, backend.clock(), 100.0)
    await state.release("k", held.slot, 10.0)
    await state.release("k", held.slot, 10.0)
    assert (await state.reserve("k", 10.0, backend.clock(), 100.0)).slot == held.slot


async def test_release_of_an_unknown_key_is_harmless(backend: Backend, state: PacingState) -> None:
    await state.release("nothing", 123.0, 2.0)
    assert await backend.stored(state) == 0


async def test_keys_are_independent(backend: Backend, state: PacingState) -> None:
    assert (await state.reserve("a", 60.0, backend.clock(), 0.0)).granted
    assert (await state.reserve("b", 60.0, backend.clock(), 0.0)).granted
    assert not (await state.reserve("a", 60.0, backend.clock(), 0.0)).granted


async def test_a_slot_on_several_keys_waits_for_the_latest_of_them(
    backend: Backend, state: PacingState
) -> None:
    """`also` (pacing.scope: address): one request, one slot on the host's and the address's
    key; the busiest key decides, and both are taken."""
    assert (await state.reserve("addr", 30.0, backend.clock(), 0.0)).granted
    both = await state.reserve("host", 10.0, backend.clock(), 100.0, also=("addr",))
    assert both.granted and backend.near(both.wait, 30.0)
    host_only = await state.reserve("host", 10.0, backend.clock(), 0.0)
    assert not host_only.granted and host_only.slot == pytest.approx(both.slot + 10.0, abs=US)
    refused = await state.reserve("other", 10.0, backend.clock(), 0.0, also=("addr",))
    assert not refused.granted
    assert (await state.reserve("other", 10.0, backend.clock(), 0.0)).granted  # nothing taken


async def test_release_on_several_keys_frees_each_where_it_is_the_latest(
    backend: Backend, state: PacingState
) -> None:
    await state.reserve("host", 10.0, backend.clock(), 100.0)
    held = await state.reserve("host", 10.0, backend.clock(), 100.0, also=("addr",))
    await state.release("host", held.slot, 10.0, also=("addr",))
    assert (await state.reserve("host", 10.0, backend.clock(), 100.0)).slot == held.slot
    assert (await state.reserve("addr", 10.0, backend.clock(), 100.0)).slot == held.slot


async def test_force_on_several_keys_paces_each_from_now(
    backend: Backend, state: PacingState
) -> None:
    forced = await state.reserve("host", 60.0, backend.clock(), 0.0, force=True, also=("addr",))
    assert forced.granted and forced.wait == 0.0
    for key in ("host", "addr"):
        nxt = await state.reserve(key, 60.0, backend.clock(), 0.0)
        assert not nxt.granted and backend.near(nxt.wait, 60.0)


# -- back-off ------------------------------------------------------------------------------


async def test_backoff_levels_exponential_then_explicit(
    backend: Backend, state: PacingState
) -> None:
    assert await state.get_backoff("k", backend.clock()) is None
    bo = await state.raise_backoff("k", backend.clock(), None, 0.05, 3600.0)
    assert bo.level == 1 and backend.at_most(bo.remaining, 0.05)
    await backend.clock.advance(0.05)
    bo = await state.raise_backoff("k", backend.clock(), None, 0.05, 3600.0)
    assert bo.level == 2 and backend.at_most(bo.remaining, 0.1)
    await backend.clock.advance(0.1)
    bo = await state.raise_backoff("k", backend.clock(), 60.0, 0.05, 3600.0)
    assert bo.level == 3 and backend.near(bo.remaining, 60.0)
    got = await state.get_backoff("k", backend.clock())
    assert got is not None and got.level == 3 and backend.near(got.remaining, 60.0)


async def test_backoff_window_is_capped(backend: Backend, state: PacingState) -> None:
    now = backend.clock()
    for _ in range(3):  # levels 1..3 with zero-length windows (Retry-After: 0)
        await state.raise_backoff("k", now, 0.0, 1.0, 2.0)
    bo = await state.raise_backoff("k", now, None, 1.0, 2.0)  # level 4: 8 s, capped at 2
    assert bo.level == 4 and backend.near(bo.remaining, 2.0)


async def test_raise_during_a_running_window_keeps_the_level(
    backend: Backend, state: PacingState
) -> None:
    """Answers already in flight when the window opened must not escalate it."""
    bo = await state.raise_backoff("k", backend.clock(), None, 60.0, 3600.0)
    assert bo.level == 1 and backend.near(bo.remaining, 60.0)
    await backend.clock.advance(0.5)
    again = await state.raise_backoff("k", backend.clock(), None, 60.0, 3600.0)
    assert again.level == 1 and backend.near(again.remaining, 59.5)
    longer = await state.raise_backoff("k", backend.clock(), 120.0, 60.0, 3600.0)
    assert longer.level == 1 and backend.near(longer.remaining, 120.0)
    shorter = await state.raise_backoff("k", backend.clock(), 2.0, 60.0, 3600.0)
    assert shorter.level == 1 and backend.near(shorter.remaining, 120.0)  # only extends


async def test_decay_lowers_the_level_and_keeps_the_window(
    backend: Backend, state: PacingState
) -> None:
    await state.raise_backoff("k", backend.clock(), 60.0, 1.0, 3600.0)
    await state.decay_backoff("k", backend.clock())
    got = await state.get_backoff("k", backend.clock())
    assert got is not None and got.level == 0 and backend.near(got.remaining, 60.0)
    # A level-0 record is gone once its window ends.
    await state.raise_backoff("short", backend.clock(), 0.1, 1.0, 3600.0)
    await state.decay_backoff("short", backend.clock())
    await backend.clock.advance(0.1)
    assert await state.get_backoff("short", backend.clock()) is None


async def test_decay_one_step_per_success(backend: Backend, state: PacingState) -> None:
    for _ in range(3):
        bo = await state.raise_backoff("k", backend.clock(), None, 0.02, 3600.0)
        await backend.clock.advance(bo.remaining)
    assert await state.get_backoff("k", backend.clock()) == Backoff(0.0, 3)
    await state.decay_backoff("k", backend.clock())
    assert await state.get_backoff("k", backend.clock()) == Backoff(0.0, 2)
    await state.decay_backoff("k", backend.clock())
    await state.decay_backoff("k", backend.clock())
    assert await state.get_backoff("k", backend.clock()) is None
    assert await backend.stored(state) == 0


async def test_decay_without_a_record_is_harmless(backend: Backend, state: PacingState) -> None:
    await state.decay_backoff("k", backend.clock())
    assert await state.get_backoff("k", backend.clock()) is None
    assert await backend.stored(state) == 0


async def test_level_forgotten_after_backoff_ttl(backend: Backend) -> None:
    state = backend.make(backoff_ttl=1.5)
    await state.raise_backoff("k", backend.clock(), None, 0.05, 3600.0)
    await backend.clock.advance(0.05)
    assert await state.get_backoff("k", backend.clock()) == Backoff(0.0, 1)  # remembered
    await backend.clock.advance(1.5)
    assert await state.get_backoff("k", backend.clock()) is None
    # A new throttle after that starts from level 1 again.
    bo = await state.raise_backoff("k", backend.clock(), None, 0.05, 3600.0)
    assert bo.level == 1


# -- idle expiry ---------------------------------------------------------------------------


async def test_idle_entries_expire(backend: Backend) -> None:
    # (Forgetting a level after backoff_ttl: test_level_forgotten_after_backoff_ttl.)
    state = backend.make(backoff_ttl=60.0)
    for i in range(10):
        await state.reserve(f"slot{i}", 1.0, backend.clock(), 0.0)
        await state.raise_backoff(f"decayed{i}", backend.clock(), 1.0, 1.0, 3600.0)
        await state.decay_backoff(f"decayed{i}", backend.clock())  # level 0: idle at window end
        await state.raise_backoff(f"level{i}", backend.clock(), 1.0, 1.0, 3600.0)  # level 1
    assert await backend.stored(state) == 30
    await backend.clock.advance(1.0)
    await state.reserve("fresh", 0.0, backend.clock(), 0.0)  # (memory sweeps on a call)
    # Slots whose next free slot has passed and level-0 records whose window ended are gone;
    # level-1 records are remembered for backoff_ttl after their window.
    assert await backend.stored(state) == 10


def test_reservation_and_backoff_are_plain_values() -> None:
    assert Reservation(True, 1.0, 0.0) == Reservation(True, 1.0, 0.0)
    assert Backoff(0.0, 2) == Backoff(0.0, 2)
