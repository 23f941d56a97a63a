"""MemoryState internals: the sweep interval and the max_keys (LRU) bound; and backoff_window.

The semantics every backend shares (reservations, release, force, back-off levels, decay,
idle expiry, concurrency) are tested for MemoryState and RedisState alike in
test_state_contract.py."""

from __future__ import annotations

import pytest

from crawlguard.state import MemoryState, backoff_window


def test_backoff_window_doubles_and_caps() -> None:
    assert [backoff_window(n, 1.0, 3600.0) for n in range(5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff_window(13, 1.0, 3600.0) == 3600.0
    assert backoff_window(10_000, 1.0, 3600.0) == 3600.0


async def test_idle_keys_are_swept() -> None:
    state = MemoryState(sweep_every=10.0, backoff_ttl=5.0)
    for i in range(50):
        await state.reserve(f"s{i}", 1.0, 0.0, 0.0)
        await state.raise_backoff(f"b{i}", 0.0, None, 1.0, 3600.0)
    assert len(state) == 100
    await state.reserve("fresh", 1.0, 20.0, 0.0)
    assert len(state) == 1


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
