"""FailoverState (state.on_error) on a fake backend and a fake clock: closed refuses, open paces
per process, a down backend is left alone for a growing interval and probed by one call at a
time, outages are logged and counted once. The Runtime against a Redis that is not there:
tests/inprocess/test_state_failover_guard.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from crawlguard.state import (
    Backoff,
    MemoryState,
    PacingState,
    Reservation,
    StateBackendError,
    StateUnavailable,
    open_state,
)
from crawlguard.state.failover import MAX_DOWN_INTERVAL, MIN_DOWN_INTERVAL, FailoverState


class FakeClock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FlakyState:
    """A backend that answers like MemoryState until `down`; counts the calls that reach it.
    With `gate` set, each call waits for it first (a slow probe)."""

    def __init__(self) -> None:
        self.inner = MemoryState()
        self.down = False
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def _enter(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StateBackendError("redis://127.0.0.1:1/0: ConnectionError: refused")

    async def reserve(
        self,
        key: str,
        interval: float,
        now: float,
        max_wait: float,
        *,
        force: bool = False,
        also: tuple[str, ...] = (),
    ) -> Reservation:
        await self._enter()
        return await self.inner.reserve(key, interval, now, max_wait, force=force, also=also)

    async def release(
        self, key: str, slot: float, interval: float, *, also: tuple[str, ...] = ()
    ) -> None:
        await self._enter()
        await self.inner.release(key, slot, interval, also=also)

    async def get_backoff(self, key: str, now: float) -> Backoff | None:
        await self._enter()
        return await self.inner.get_backoff(key, now)

    async def raise_backoff(
        self, key: str, now: float, retry_after: float | None, base: float, cap: float
    ) -> Backoff:
        await self._enter()
        return await self.inner.raise_backoff(key, now, retry_after, base, cap)

    async def decay_backoff(self, key: str, now: float) -> None:
        await self._enter()
        await self.inner.decay_backoff(key, now)

    async def close(self) -> None:
        self.closed = True


def outage_logs(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    msgs = [r.getMessage() for r in caplog.records if r.name == "crawlguard"]
    return (
        sum("shared pacing state unreachable" in m for m in msgs),
        sum("shared pacing state reachable again" in m for m in msgs),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def primary() -> FlakyState:
    return FlakyState()


async def test_closed_refuses_while_down_and_leaves_the_backend_alone(
    clock: FakeClock, primary: FlakyState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    state = FailoverState(primary, on_error="closed", clock=clock)
    assert state.fallback is None
    assert (await state.reserve("k", 10.0, clock(), 0.0)).granted
    primary.down = True
    with pytest.raises(StateUnavailable) as exc:
        await state.reserve("k", 10.0, clock(), 0.0)
    assert exc.value.retry_after == 1 and state.down
    calls = primary.calls
    for _ in range(50):  # inside the down interval: not one call reaches the backend
        with pytest.raises(StateUnavailable):
            await state.get_backoff("k", clock())
        with pytest.raises(StateUnavailable):
            await state.reserve("k", 10.0, clock(), 0.0)
        # feedback after a decision is dropped, not raised
        await state.release("k", 1.0, 10.0)
        assert await state.raise_backoff("k", clock(), 5.0, 1.0, 60.0) == Backoff(0.0, 0)
        await state.decay_backoff("k", clock())
    assert primary.calls == calls
    assert outage_logs(caplog) == (1, 0)  # once per outage, not per request


async def test_probe_interval_grows_while_down_and_resets_on_recovery(
    clock: FakeClock, primary: FlakyState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    state = FailoverState(primary, on_error="closed", clock=clock)
    primary.down = True
    with pytest.raises(StateUnavailable):
        await state.reserve("k", 1.0, clock(), 0.0)
    expected = MIN_DOWN_INTERVAL
    probes = []
    for _ in range(8):
        clock.advance(expected - 0.01)  # not yet: skipped
        before = primary.calls
        with pytest.raises(StateUnavailable):
            await state.reserve("k", 1.0, clock(), 0.0)
        assert primary.calls == before
        clock.advance(0.02)  # due now: exactly one probe, which fails
        with pytest.raises(StateUnavailable) as exc:
            await state.reserve("k", 1.0, clock(), 0.0)
        assert primary.calls == before + 1
        expected = min(expected * 2, MAX_DOWN_INTERVAL)
        probes.append(expected)
        assert exc.value.retry_after == max(1, int(-(-expected // 1)))
    assert probes[:4] == [0.5, 1.0, 2.0, 4.0] and probes[-1] == MAX_DOWN_INTERVAL
    primary.down = False
    clock.advance(MAX_DOWN_INTERVAL)
    assert (await state.reserve("k", 1.0, clock(), 0.0)).granted  # the probe succeeds
    assert not state.down
    assert outage_logs(caplog) == (1, 1)
    # Exact again: the backend decides every call from now on.
    before = primary.calls
    assert not (await state.reserve("k", 1.0, clock(), 0.0)).granted
    assert primary.calls == before + 1
    # A new outage starts from the shortest interval again.
    primary.down = True
    with pytest.raises(StateUnavailable):
        await state.reserve("k", 1.0, clock(), 0.0)
    clock.advance(MIN_DOWN_INTERVAL)
    before = primary.calls
    with pytest.raises(StateUnavailable):
        await state.reserve("k", 1.0, clock(), 0.0)
    assert primary.calls == before + 1
    assert outage_logs(caplog) == (2, 1)


async def test_one_probe_at_a_time(clock: FakeClock, primary: FlakyState) -> None:
    state = FailoverState(primary, on_error="closed", clock=clock)
    primary.down = True
    with pytest.raises(StateUnavailable):
        await state.reserve("k", 1.0, clock(), 0.0)
    clock.advance(MIN_DOWN_INTERVAL)
    primary.gate = asyncio.Event()  # the probe hangs (until its socket timeout, in Redis)
    probe = asyncio.create_task(state.reserve("k", 1.0, clock(), 0.0))
    while primary.calls == 1:
        await asyncio.sleep(0)
    for _ in range(20):  # everyone else skips the backend meanwhile
        with pytest.raises(StateUnavailable):
            await state.reserve("k", 1.0, clock(), 0.0)
    assert primary.calls == 2
    primary.down = False
    primary.gate.set()
    assert (await probe).granted
    assert not state.down


async def test_calls_already_under_way_do_not_lengthen_the_interval(
    clock: FakeClock, primary: FlakyState
) -> None:
    state = FailoverState(primary, on_error="closed", clock=clock)
    primary.gate = asyncio.Event()
    primary.down = True
    calls = [asyncio.create_task(state.reserve("k", 1.0, clock(), 0.0)) for _ in range(10)]
    while primary.calls < 10:
        await asyncio.sleep(0)
    primary.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, StateUnavailable) for r in results)
    clock.advance(MIN_DOWN_INTERVAL)  # the first interval, not 10 doublings of it
    primary.gate = None
    primary.down = False
    assert (await state.reserve("k", 1.0, clock(), 0.0)).granted


async def test_open_paces_per_process_while_down_and_counts_each_outage_once(
    clock: FakeClock, primary: FlakyState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    fallbacks: list[int] = []
    state = FailoverState(
        primary, on_error="open", clock=clock, on_fallback=lambda: fallbacks.append(1)
    )
    assert isinstance(state.fallback, MemoryState)
    assert (await state.reserve("k", 10.0, clock(), 0.0)).granted  # in the backend
    primary.down = True
    # The fallback knows nothing of the backend's slot, but paces within the process.
    assert (await state.reserve("k", 10.0, clock(), 0.0)).granted
    refused = await state.reserve("k", 10.0, clock(), 0.0)
    assert not refused.granted and refused.wait == 10.0
    await state.raise_backoff("b", clock(), 30.0, 1.0, 60.0)
    assert await state.get_backoff("b", clock()) == Backoff(30.0, 1)
    assert len(fallbacks) == 1 and outage_logs(caplog) == (1, 0)
    # Back: the backend decides again (it still holds its own slot for "k").
    primary.down = False
    clock.advance(MIN_DOWN_INTERVAL)
    res = await state.reserve("k", 10.0, clock(), 0.0)
    assert not res.granted and res.wait == pytest.approx(10.0 - MIN_DOWN_INTERVAL)
    assert await state.get_backoff("b", clock()) is None  # the fallback's record stays there
    assert outage_logs(caplog) == (1, 1)
    # A second outage is counted again.
    primary.down = True
    await state.reserve("x", 1.0, clock(), 0.0)
    await state.reserve("y", 1.0, clock(), 0.0)
    assert len(fallbacks) == 2 and outage_logs(caplog) == (2, 1)


async def test_close_closes_the_backend_even_when_it_fails(primary: FlakyState) -> None:
    async def broken_close() -> None:
        raise StateBackendError("gone")

    state = FailoverState(primary, on_error="open")
    await state.close()
    assert primary.closed
    primary.close = broken_close  # type: ignore[method-assign]
    await FailoverState(primary, on_error="closed").close()  # logged, not raised


async def test_an_unforeseen_error_is_a_bug_not_an_outage(
    clock: FakeClock, primary: FlakyState, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug is logged as one and raised (the request fails closed at the proxy's last gate),
    not hidden behind `on_error: open` as if Redis had gone away."""
    caplog.set_level(logging.INFO, logger="crawlguard")

    async def broken(*args: object, **kwargs: object) -> Reservation:
        raise RuntimeError("unexpected reply")

    primary.reserve = broken  # type: ignore[method-assign]
    state = FailoverState(primary, on_error="open", clock=clock)
    with pytest.raises(RuntimeError, match="unexpected reply"):
        await state.reserve("k", 1.0, clock(), 0.0)
    assert not state.down and outage_logs(caplog) == (0, 0)
    assert "crawlguard bug" in caplog.text and "RuntimeError: unexpected reply" in caplog.text


def test_bad_on_error_is_refused(primary: FlakyState) -> None:
    with pytest.raises(ValueError, match="on_error"):
        FailoverState(primary, on_error="sometimes")  # type: ignore[arg-type]


async def test_open_state_factory() -> None:
    assert isinstance(open_state("memory://"), MemoryState)
    closed = open_state("redis://127.0.0.1:6379/0?prefix=factory")
    opened = open_state("redis://127.0.0.1:6379/0", "open")
    try:
        assert isinstance(closed, FailoverState) and closed.fallback is None
        assert isinstance(opened, FailoverState) and isinstance(opened.fallback, MemoryState)
        assert "crawlguard:factory:" in repr(closed)
    finally:
        await closed.close()
        await opened.close()
    with pytest.raises(ValueError, match=r"state\.url"):
        open_state("mysql://x")


def test_flaky_state_is_a_pacing_state() -> None:
    state: PacingState = FlakyState()
    assert state is not None
