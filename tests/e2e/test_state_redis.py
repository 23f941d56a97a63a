"""RedisState beyond the shared contract: the server's clock decides (callers' clocks may differ),
key layout and expiry, prefixes and databases, the script cache, bounded connections, fast
failure on a dead or silent Redis, and recovery through FailoverState after a restart."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from redisutil import RedisServer, private_redis, redis_base, redis_url  # noqa: F401

from crawlguard.state import MemoryState, StateBackendError, StateUnavailable
from crawlguard.state.failover import FailoverState
from crawlguard.state.redis import RedisState

US = 1e-6


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> bool:
    """Poll an async condition (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_replicas_with_clocks_30s_apart_pace_exactly(redis_url: str) -> None:  # noqa: F811
    a, b = RedisState.from_url(redis_url), RedisState.from_url(redis_url)
    try:
        first = await a.reserve("acme http://x:80", 5.0, 1000.0, 0.0)
        assert first.granted
        # B's clock is 30 s ahead: with caller clocks it would think the slot long past.
        ahead = await b.reserve("acme http://x:80", 5.0, 1030.0, 0.0)
        assert not ahead.granted and 0.0 < ahead.wait <= 5.0
        assert ahead.slot == pytest.approx(first.slot + 5.0, abs=US)
        behind = await a.reserve("acme http://x:80", 5.0, 970.0, 0.0)
        assert not behind.granted and behind.slot == ahead.slot
        # Interleaved concurrent reservations through both replicas: one queue, 5 s apart.
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).reserve("acme http://y:80", 5.0, 1000.0 + 30.0 * (i % 2), 200.0)
                for i in range(20)
            )
        )
        slots = sorted(r.slot for r in results if r.granted)
        assert len(slots) == 20 and len(set(slots)) == 20
        assert [y - x for x, y in itertools.pairwise(slots)] == pytest.approx([5.0] * 19, abs=US)
        # Back-off windows too: B, 30 s ahead, sees the window A opened, not 30 s of it gone.
        await a.raise_backoff("acme http://x:80", 1000.0, 60.0, 1.0, 3600.0)
        seen = await b.get_backoff("acme http://x:80", 1030.0)
        assert seen is not None and seen.level == 1 and 55.0 < seen.remaining <= 60.0
        await b.decay_backoff("acme http://x:80", 1030.0)
        seen = await a.get_backoff("acme http://x:80", 1000.0)
        assert seen is not None and seen.level == 0
    finally:
        await a.close()
        await b.close()


async def test_caller_clocks_30s_apart_would_not_pace() -> None:
    """The contrast: one store that trusted its callers' clocks lets the replica whose clock
    is ahead through at once (which is why RedisState reads the server's TIME)."""
    trusting = MemoryState()
    assert (await trusting.reserve("k", 5.0, 1000.0, 0.0)).granted
    assert (await trusting.reserve("k", 5.0, 1030.0, 0.0)).granted


async def test_key_layout_and_every_key_expires(redis_url: str) -> None:  # noqa: F811
    state = RedisState.from_url(redis_url)
    prefix = redis_url.rsplit("prefix=", 1)[1]
    try:
        await state.reserve("acme https://example.com:443", 30.0, 0.0, 0.0)
        await state.raise_backoff("acme https://example.com:443", 0.0, 20.0, 1.0, 3600.0)
        slot_key = f"crawlguard:{prefix}:slot:acme https://example.com:443"
        backoff_key = f"crawlguard:{prefix}:backoff:acme https://example.com:443"
        assert state.slot_key("acme https://example.com:443") == slot_key
        assert state.backoff_key("acme https://example.com:443") == backoff_key
        client = state.client
        assert await client.type(slot_key) == b"string"
        assert await client.type(backoff_key) == b"hash"
        assert set(await client.hgetall(backoff_key)) == {b"until", b"level"}
        # Slot: expires when its next free slot has passed (30 s); back-off: window (20 s) +
        # backoff_ttl (1 h) while the level is above 0.
        assert 25_000 < await client.pttl(slot_key) <= 30_001  # ms, rounded up
        assert 3_615_000 < await client.pttl(backoff_key) <= 3_620_001
        keys = [k async for k in client.scan_iter(match=f"crawlguard:{prefix}:*")]
        assert sorted(keys) == sorted([slot_key.encode(), backoff_key.encode()])
        assert all([await client.pttl(k) > 0 for k in keys])
        await state.decay_backoff("acme https://example.com:443", 0.0)  # level 0: window only
        assert 15_000 < await client.pttl(backoff_key) <= 20_001
    finally:
        await state.close()


