"""The platform's per-site budget (issue 22) on the wire, one behaviour per test: the cap
without a Crawl-delay, concurrency, overrides, the site backing off as one (429/503,
RateLimit headers, sustained 5xx), `per-tenant` mode, and the registrable-domain site key.

Every site is a name of 127.0.0.1 (`destinations.hosts`) with an origin of its own, so the
platform's budget is per name, as it would be per host on the web. The origin's log shows what
was forwarded; the proxy's answers show who was refused and why.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import LocalOrigin, Proxy, Route, base_config, tenant, wait_for

ACME_UA = "AcmeBot/1.0 (+https://acme.example/bot)"
HOOLI_UA = "HooliBot/2.0 (+https://hooli.example/bot)"
GLOBEX_UA = "GlobexCrawler/1.0 (+https://globex.example/bot)"
SLOW_UA = "SlowBot/1.0 (+https://slow.example/bot)"
UAS = {"acme": ACME_UA, "hooli": HOOLI_UA, "globex": GLOBEX_UA, "slowco": SLOW_UA}
NAMES = [
    "cap.test", "fast.test", "conc.test", "push.test", "calm.test", "quota.test", "err.test",
    "shared.test", "pt.test", "a.shop.example.com", "b.shop.example.com",
]  # fmt: skip
TENANTS = [
    tenant("acme", ["AcmeBot"]),
    tenant("hooli", ["HooliBot"]),
    tenant("globex", ["GlobexCrawler"], mode="monitor"),
    tenant("slowco", ["SlowBot"], pacing="delay"),
]


def config(tmp: Path, port_of: dict[str, int], **platform: Any) -> dict[str, Any]:
    return base_config(
        tmp,
        tenants=TENANTS,
        pacing={"default_min_interval": 0, "max_hold": 10, "scope": "host"},
        platform={
            "crawl_delay": "shared",
            "site_budget": {"max_rps": 4, "max_concurrency": 8},
            "site_overrides": [
                {"site": "conc.test", "max_rps": None, "max_concurrency": 2},
                {"site": "fast.test", "max_rps": None},
            ],
            **platform,
        },
        destinations={
            "allow_private": True,
            "allowed_ports": ["1-65535"],
            "hosts": {name: ["127.0.0.1"] for name in port_of},
        },
    )


@pytest.fixture(scope="module")
def origins() -> Iterator[dict[str, LocalOrigin]]:
    made = {name: LocalOrigin() for name in NAMES}
    delay1 = b"User-agent: *\nCrawl-delay: 1\nAllow: /\n"
    made["shared.test"].robots = made["pt.test"].robots = delay1
    yield made
    with ThreadPoolExecutor(len(made)) as pool:
        list(pool.map(LocalOrigin.close, made.values()))


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, origins: dict[str, LocalOrigin]
) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("site-budget")
    p = Proxy(config(tmp, {n: o.port for n, o in origins.items()}), tmp)
    yield p
    p.stop()


@pytest.fixture
def get(proxy: Proxy, origins: dict[str, LocalOrigin]) -> Callable[..., requests.Response]:
    return getter(proxy, origins)


def getter(proxy: Proxy, origins: dict[str, LocalOrigin]) -> Callable[..., requests.Response]:
    def get(name: str, path: str, tid: str = "acme", **kw: Any) -> requests.Response:
        url = f"http://{name}:{origins[name].port}{path}"
        return requests.get(
            url, proxies=proxy.proxies(tid), headers={"User-Agent": UAS[tid]}, timeout=20, **kw
        )

    return get


def decision(r: requests.Response) -> str:
    return r.headers.get("X-Crawlguard-Decision", "")


def counter(proxy: Proxy, name: str, *labels: str) -> float:
    total = 0.0
    for line in proxy.metrics().splitlines():
        if line.startswith(name) and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def site_view(proxy: Proxy, site: str) -> dict[str, Any] | None:
    r = requests.get(
        f"http://127.0.0.1:{proxy.admin_port}/api/sites",
        params={"site": site},
        headers={"Authorization": "Bearer op"},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    sites = r.json()["sites"]
    return sites[0] if sites else None


def test_site_budget_caps_the_platform_without_crawl_delay(
    proxy: Proxy, origins: dict[str, LocalOrigin], get: Callable[..., requests.Response]
):
    """max_rps 4: a burst of two tenants forwards one request per 0.25 s to the site, the rest
    get 429 `site-budget` with a Retry-After — counted, not recorded as violations. An
    override (fast.test: no rate cap) lets the same burst through; a monitor tenant is
    forwarded whatever the budget says."""
    before = counter(proxy, "crawlguard_requests_total", 'decision="site-budget"')
    answers = [get("cap.test", f"/{i}", tid) for i in range(8) for tid in ("acme", "hooli")]
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(decision(r) == "site-budget" for r in refused)
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert "not a violation" in refused[0].text
    hits = sorted(h.t for h in origins["cap.test"].page_hits())
    assert len(hits) == len(answers) - len(refused)
    assert all(b - a >= 0.25 - 0.03 for a, b in itertools.pairwise(hits)), hits
    assert counter(proxy, "crawlguard_requests_total", 'decision="site-budget"') >= before + len(
        refused
    )
    assert proxy.violations("--kind", "site-budget") == []

    fast = [get("fast.test", f"/{i}", tid) for i in range(8) for tid in ("acme", "hooli")]
    assert [r.status_code for r in fast] == [200] * len(fast)

    monitor = [get("cap.test", f"/m{i}", "globex") for i in range(6)]
    assert [r.status_code for r in monitor] == [200] * 6


def test_site_budget_max_concurrency(
    proxy: Proxy, origins: dict[str, LocalOrigin], get: Callable[..., requests.Response]
):
    """conc.test allows 2 requests in flight: a third is refused at once, not forwarded; once
    one answer is back, the next goes."""
    site = origins["conc.test"]
    gate = threading.Event()
    site.routes["/slow"] = Route(gate=gate)
    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(get, "conc.test", "/slow", tid) for tid in ("acme", "hooli")]
        assert wait_for(lambda: len(site.page_hits()) == 2)
        third = get("conc.test", "/third", "acme")
        assert third.status_code == 429 and decision(third) == "site-budget", third.text
        assert "in flight" in third.text
        assert [h.path for h in site.page_hits()] == ["/slow", "/slow"]
        gate.set()
        assert [f.result().status_code for f in slow] == [200, 200]
    assert wait_for(lambda: get("conc.test", "/after", "hooli").status_code == 200)


def test_site_override_raises_the_budget(get: Callable[..., requests.Response]):
    """An override by glob: fast.test has no rate cap, cap.test keeps the default 4/s."""
    fast = [get("fast.test", f"/o{i}") for i in range(6)]
    assert [r.status_code for r in fast] == [200] * 6
    capped = [get("cap.test", f"/o{i}") for i in range(6)]
    assert any(decision(r) == "site-budget" for r in capped)


def test_origin_429_slows_every_tenant_on_that_site(
    proxy: Proxy, origins: dict[str, LocalOrigin], get: Callable[..., requests.Response]
):
    """A 429 with Retry-After from push.test to acme pauses the platform there: hooli is
    refused without a request reaching the site, slowco (delay) is held until the pause ends,
    and calm.test is not affected."""
    site = origins["push.test"]
    site.routes["/busy"] = Route(status=429, headers={"Retry-After": "3"})
    assert get("push.test", "/busy", "acme").status_code == 429  # the site's own answer
    started = time.monotonic()
    other = get("push.test", "/page", "hooli")
    assert other.status_code == 429 and decision(other) == "site-budget", other.text
    assert 1 <= int(other.headers["Retry-After"]) <= 3
    assert [h.path for h in site.page_hits()] == ["/busy"]
    assert get("calm.test", "/page", "hooli").status_code == 200
    held = get("push.test", "/held", "slowco")
    assert held.status_code == 200, held.text
    assert float(held.headers["X-Crawlguard-Delayed"]) > 0
    arrived = [h.t for h in site.page_hits() if h.path == "/held"]
    assert arrived and arrived[0] - started >= 2.5  # not before the site's Retry-After ended
    view = site_view(proxy, "push.test")
    assert view is not None and view["backoff"]["rate"] < 1
    assert counter(proxy, "crawlguard_site_backoffs_total") >= 1


def test_ratelimit_headers_cap_the_site(
    origins: dict[str, LocalOrigin], get: Callable[..., requests.Response]
):
    """A site's RateLimit-Policy (1 request per 4 s) caps the platform there below the budget."""
    site = origins["quota.test"]
    site.routes["/q"] = Route(headers={"RateLimit-Policy": '"default";q=1;w=4'})
    assert get("quota.test", "/q", "acme").status_code == 200
    r = get("quota.test", "/next", "hooli")
    assert r.status_code == 429 and decision(r) == "site-budget", r.text
    assert int(r.headers["Retry-After"]) >= 2


