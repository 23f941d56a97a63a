"""MemoryState: the atomic slot reservation, release, back-off records and bounded memory."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from crawlguard.state import Backoff, MemoryState, PacingState, backoff_window


def test_memory_state_implements_every_protocol_method_with_its_signature() -> None:
    # A Redis backend will be checked the same way; a type annotation alone fails nothing.
    methods = [
        n for n, v in vars(PacingState).items() if inspect.isfunction(v) and not n.startswith("_")
    ]
    assert {"reserve", "release", "get_backoff", "raise_backoff", "decay_backoff", "close"} <= set(
        methods
    )
    for name in methods:
        impl = getattr(MemoryState, name)
        assert inspect.iscoroutinefunction(impl), name
        assert inspect.signature(impl) == inspect.signature(getattr(PacingState, name)), name


async def test_reserve_first_request_goes_now() -> None:
    state = MemoryState()
    res = await state.reserve("k", 2.0, 100.0, 0.0)
    assert (res.granted, res.slot, res.wait) == (True, 100.0, 0.0)


async def test_reserve_inside_interval_refused_without_change() -> None:
    state = MemoryState()
    await state.reserve("k", 2.0, 100.0, 0.0)
    refused = await state.reserve("k", 2.0, 100.5, 0.0)
    assert (refused.granted, refused.slot, refused.wait) == (False, 102.0, 1.5)
    # The refusal consumed nothing: the slot is still 102.
    ok = await state.reserve("k", 2.0, 102.0, 0.0)
    assert ok.granted and ok.wait == 0.0


async def test_reserve_queues_up_to_max_wait() -> None:
    state = MemoryState()
    slots = [await state.reserve("k", 2.0, 10.0, 5.0) for _ in range(4)]
    assert [r.granted for r in slots] == [True, True, True, False]
    assert [r.slot for r in slots] == [10.0, 12.0, 14.0, 16.0]
    assert [r.wait for r in slots] == [0.0, 2.0, 4.0, 6.0]


async def test_reserve_is_atomic_under_concurrency() -> None:
    state = MemoryState()
    results = await asyncio.gather(*(state.reserve("k", 1.0, 0.0, 100.0) for _ in range(20)))
    assert sorted(r.slot for r in results) == [float(i) for i in range(20)]


async def test_force_reports_would_be_slot_but_paces_from_now() -> None:
    state = MemoryState()
    await state.reserve("k", 2.0, 0.0, 0.0, force=True)
    res = await state.reserve("k", 2.0, 0.5, 0.0, force=True)
    assert res.granted and res.wait == 1.5
    # Forced requests went at 0.5, so the next free slot is 2.5, not 4.0.
    nxt = await state.reserve("k", 2.0, 2.5, 0.0)
    assert nxt.granted and nxt.wait == 0.0


async def test_release_latest_frees_slot() -> None:
    state = MemoryState()
    await state.reserve("k", 2.0, 0.0, 10.0)
    held = await state.reserve("k", 2.0, 0.0, 10.0)
    await state.release("k", held.slot, 2.0)
    again = await state.reserve("k", 2.0, 0.0, 10.0)
    assert again.slot == held.slot


async def test_release_middle_keeps_later_slots() -> None:
    state = MemoryState()
    await state.reserve("k", 2.0, 0.0, 10.0)
    middle = await state.reserve("k", 2.0, 0.0, 10.0)
    last = await state.reserve("k", 2.0, 0.0, 10.0)
    await state.release("k", middle.slot, 2.0)
    nxt = await state.reserve("k", 2.0, 0.0, 10.0)
    assert nxt.slot == last.slot + 2.0


async def test_release_twice_is_harmless() -> None:
    state = MemoryState()
    await state.reserve("k", 2.0, 0.0, 10.0)
    held = await state.reserve("k", 2.0, 0.0, 10.0)
    await state.release("k", held.slot, 2.0)
    await state.release("k", held.slot, 2.0)
    assert (await state.reserve("k", 2.0, 0.0, 10.0)).slot == held.slot


def test_backoff_window_doubles_and_caps() -> None:
    assert [backoff_window(n, 1.0, 3600.0) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff_window(13, 1.0, 3600.0) == 3600.0
    assert backoff_window(10_000, 1.0, 3600.0) == 3600.0


async def test_raise_backoff_exponential_then_explicit() -> None:
    state = MemoryState()
    assert await state.get_backoff("k", 0.0) is None
    assert await state.raise_backoff("k", 0.0, None, 1.0, 3600.0) == Backoff(1.0, 1)
    assert await state.raise_backoff("k", 1.0, None, 1.0, 3600.0) == Backoff(2.0, 2)
    assert await state.raise_backoff("k", 3.0, 30.0, 1.0, 3600.0) == Backoff(30.0, 3)
    assert await state.get_backoff("k", 13.0) == Backoff(20.0, 3)


async def test_raise_backoff_during_window_keeps_level() -> None:
    """Answers already in flight when the window opened must not escalate it."""
    state = MemoryState()
    await state.raise_backoff("k", 0.0, None, 1.0, 3600.0)
    again = await state.raise_backoff("k", 0.5, None, 1.0, 3600.0)
    assert again == Backoff(0.5, 1)
    longer = await state.raise_backoff("k", 0.5, 10.0, 1.0, 3600.0)
    assert longer == Backoff(10.0, 1)
    shorter = await state.raise_backoff("k", 1.0, 2.0, 1.0, 3600.0)
    assert shorter == Backoff(9.5, 1)


async def test_decay_lowers_level_and_keeps_window() -> None:
    state = MemoryState()
    await state.raise_backoff("k", 0.0, 60.0, 1.0, 3600.0)
    await state.decay_backoff("k", 1.0)
    assert await state.get_backoff("k", 1.0) == Backoff(59.0, 0)
    assert await state.get_backoff("k", 60.0) is None


async def test_decay_one_step_per_success() -> None:
    state = MemoryState()
    now = 0.0
    for _ in range(3):
        bo = await state.raise_backoff("k", now, None, 1.0, 3600.0)
        now += bo.remaining
    assert (await state.get_backoff("k", now)) == Backoff(0.0, 3)
    await state.decay_backoff("k", now)
    assert (await state.get_backoff("k", now)) == Backoff(0.0, 2)
    await state.decay_backoff("k", now)
    await state.decay_backoff("k", now)
    assert await state.get_backoff("k", now) is None
    assert len(state) == 0


async def test_level_forgotten_after_ttl() -> None:
    state = MemoryState(backoff_ttl=100.0)
    await state.raise_backoff("k", 0.0, None, 1.0, 3600.0)
    assert await state.get_backoff("k", 50.0) == Backoff(0.0, 1)
    assert await state.get_backoff("k", 101.0) is None
    # A new throttle after that starts from level 1 again.
    assert await state.raise_backoff("k", 101.0, None, 1.0, 3600.0) == Backoff(1.0, 1)


async def test_idle_keys_are_swept() -> None:
    state = MemoryState(sweep_every=10.0, backoff_ttl=5.0)
    for i in range(50):
        await state.reserve(f"s{i}", 1.0, 0.0, 0.0)
        await state.raise_backoff(f"b{i}", 0.0, None, 1.0, 3600.0)
    assert len(state) == 100
    await state.reserve("fresh", 1.0, 20.0, 0.0)
    assert len(state) == 1


async def test_zero_interval_stores_nothing() -> None:
    state = MemoryState()
    await state.reserve("k", 0.0, 5.0, 0.0)
    assert len(state) == 0


@pytest.mark.parametrize("max_keys", [1, 3])
async def test_memory_bounded_by_max_keys(max_keys: int) -> None:
    state = MemoryState(max_keys=max_keys, sweep_every=1e9)
    for i in range(100):
        await state.reserve(f"s{i}", 60.0, 0.0, 0.0)
        await state.raise_backoff(f"b{i}", 0.0, 60.0, 1.0, 3600.0)
    assert len(state) == 2 * max_keys
    # The most recently used keys survive.
    assert not (await state.reserve("s99", 60.0, 1.0, 0.0)).granted
    assert await state.get_backoff("b99", 1.0) is not None
    assert await state.get_backoff("b0", 1.0) is None


async def test_lru_keeps_recently_touched_key() -> None:
    state = MemoryState(max_keys=2, sweep_every=1e9)
    await state.reserve("a", 60.0, 0.0, 10.0)
    await state.reserve("b", 60.0, 0.0, 10.0)
    await state.reserve("a", 60.0, 0.0, 1000.0)  # touch a
    await state.reserve("c", 60.0, 0.0, 10.0)  # evicts b
    assert not (await state.reserve("a", 60.0, 0.0, 0.0)).granted
    assert (await state.reserve("b", 60.0, 0.0, 0.0)).granted


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryState(max_keys=0)