async def test_prefixes_and_databases_are_separate_namespaces(
    private_redis: RedisServer,  # noqa: F811
) -> None:
    states = [
        RedisState.from_url(private_redis.url(prefix="one")),
        RedisState.from_url(private_redis.url(prefix="two")),
        RedisState.from_url(private_redis.url(db=1)),
        RedisState.from_url(private_redis.url()),
    ]
    try:
        for state in states:  # the same key in four namespaces: four first requests
            assert (await state.reserve("k", 60.0, 0.0, 0.0)).granted
        for state in states:
            assert not (await state.reserve("k", 60.0, 0.0, 0.0)).granted
        assert await states[3].client.exists("crawlguard:slot:k") == 1
        assert await states[3].client.exists("crawlguard:one:slot:k") == 1
        assert await states[2].client.dbsize() == 1
    finally:
        for state in states:
            await state.close()


async def test_scripts_are_reloaded_when_the_server_forgot_them(
    private_redis: RedisServer,  # noqa: F811
) -> None:
    state = RedisState.from_url(private_redis.url())
    try:
        assert (await state.reserve("k", 60.0, 0.0, 0.0)).granted
        await state.client.script_flush()
        assert not (await state.reserve("k", 60.0, 0.0, 0.0)).granted  # NOSCRIPT -> loaded
        assert await state.get_backoff("k", 0.0) is None
    finally:
        await state.close()


async def test_connections_are_bounded_by_the_pool(private_redis: RedisServer) -> None:  # noqa: F811
    state = RedisState.from_url(private_redis.url(max_connections=2))
    try:
        results = await asyncio.gather(*(state.reserve("k", 1.0, 0.0, 1000.0) for _ in range(60)))
        assert all(r.granted for r in results)  # they queued for a connection, none failed
        clients = await state.client.client_list()
        assert len([c for c in clients if c.get("name") == "crawlguard"]) <= 2
    finally:
        await state.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def test_a_silent_redis_fails_fast_instead_of_holding_requests(silent_server: int) -> None:
    url = f"redis://127.0.0.1:{silent_server}/0?timeout=0.2"
    state = RedisState.from_url(url)
    guarded = FailoverState(RedisState.from_url(url), on_error="closed")
    try:
        with pytest.raises(StateBackendError, match="Timeout"):
            await state.reserve("k", 1.0, 0.0, 0.0)
        with pytest.raises(StateUnavailable) as exc:
            await guarded.reserve("k", 1.0, 0.0, 0.0)
        assert exc.value.retry_after >= 1
    finally:
        await state.close()
        await guarded.close()


async def test_nothing_listening_is_a_backend_error(private_redis: RedisServer) -> None:  # noqa: F811
    url = private_redis.url()
    private_redis.kill()
    state = RedisState.from_url(url)
    try:
        with pytest.raises(StateBackendError, match=r"127\.0\.0\.1"):
            await state.get_backoff("k", 0.0)
    finally:
        await state.close()


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_redis_killed_and_restarted_pacing_exact_again(
    private_redis: RedisServer,  # noqa: F811
    on_error: str,
) -> None:
    fallbacks: list[int] = []
    state = FailoverState(
        RedisState.from_url(private_redis.url(prefix="t")),
        on_error=on_error,  # type: ignore[arg-type]
        on_fallback=lambda: fallbacks.append(1),
    )
    try:
        assert (await state.reserve("k", 60.0, time.monotonic(), 0.0)).granted
        private_redis.kill()
        if on_error == "closed":
            with pytest.raises(StateUnavailable):
                await state.reserve("k", 60.0, time.monotonic(), 0.0)
            with pytest.raises(StateUnavailable):
                await state.get_backoff("k", time.monotonic())
            assert fallbacks == []
        else:  # per-process pacing meanwhile: granted once, then paced
            assert (await state.reserve("k", 60.0, time.monotonic(), 0.0)).granted
            assert not (await state.reserve("k", 60.0, time.monotonic(), 0.0)).granted
            assert fallbacks == [1]
        assert state.down
        private_redis.start()  # same port, empty (nothing is kept on disk)

        async def recovered() -> bool:
            try:
                await state.get_backoff("k", time.monotonic())
            except StateUnavailable:
                return False
            return not state.down

        assert await until(recovered)
        # Exact again: the restarted Redis decides, and it has no slot for "k" yet.
        assert (await state.reserve("k", 60.0, time.monotonic(), 0.0)).granted
        refused = await state.reserve("k", 60.0, time.monotonic(), 0.0)
        assert not refused.granted and 55.0 < refused.wait <= 60.0
        assert len(fallbacks) == (1 if on_error == "open" else 0)
    finally:
        await state.close()