def test_sustained_5xx_slows_the_site(
    proxy: Proxy, origins: dict[str, LocalOrigin], get: Callable[..., requests.Response]
):
    site = origins["err.test"]
    site.routes["/e"] = Route(status=500)
    seen = 0
    deadline = time.monotonic() + 20
    while seen < 5 and time.monotonic() < deadline:
        r = get("err.test", "/e", "slowco")  # held for the site's slots, never refused
        seen += r.status_code == 500
    assert seen == 5
    view = site_view(proxy, "err.test")
    assert view is not None and view["backoff"]["rate"] <= 0.5, view


def test_shared_and_per_tenant_crawl_delay(
    tmp_path: Path,
    proxy: Proxy,
    origins: dict[str, LocalOrigin],
    get: Callable[..., requests.Response],
):
    """`shared`: after acme's request, hooli waits for the site's Crawl-delay (site-budget).
    `per-tenant` (a second proxy): each tenant keeps only its own Crawl-delay, as before."""
    assert get("shared.test", "/a", "acme").status_code == 200
    r = get("shared.test", "/b", "hooli")
    assert r.status_code == 429 and decision(r) == "site-budget", r.text
    assert "Crawl-delay: 1" in r.text

    other = Proxy(
        config(
            tmp_path,
            {n: o.port for n, o in origins.items()},
            crawl_delay="per-tenant",
            site_key="domain",
            site_budget={"max_rps": 0.5, "max_concurrency": 8},
            site_overrides=[{"site": "pt.test", "max_rps": None}],
        ),
        tmp_path,
    )
    try:
        get2 = getter(other, origins)
        assert get2("pt.test", "/a", "acme").status_code == 200
        assert get2("pt.test", "/b", "hooli").status_code == 200  # its own pacing only
        again = get2("pt.test", "/c", "acme")
        assert again.status_code == 429 and decision(again) == "crawl-delay"

        # site_key: domain — two hosts of one registrable domain share one budget (0.5/s)
        assert get2("a.shop.example.com", "/x", "acme").status_code == 200
        r = get2("b.shop.example.com", "/y", "hooli")
        assert r.status_code == 429 and decision(r) == "site-budget", r.text
        assert "example.com" in r.text
    finally:
        other.stop()
    # host (the module's proxy): the two hosts are two sites
    assert get("a.shop.example.com", "/x", "acme").status_code == 200
    assert get("b.shop.example.com", "/y", "hooli").status_code == 200
