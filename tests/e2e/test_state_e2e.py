"""Shared pacing state on the wire (issue 11): real proxies (`crawlguard run`) on one Redis.

* Two proxies on different ports sharing one Redis pace a tenant as one proxy would.
* Redis killed mid-run: `state.on_error: closed` answers 503 `state-unavailable` (with
  Retry-After, recorded); `open` paces per process. Redis restarted on the same port: pacing is
  shared and exact again.

Crawl-delay is 60 s everywhere, so no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from harness import LocalOrigin, Proxy, base_config, wait_for
from redisutil import RedisServer, private_redis, redis_base, redis_url  # noqa: F401

ROBOTS = b"User-agent: *\nCrawl-delay: 60\nAllow: /\n"
UNREACHABLE = "shared pacing state unreachable"
RECOVERED = "shared pacing state reachable again"


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    origin = LocalOrigin(robots=ROBOTS)
    yield origin
    origin.close()


def redis_config(tmp: Path, url: str, **state: Any) -> dict[str, Any]:
    return base_config(
        tmp,
        state={"url": url, **state},
        pacing={"default_min_interval": 0, "max_hold": 5},
    )


def start(tmp: Path, name: str, url: str, **state: Any) -> Proxy:
    home = tmp / name
    home.mkdir()
    return Proxy(redis_config(home, url, **state), home)


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}{re.escape('{' + sel + '}') if sel else ''} (\S+)$"
    m = re.search(pattern, proxy.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def assert_crawl_delay(r: Any) -> None:
    assert r.status_code == 429, (r.status_code, r.text)
    assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
    assert 1 <= int(r.headers["Retry-After"]) <= 60


def test_two_proxies_sharing_redis_pace_a_tenant_as_one(
    tmp_path: Path,
    site: LocalOrigin,
    redis_url: str,  # noqa: F811
) -> None:
    a = start(tmp_path, "a", redis_url)
    try:
        b = start(tmp_path, "b", redis_url)
        try:
            assert a.get(site.url("/p1")).status_code == 200
            # Too soon, through the other proxy: refused by the shared slot.
            r = b.get(site.url("/p2"))
            assert_crawl_delay(r)
            assert int(r.headers["Retry-After"]) > 50
            assert_crawl_delay(a.get(site.url("/p3")))
            assert_crawl_delay(b.get(site.url("/p4")))
            assert site.paths() == ["/p1"]
            recs = [v for v in b.violations("--kind", "crawl-delay") if "/p" in v["url"]]
            assert [v["url"] for v in recs] == [site.url("/p4"), site.url("/p2")]
            assert all(v["crawl_delay"] == 60 and v["action"] == "blocked" for v in recs)
        finally:
            b.stop()
    finally:
        a.stop()


def test_redis_killed_on_error_closed_refuses_503_then_recovers(
    tmp_path: Path,
    site: LocalOrigin,
    private_redis: RedisServer,  # noqa: F811
) -> None:
    proxy = start(tmp_path, "closed", private_redis.url(prefix="e2e"), on_error="closed")
    try:
        assert proxy.get(site.url("/before")).status_code == 200
        assert_crawl_delay(proxy.get(site.url("/too-soon")))
        private_redis.kill()

        refused = [proxy.get(site.url(f"/down{i}")) for i in range(3)]
        for r in refused:
            assert r.status_code == 503, (r.status_code, r.text)
            assert r.headers["X-Crawlguard-Decision"] == "state-unavailable"
            assert int(r.headers["Retry-After"]) >= 1
            assert "state-unavailable" in r.text
        recs = proxy.violations("--kind", "state-unavailable")
        assert sorted(v["url"] for v in recs) == [site.url(f"/down{i}") for i in range(3)]
        for rec in recs:
            assert rec["action"] == "blocked" and rec["tenant"] == "acme"
            assert rec["retry_after"] >= 1 and rec["rule"] == "state.on_error: closed"
        counted = metric(
            proxy, "crawlguard_requests_total", tenant="acme", decision="state-unavailable"
        )
        assert counted == 3
        assert proxy.log().count(UNREACHABLE) == 1  # once per outage, not per request
        assert site.paths() == ["/before"]  # nothing went out unpaced

        private_redis.start()  # same port, empty
        codes: list[int] = []

        def forwarded() -> bool:
            r = proxy.get(site.url(f"/poll{len(codes)}"))
            codes.append(r.status_code)
            assert r.status_code in (200, 503), (r.status_code, r.text)
            return r.status_code == 200

        assert wait_for(forwarded, timeout=30), codes
        # Exact again: a too-soon request is refused by the shared state (closed mode has no
        # other state that could refuse it).
        assert_crawl_delay(proxy.get(site.url("/after")))
        assert proxy.log().count(RECOVERED) == 1
        assert len(site.paths()) == 2
    finally:
        proxy.stop()


def test_redis_killed_on_error_open_paces_per_process_then_shares_again(
    tmp_path: Path,
    site: LocalOrigin,
    private_redis: RedisServer,  # noqa: F811
) -> None:
    url = private_redis.url(prefix="e2e")
    proxy = start(tmp_path, "open", url, on_error="open")
    try:
        assert proxy.get(site.url("/before")).status_code == 200
        private_redis.kill()

        # Redis is gone: this process paces from its own memory (which has no slot yet).
        assert proxy.get(site.url("/down1")).status_code == 200
        assert_crawl_delay(proxy.get(site.url("/down2")))
        assert_crawl_delay(proxy.get(site.url("/down3")))
        assert proxy.log().count(UNREACHABLE) == 1
        assert metric(proxy, "crawlguard_state_fallbacks_total") == 1
        assert proxy.violations("--kind", "state-unavailable") == []

        private_redis.start()  # same port, empty
        codes: list[int] = []

        def forwarded() -> bool:
            # The process's memory holds /down1's slot for 60 s: a 200 is Redis deciding.
            r = proxy.get(site.url(f"/poll{len(codes)}"))
            codes.append(r.status_code)
            assert r.status_code in (200, 429), (r.status_code, r.text)
            return r.status_code == 200

        assert wait_for(forwarded, timeout=30), codes
        # The shared state holds the slot again (with an expiry), and refuses a too-soon one.
        client = redis.Redis(port=private_redis.port, socket_timeout=2)
        try:
            keys = list(client.scan_iter(match="crawlguard:e2e:slot:acme *"))
            assert len(keys) == 1 and 0 < client.pttl(keys[0]) <= 60_001
        finally:
            client.close()
        assert_crawl_delay(proxy.get(site.url("/after")))
        assert proxy.log().count(RECOVERED) == 1
        assert metric(proxy, "crawlguard_state_fallbacks_total") == 1
        assert site.paths() == ["/before", "/down1", f"/poll{len(codes) - 1}"]
    finally:
        proxy.stop()
