"""One robots.txt cache across replicas (issue 11): `RobotsCache` instances sharing a Redis.

Each cache gets its own Redis client, as separate proxy processes would. Every test uses its
own key prefix (redisutil `redis_url`) or a private redis-server it may kill. Nothing asserts
on elapsed time: tests wait on conditions (`eventually` is the async counterpart of
harness.wait_for, needed because the origins here run on the test's own event loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from aiohttp import web
from harness import LocalOrigin, Proxy, Route, base_config
from origins import RecordingOrigin, closed_port, respond, routes
from redisutil import RedisServer, private_redis, redis_base, redis_url  # noqa: F401

from crawlguard.policy.robots import MAX_BYTES
from crawlguard.robots.cache import Claim, Origin, RobotsCache, RobotsEntry, SharedRecord
from crawlguard.robots.shared import RedisRobots, open_shared_robots
from crawlguard.store import open_store

pytestmark = pytest.mark.timeout(60)

UA = "crawlguard-test/1.0 (+https://ops.example/crawlguard)"
ROBOTS = b"User-agent: *\nDisallow: /private\n"
UNREACHABLE = "shared robots.txt cache unreachable"
RECOVERED = "shared robots.txt cache reachable again"

Factory = Callable[..., RobotsCache]


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0
) -> bool:
    """Poll `predicate` (sync or async) until true or `timeout` s, without blocking the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.02)
    return False


def split_url(url: str) -> tuple[str, str]:
    base, _, prefix = url.partition("?prefix=")
    return base, prefix


@pytest.fixture
def inspect_redis(redis_url: str) -> Iterator[redis.Redis]:  # noqa: F811
    client = redis.Redis.from_url(split_url(redis_url)[0])
    yield client
    client.close()


@pytest.fixture
async def names(redis_url: str) -> AsyncIterator[RedisRobots]:  # noqa: F811
    """A store on this test's prefix, for key names (and direct calls)."""
    store = RedisRobots.from_url(redis_url)
    yield store
    await store.close()


