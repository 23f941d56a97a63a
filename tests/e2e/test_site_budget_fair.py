"""One polite platform, fairly shared (issue 22), on the wire: the real proxy, `delay` tenants
crawling with real clients, and origins that log what arrives.

Three scenarios run at once on three sites (each a name of 127.0.0.1 with its own origin),
so the suite waits 20 s once: three equal tenants share a `Crawl-delay: 1` site; three
tenants weighted 2:1:1 share another; on a third, one of three tenants stops half-way and
the other two take its slots. The origin's own log is the evidence: the platform's pace on
each site, and who got the slots.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
from harness import LocalOrigin, Proxy, base_config, tenant
from sitecrawl import DRAIN, gaps, start_crawlers, token, who

DURATION = 20.0
CRAWL_DELAY = 1.0
GAP_SLACK = 0.1  # a forward may leave a little late after its slot, never early
THREADS = 2  # requests each tenant keeps outstanding
SCENARIOS = {
    "equal.test": {"alpha": 1, "bravo": 1, "charlie": 1},
    "weighted.test": {"delta": 2, "echo": 1, "foxtrot": 1},
    "stop.test": {"golf": 1, "hotel": 1, "india": 1},
}
STOPS = {"india": DURATION / 2}  # tenant -> seconds after the start it stops asking


@pytest.fixture(scope="module")
def sites() -> Iterator[dict[str, LocalOrigin]]:
    body = f"User-agent: *\nCrawl-delay: {CRAWL_DELAY:g}\nAllow: /\n".encode()
    made = {name: LocalOrigin(robots=body) for name in SCENARIOS}
    yield made
    for site in made.values():
        site.close()


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, sites: dict[str, LocalOrigin]
) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("site-budget-fair")
    tenants = [
        tenant(tid, [token(tid)], pacing="delay", weight=weight)
        for shares in SCENARIOS.values()
        for tid, weight in shares.items()
    ]
    cfg = base_config(
        tmp,
        tenants=tenants,
        pacing={"default_min_interval": 0, "max_hold": 30, "scope": "host"},
        platform={"crawl_delay": "shared", "site_budget": {"max_rps": 4, "max_concurrency": 8}},
        destinations={
            "allow_private": True,
            "allowed_ports": ["1-65535"],
            "hosts": {name: ["127.0.0.1"] for name in SCENARIOS},
        },
    )
    p = Proxy(cfg, tmp)
    yield p
    p.stop()


def test_shared_crawl_delay_three_delay_tenants(proxy: Proxy, sites: dict[str, LocalOrigin]):
    start = time.monotonic()
    statuses: dict[str, list[int]] = {}
    jobs = [
        (proxy, f"http://{name}:{sites[name].port}", tid, start + STOPS.get(tid, DURATION))
        for name, shares in SCENARIOS.items()
        for tid in shares
        for _ in range(THREADS)
    ]
    start_crawlers(jobs, statuses)()
    bad = {tid: [s for s in got if s != 200] for tid, got in statuses.items()}
    assert not any(bad.values()), (bad, proxy.log()[-3000:])

    # Equal tenants: the site sees one crawler at its Crawl-delay; each tenant about a third.
    hits = sites["equal.test"].page_hits()
    assert min(gaps(hits)) >= CRAWL_DELAY - GAP_SLACK, sorted(h.t - start for h in hits)
    first = min(h.t for h in hits)
    window = [h for h in hits if h.t <= first + DURATION]
    assert len(window) <= DURATION / CRAWL_DELAY + 1
    counts = Counter(who(h) for h in hits)
    for tid in SCENARIOS["equal.test"]:
        assert 0.25 <= counts[tid] / len(hits) <= 0.42, counts

    # Weighted 2:1:1: the first about half.
    hits = sites["weighted.test"].page_hits()
    assert min(gaps(hits)) >= CRAWL_DELAY - GAP_SLACK
    counts = Counter(who(h) for h in hits)
    assert 0.4 <= counts["delta"] / len(hits) <= 0.6, counts
    for tid in ("echo", "foxtrot"):
        assert 0.15 <= counts[tid] / len(hits) <= 0.35, counts

    # One stops (its crawler gives up what it had held and leaves): within two intervals the
    # other two take its slots (work-conserving), and keep taking every one.
    hits = sorted(sites["stop.test"].page_hits(), key=lambda h: h.t)
    assert min(gaps(hits)) >= CRAWL_DELAY - GAP_SLACK
    left_at = start + STOPS["india"] + DRAIN
    assert all(h.t <= left_at for h in hits if who(h) == "india")
    after = [h for h in hits if h.t > left_at]
    shown = [(who(h), round(h.t - start, 2)) for h in hits]
    assert len(after) >= 4 and after[0].t - left_at <= 2 * CRAWL_DELAY + GAP_SLACK, shown
    assert max(gaps(after)) <= 2 * CRAWL_DELAY + GAP_SLACK, shown
    steady = [h for h in after if h.t > left_at + 2 * CRAWL_DELAY]
    assert max(gaps(steady)) <= CRAWL_DELAY + GAP_SLACK, shown
    later = Counter(who(h) for h in after)
    assert set(later) == {"golf", "hotel"} and min(later.values()) >= len(after) // 3, later

    # Operators see the busy sites and the shares (no host in any metric label).
    api = requests.get(
        f"http://127.0.0.1:{proxy.admin_port}/api/sites?sort=busy",
        headers={"Authorization": "Bearer op"},
        timeout=5,
    )
    assert api.status_code == 200, api.text
    views = {v["site"]: v for v in api.json()["sites"]}
    assert {"equal.test", "weighted.test", "stop.test"} <= set(views), views
    equal = views["equal.test"]
    assert equal["interval"] == pytest.approx(CRAWL_DELAY)
    assert {t["tenant"] for t in equal["tenants"]} == set(SCENARIOS["equal.test"])
    metrics = proxy.metrics()
    assert "equal.test" not in metrics
    held = _counter(metrics, "crawlguard_requests_total", 'decision="site-budget"')
    assert held > 0  # held for the site's budget: counted, not recorded as violations
    assert proxy.violations("--kind", "site-budget") == []


def _counter(text: str, name: str, label: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )
