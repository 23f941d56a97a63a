"""Two proxy replicas on one Redis (issue 22): the site's budget, the fair queue's bookkeeping
and its back-off are shared, so the site sees the same pace and the tenants get the same
shares as through one proxy. Each tenant's crawler threads alternate between the replicas."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import LocalOrigin, Proxy, base_config, tenant
from redisutil import redis_base, redis_url  # noqa: F401
from sitecrawl import gaps, start_crawlers, token, ua, who

DURATION = 6.0
CRAWL_DELAY = 0.3  # 20 slots in all
GAP_SLACK = 0.1
TENANTS = ("kilo", "lima", "mike")


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    origin = LocalOrigin(robots=f"User-agent: *\nCrawl-delay: {CRAWL_DELAY}\n".encode())
    yield origin
    origin.close()


def replica(tmp: Path, state_url: str, port: int) -> Proxy:
    tmp.mkdir()
    cfg = base_config(
        tmp,
        state={"url": state_url},
        tenants=[tenant(tid, [token(tid)], pacing="delay") for tid in TENANTS],
        pacing={"default_min_interval": 0, "max_hold": 30, "scope": "host"},
        platform={"crawl_delay": "shared", "site_budget": {"max_rps": 4, "max_concurrency": 8}},
        destinations={
            "allow_private": True,
            "allowed_ports": ["1-65535"],
            "hosts": {"replicated.test": ["127.0.0.1"]},
        },
    )
    return Proxy(cfg, tmp)


def test_two_replicas_share_one_site_budget(
    tmp_path: Path,
    site: LocalOrigin,
    redis_url: str,  # noqa: F811
) -> None:
    one = replica(tmp_path / "one", redis_url, site.port)
    two = replica(tmp_path / "two", redis_url, site.port)
    try:
        url = f"http://replicated.test:{site.port}"
        until = time.monotonic() + DURATION
        statuses: dict[str, list[int]] = {}
        join: Callable[[], None] = start_crawlers(
            [(p, url, tid, until) for tid in TENANTS for p in (one, two)], statuses
        )
        join()
        assert all(s == 200 for got in statuses.values() for s in got), statuses
        hits = site.page_hits()
        assert min(gaps(hits)) >= CRAWL_DELAY - GAP_SLACK, sorted(h.t for h in hits)
        first = min(h.t for h in hits)
        assert len([h for h in hits if h.t <= first + DURATION]) <= DURATION / CRAWL_DELAY + 1
        counts = Counter(who(h) for h in hits)
        for tid in TENANTS:
            assert 0.25 <= counts[tid] / len(hits) <= 0.42, counts
        assert {ua(tid) for tid in TENANTS} == {h.headers["User-Agent"] for h in hits}
    finally:
        one.stop()
        two.stop()