@pytest.fixture
async def make_cache(redis_url: str) -> AsyncIterator[Factory]:  # noqa: F811
    """RobotsCache instances, each with its own client on this test's Redis prefix."""
    caches: list[RobotsCache] = []

    def make(url: str | None = None, **kwargs: Any) -> RobotsCache:
        kwargs.setdefault("user_agent", UA)
        kwargs.setdefault("fetch_timeout", 2)
        kwargs.setdefault("shared", RedisRobots.from_url(url or redis_url))
        cache = RobotsCache(**kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


def robots_origin(*args: Any, **kwargs: Any) -> RecordingOrigin:
    return RecordingOrigin(routes({"/robots.txt": respond(*args, **kwargs)}))


def fetches(origin: RecordingOrigin) -> int:
    return len(origin.hits_for("/robots.txt"))


def allowed(entry: RobotsEntry, path: str) -> bool:
    return entry.rules.decide("AcmeBot", path).allowed


def keys(store: RedisRobots, origin: Origin) -> tuple[str, str]:
    return store.entry_key(origin), store.lock_key(origin)


class Counting:
    """A SharedRobots that counts what the cache asks of the real one."""

    def __init__(self, inner: RedisRobots) -> None:
        self.inner = inner
        self.claims = 0
        self.publishes = 0

    async def claim(self, origin: Origin, token: str, lock_ttl: float) -> Claim | None:
        self.claims += 1
        return await self.inner.claim(origin, token, lock_ttl)

    async def publish(self, origin: Origin, record: SharedRecord, token: str | None) -> None:
        self.publishes += 1
        await self.inner.publish(origin, record, token)

    async def release(self, origin: Origin, token: str) -> None:
        await self.inner.release(origin, token)

    async def close(self) -> None:
        await self.inner.close()


# -- one fetch for all replicas -----------------------------------------------------------------


async def test_concurrent_misses_on_two_replicas_fetch_once(make_cache: Factory) -> None:
    results: list[str] = []
    a, b = make_cache(on_fetch=results.append), make_cache(on_fetch=results.append)
    async with robots_origin(body=ROBOTS, delay=0.2) as origin:
        gets = [cache.get(origin.origin) for _ in range(10) for cache in (a, b)]
        entries = await asyncio.gather(*gets)
        assert fetches(origin) == 1
    assert results == ["ok"]  # one fetch, by one of the two
    assert {e.result for e in entries} == {"ok"}
    assert {e.sha256 for e in entries} == {entries[0].sha256}
    assert all(not allowed(e, "/private") and allowed(e, "/public") for e in entries)


async def test_second_replica_serves_from_redis(make_cache: Factory) -> None:
    fetched_a: list[str] = []
    fetched_b: list[str] = []
    a = make_cache(on_fetch=fetched_a.append)
    b = make_cache(on_fetch=fetched_b.append)
    async with robots_origin(body=ROBOTS) as origin:
        first = await a.get(origin.origin)
        second = await b.get(origin.origin)
        assert fetches(origin) == 1
    assert fetched_a == ["ok"] and fetched_b == []
    assert second.result == "ok" and second.available
    assert second.sha256 == first.sha256 and second.body == ROBOTS
    assert not allowed(second, "/private") and allowed(second, "/")
    assert b.peek(origin.origin) is second  # now in b's local cache too


async def test_record_layout_ttl_and_lock_released(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    cache = make_cache()
    headers = {"Cache-Control": "max-age=120"}
    async with robots_origin(body=ROBOTS, headers=headers) as origin:
        entry = await cache.get(origin.origin)
    entry_key, lock_key = keys(names, origin.origin)
    prefix = split_url(names.description)[1]
    assert entry_key == f"crawlguard:{prefix}:robots:{{http://127.0.0.1:{origin.port}}}"
    assert lock_key == f"crawlguard:{prefix}:robots-lock:{{http://127.0.0.1:{origin.port}}}"
    record = inspect_redis.hgetall(entry_key)
    assert record[b"result"] == b"ok" and record[b"status"] == b"200"
    assert record[b"sha256"].decode() == entry.sha256 and record[b"body"] == ROBOTS
    assert record[b"v"] == b"1" and record[b"failures"] == b"0"
    assert 0 < inspect_redis.pttl(entry_key) <= 120_000  # TTL = the entry's lifetime
    assert not inspect_redis.exists(lock_key)  # released by the publish


async def test_hot_path_does_not_touch_redis(make_cache: Factory, redis_url: str) -> None:  # noqa: F811
    counting = Counting(RedisRobots.from_url(redis_url))
    cache = make_cache(shared=counting)
    async with robots_origin(body=ROBOTS) as origin:
        entry = await cache.get(origin.origin)
        for _ in range(20):
            assert await cache.get(origin.origin) is entry
            assert cache.peek(origin.origin) is entry
    assert counting.claims == 1 and counting.publishes == 1


# -- expiry and failures -------------------------------------------------------------------


async def test_expiry_is_honoured_across_replicas(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    a, b = make_cache(max_age=1.5), make_cache(max_age=1.5)
    async with robots_origin(body=ROBOTS) as origin:
        await a.get(origin.origin)
        await b.get(origin.origin)
        assert fetches(origin) == 1
        entry_key, _ = keys(names, origin.origin)
        assert inspect_redis.pttl(entry_key) <= 1500  # the Redis TTL is the entry's lifetime

        async def refetched() -> bool:
            await b.get(origin.origin)
            return fetches(origin) == 2

        assert await eventually(refetched)
        assert inspect_redis.hget(entry_key, "result") == b"ok"


async def test_failure_entry_is_shared(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    fetched_b: list[str] = []
    a = make_cache(backoff_base=30)
    b = make_cache(backoff_base=30, on_fetch=fetched_b.append)
    async with robots_origin(503, headers={"Retry-After": "5"}) as origin:
        failed = await a.get(origin.origin)
        assert failed.result == "5xx" and not failed.available
        seen = await b.get(origin.origin)
        assert fetches(origin) == 1 and fetched_b == []
    assert seen.result == "5xx" and not seen.available and seen.detail == "HTTP 503"
    assert 1 <= seen.retry_after(seen.fetched_at) <= 30
    entry_key, _ = keys(names, origin.origin)
    assert inspect_redis.hget(entry_key, "status") == b"503"
    assert inspect_redis.hget(entry_key, "failures") == b"1"
    assert not inspect_redis.hexists(entry_key, "body")
    assert 0 < inspect_redis.pttl(entry_key) <= 30_000


async def test_back_off_continues_across_replicas(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    a = make_cache(backoff_base=1, backoff_max=60)
    b = make_cache(backoff_base=1, backoff_max=60)
    async with robots_origin(500) as origin:
        await a.get(origin.origin)
        await b.get(origin.origin)  # adopts a's failure, failures == 1
        assert fetches(origin) == 1

        async def b_refetched() -> bool:
            await b.get(origin.origin)
            return fetches(origin) == 2

        assert await eventually(b_refetched)
    entry_key, _ = keys(names, origin.origin)
    assert inspect_redis.hget(entry_key, "failures") == b"2"  # doubled, not restarted
    assert inspect_redis.pttl(entry_key) <= 2000  # 2 x backoff_base


async def test_stale_copy_is_shared_with_a_replica_that_never_saw_it(make_cache: Factory) -> None:
    failing = False

    async def robots(request: web.Request) -> web.Response:
        if failing:
            return web.Response(status=503)
        return web.Response(body=ROBOTS)

    a = make_cache(max_age=0.3, backoff_base=30)
    async with RecordingOrigin(routes({"/robots.txt": robots})) as origin:
        good = await a.get(origin.origin)
        failing = True

        async def stale() -> bool:
            return (await a.get(origin.origin)).result == "stale"

        assert await eventually(stale)
        before = fetches(origin)
        late = make_cache(max_age=0.3, backoff_base=30)  # a replica started after the outage
        entry = await late.get(origin.origin)
        assert fetches(origin) == before
    assert entry.result == "stale" and entry.available and entry.sha256 == good.sha256
    assert not allowed(entry, "/private") and entry.detail.startswith("5xx")


# -- locks -------------------------------------------------------------------------------


async def test_dead_lock_holder_other_replicas_fetch_after_its_lock_expires(
    make_cache: Factory,
    names: RedisRobots,
    redis_url: str,  # noqa: F811
) -> None:
    a, b = make_cache(), make_cache()
    client = redis.asyncio.Redis.from_url(split_url(redis_url)[0])
    dead = f"dead-{secrets.token_hex(8)}"
    lock_at_fetch: list[bytes | None] = []

    async def robots(request: web.Request) -> web.Response:
        lock_at_fetch.append(await client.get(lock_key))
        return web.Response(body=ROBOTS)

    try:
        async with RecordingOrigin(routes({"/robots.txt": robots})) as origin:
            _, lock_key = keys(names, origin.origin)
            # A replica took the lock and died: nobody will ever publish or release it.
            assert await client.set(lock_key, dead, nx=True, px=1500)
            entries = await asyncio.gather(a.get(origin.origin), b.get(origin.origin))
            assert fetches(origin) == 1
        assert lock_at_fetch[0] != dead  # fetched only once the dead holder's lock was gone
        assert all(e.result == "ok" and not allowed(e, "/private") for e in entries)
        assert not await client.exists(lock_key)
    finally:
        await client.aclose()


async def test_close_releases_the_lock_for_other_replicas(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    a = make_cache()
    async with robots_origin(body=ROBOTS, delay=5) as origin:
        _, lock_key = keys(names, origin.origin)
        task = asyncio.create_task(a.get(origin.origin))
        assert await eventually(lambda: fetches(origin) == 1)
        assert inspect_redis.exists(lock_key)
        await a.close()
        assert (await task).result == "error"
        assert not inspect_redis.exists(lock_key)


# -- records that cannot be used ---------------------------------------------------------------


async def test_tampered_record_is_ignored_and_replaced(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    a, b = make_cache(), make_cache()
    async with robots_origin(body=ROBOTS) as origin:
        good = await a.get(origin.origin)
        entry_key, _ = keys(names, origin.origin)
        inspect_redis.hset(entry_key, "body", b"User-agent: *\nAllow: /\n")  # sha256 kept
        entry = await b.get(origin.origin)
        assert fetches(origin) == 2  # b did not trust it: fetched itself
    assert entry.sha256 == good.sha256 and not allowed(entry, "/private")
    assert inspect_redis.hget(entry_key, "body") == ROBOTS


async def test_500_kib_cap_holds_for_shared_bodies(
    make_cache: Factory, names: RedisRobots, inspect_redis: redis.Redis
) -> None:
    big = b"User-agent: *\nDisallow: /early\n" + b"# padding padding padding\n" * 30_000
    assert len(big) > MAX_BYTES
    a, b = make_cache(), make_cache()
    async with robots_origin(body=big) as origin:
        first = await a.get(origin.origin)
        second = await b.get(origin.origin)
        assert fetches(origin) == 1
    entry_key, _ = keys(names, origin.origin)
    stored = inspect_redis.hget(entry_key, "body")
    assert stored is not None and len(stored) <= MAX_BYTES and big.startswith(stored)
    assert second.sha256 == first.sha256 and not allowed(second, "/early")


# -- Redis unavailable -------------------------------------------------------------------------


async def test_redis_unavailable_each_replica_fetches_locally(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    url = f"redis://127.0.0.1:{closed_port()}/0?prefix=down&timeout=0.2"
    a, b = make_cache(url), make_cache(url)
    async with robots_origin(body=ROBOTS) as one, robots_origin(404) as two:
        entries = await asyncio.gather(a.get(one.origin), b.get(one.origin))
        assert fetches(one) == 2  # no sharing, but no failure either
        assert all(e.result == "ok" and not allowed(e, "/private") for e in entries)
        assert (await a.get(two.origin)).result == "4xx"
        assert (await b.get(two.origin)).result == "4xx"
    assert caplog.text.count(UNREACHABLE) == 2  # once per replica, not per miss


async def test_redis_killed_and_restarted_sharing_resumes(
    make_cache: Factory,
    private_redis: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="crawlguard")
    url = private_redis.url(prefix="restart", timeout="0.2")
    stores = [RedisRobots.from_url(url), RedisRobots.from_url(url)]
    a, b = (make_cache(shared=store) for store in stores)
    async with (
        robots_origin(body=ROBOTS) as before,
        robots_origin(body=ROBOTS) as during,
        robots_origin(body=ROBOTS) as after,
    ):
        await a.get(before.origin)
        await b.get(before.origin)
        assert fetches(before) == 1
        private_redis.kill()

        await a.get(during.origin)
        await b.get(during.origin)
        assert fetches(during) == 2  # per process while Redis is down
        assert all(store.down for store in stores)

        private_redis.start()  # same port, empty
        probe: Origin = ("http", "probe.invalid", 80)

        async def reachable() -> bool:
            for store in stores:
                await store.claim(probe, secrets.token_hex(4), 1.0)
            return not any(store.down for store in stores)

        assert await eventually(reachable)
        await a.get(after.origin)
        await b.get(after.origin)
        assert fetches(after) == 1  # shared again
    assert caplog.text.count(UNREACHABLE) == 2 and caplog.text.count(RECOVERED) == 2


def test_memory_state_has_no_shared_cache() -> None:
    assert open_shared_robots("memory://") is None
    assert isinstance(open_shared_robots("redis://127.0.0.1:1/0?prefix=x"), RedisRobots)


# -- end to end: two proxy processes on one Redis ---------------------------------------------


def robots_fetch_metric(proxy: Proxy) -> float:
    pattern = r"^crawlguard_robots_fetches_total\{[^}]*\} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, proxy.metrics(), re.MULTILINE))


def test_two_proxies_concurrent_first_requests_fetch_robots_once(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    site = LocalOrigin()
    # Slow enough that the first requests through both proxies overlap the fetch.
    site.routes["/robots.txt"] = Route(body=ROBOTS, delay=0.5)
    proxies: list[Proxy] = []
    try:
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            proxies.append(Proxy(base_config(home, state={"url": redis_url}), home))
        a, b = proxies
        with ThreadPoolExecutor(20) as pool:
            codes = list(
                pool.map(
                    lambda i: (a if i % 2 else b).get(site.url(f"/p{i}")).status_code, range(20)
                )
            )
        assert codes == [200] * 20
        assert site.paths(include_robots=True).count("/robots.txt") == 1
        assert robots_fetch_metric(a) + robots_fetch_metric(b) == 1
        # Both enforce the shared copy, and keep its body as evidence for their records.
        assert a.get(site.url("/private/x")).status_code == 403
        assert b.get(site.url("/private/y")).status_code == 403
        assert site.paths(include_robots=True).count("/robots.txt") == 1
        for proxy in proxies:
            (rec,) = proxy.violations("--kind", "robots-disallow")
            assert rec["robots_sha256"] == hashlib.sha256(ROBOTS).hexdigest()
            store = open_store(proxy.config["store"]["url"])
            try:
                assert store.robots_body(rec["robots_sha256"]) == ROBOTS
            finally:
                store.close()
    finally:
        for proxy in proxies:
            proxy.stop()
        site.close()
