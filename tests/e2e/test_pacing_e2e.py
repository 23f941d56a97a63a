"""Pacing on the wire (issue 4): the real proxy, real clients and origins that log arrival times.

Tolerances: the k-th arrival at the origin must be at least k * interval - GAP_SLACK after the
first (the proxy forwards at the slot; connection setup can shift one arrival by a few ms
either way, and a busy machine can make one forward late, never early). Nothing here bounds
how long a request took by the clock: a slot reused or a request not queued shows in the
proxy's own headers and in the order the origin saw.
"""

from __future__ import annotations

import base64
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import Hit, LocalOrigin, Proxy, Route, base_config, tenant, wait_for

GAP_SLACK = 0.05
SLOW_UA = "SlowBot/1.0 (+https://slow.example/bot)"
HOOLI_UA = "HooliBot/2.0 (+https://hooli.example/bot)"
GLOBEX_UA = "GlobexCrawler/1.0 (+https://globex.example/bot)"
MAX_HOLD = 3


def robots(delay: float | str) -> bytes:
    return f"User-agent: *\nCrawl-delay: {delay}\nAllow: /\n".encode()


def pacing_config(tmp: Path, **sections: Any) -> dict[str, Any]:
    sections.setdefault("pacing", {"default_min_interval": 0, "max_hold": MAX_HOLD})
    return base_config(
        tmp,
        tenants=[
            tenant("acme", ["AcmeBot"]),
            tenant("globex", ["GlobexCrawler"], mode="monitor"),
            tenant("initech", ["InitechBot"], mode="off"),
            tenant("slowco", ["SlowBot"], pacing="delay"),
            tenant("hooli", ["HooliBot"]),
        ],
        **sections,
    )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("pacing-proxy")
    p = Proxy(pacing_config(tmp), tmp)
    yield p
    p.stop()


@pytest.fixture
def site_factory() -> Iterator[Callable[..., LocalOrigin]]:
    sites: list[LocalOrigin] = []

    def make(robots_body: bytes | None = b"User-agent: *\nAllow: /\n") -> LocalOrigin:
        site = LocalOrigin(robots=robots_body)
        sites.append(site)
        return site

    yield make
    with ThreadPoolExecutor(max(1, len(sites))) as pool:  # each shutdown polls for 0.5 s
        list(pool.map(LocalOrigin.close, sites))


def gaps(hits: list[Hit]) -> list[float]:
    times = sorted(h.t for h in hits)
    return [b - a for a, b in itertools.pairwise(times)]


def assert_spaced(hits: list[Hit], interval: float) -> None:
    """The k-th arrival is at least k intervals after the first. Slots are spaced from each
    other, not from the previous arrival: one forward that a busy machine delays makes the gap
    after it look short although its successor went out exactly at its slot."""
    times = sorted(h.t for h in hits)
    late = [
        (k, t - times[0]) for k, t in enumerate(times) if t - times[0] < k * interval - GAP_SLACK
    ]
    assert not late, (interval, gaps(hits), late)


def delayed_gauge(proxy: Proxy) -> float:
    m = re.search(r"^crawlguard_delayed_requests (\S+)$", proxy.metrics(), re.MULTILINE)
    assert m is not None
    return float(m.group(1))


def records_for(proxy: Proxy, site: LocalOrigin, *args: str) -> list[dict[str, Any]]:
    prefix = site.url("/")
    return [v for v in proxy.violations(*args) if v["url"].startswith(prefix)]


# -- 1. reject mode -----------------------------------------------------------------------------


def test_reject_mode_429_with_retry_after_then_200(proxy: Proxy, site_factory):
    site = site_factory(robots(1.5))
    assert proxy.get(site.url("/p1")).status_code == 200  # admitted after robots.txt is in
    r = proxy.get(site.url("/p2"))
    assert r.status_code == 429
    assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
    ra = int(r.headers["Retry-After"])  # an integer, whole seconds
    # remaining = 1.5 - (time since /p1 was admitted), rounded up, at least 1
    assert 1 <= ra <= 2
    assert "Crawl-delay" in r.text
    time.sleep(ra)
    assert proxy.get(site.url("/p2")).status_code == 200  # Retry-After was long enough
    assert site.paths() == ["/p1", "/p2"]
    assert_spaced(site.page_hits(), 1.5)
    recs = records_for(proxy, site, "--tenant", "acme", "--kind", "crawl-delay")
    assert len(recs) == 1
    rec = recs[0]
    assert rec["action"] == "blocked"
    assert rec["url"] == site.url("/p2")
    assert rec["crawl_delay"] == 1.5
    assert rec["retry_after"] == ra
    assert rec["rule"] == "Crawl-delay: 1.5"
    assert rec["delay_seconds"] is None


# -- 2. delay mode ------------------------------------------------------------------------------


def test_delay_mode_holds_requests_fifo_and_spaced(proxy: Proxy, site_factory):
    site = site_factory(robots(1))
    get = lambda path: proxy.get(site.url(path), tenant="slowco", ua=SLOW_UA)  # noqa: E731
    first = get("/warm")  # robots.txt fetched; takes the first slot
    assert first.status_code == 200
    assert "X-Crawlguard-Delayed" not in first.headers
    paths = ["/d0", "/d1", "/d2"]
    with ThreadPoolExecutor(len(paths)) as pool:
        futures: list[Future[requests.Response]] = []
        for path in paths:
            futures.append(pool.submit(get, path))
            time.sleep(0.15)  # arrival order at the proxy = submission order
        assert wait_for(lambda: delayed_gauge(proxy) > 0, 2)  # scraped during the hold
        responses = [f.result(timeout=15) for f in futures]
    assert [r.status_code for r in responses] == [200] * len(paths)
    delays = [float(r.headers["X-Crawlguard-Delayed"]) for r in responses]
    assert all(d > 0 for d in delays)
    assert delays == sorted(delays)
    assert site.paths() == ["/warm", *paths]  # FIFO
    assert_spaced(site.page_hits(), 1.0)
    assert delayed_gauge(proxy) == 0
    recs = records_for(proxy, site, "--tenant", "slowco")
    by_url = {r["url"]: r for r in recs}
    assert sorted(by_url) == [site.url(p) for p in paths]
    for path, delay in zip(paths, delays, strict=True):
        rec = by_url[site.url(path)]
        assert (rec["kind"], rec["action"], rec["crawl_delay"]) == ("crawl-delay", "delayed", 1.0)
        assert rec["rule"] == "Crawl-delay: 1"
        assert rec["delay_seconds"] == pytest.approx(delay, abs=0.002)
        assert 0 < rec["delay_seconds"] <= MAX_HOLD


# -- 3. max_hold overflow -----------------------------------------------------------------------


def test_delay_beyond_max_hold_is_refused_and_not_forwarded(proxy: Proxy, site_factory):
    site = site_factory(robots(2))
    get = lambda path: proxy.get(site.url(path), tenant="slowco", ua=SLOW_UA)  # noqa: E731
    assert get("/first").status_code == 200
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(get, "/held")  # slot +2 s: held
        assert wait_for(lambda: delayed_gauge(proxy) > 0, 2)
        r = get("/overflow")  # slot +4 s > max_hold 3 s
        assert r.status_code == 429
        assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
        assert "X-Crawlguard-Delayed" not in r.headers
        assert int(r.headers["Retry-After"]) > MAX_HOLD
        assert held.result(timeout=15).status_code == 200
    assert site.paths() == ["/first", "/held"]
    assert_spaced(site.page_hits(), 2.0)
    recs = records_for(proxy, site, "--tenant", "slowco")
    actions = {r["url"].removeprefix(site.url("")): r["action"] for r in recs}
    assert actions == {"/held": "delayed", "/overflow": "blocked"}


# -- 4. client disconnect while held ------------------------------------------------------------


def raw_proxy_request(proxy: Proxy, url: str, tid: str, ua: str) -> socket.socket:
    """Send one plain-HTTP proxy request on a raw socket and return the (still open) socket."""
    creds = base64.b64encode(f"{tid}:{tid}-secret".encode()).decode()
    host = url.split("/")[2]
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\n"
        f"Proxy-Authorization: Basic {creds}\r\nAccept: */*\r\n\r\n".encode()
    )
    return sock


def test_disconnect_while_held_frees_the_slot(proxy: Proxy, site_factory):
    site = site_factory(robots(2))
    get = lambda path: proxy.get(site.url(path), tenant="slowco", ua=SLOW_UA)  # noqa: E731
    assert get("/a").status_code == 200  # slot t0; next free t0 + 2
    sock = raw_proxy_request(proxy, site.url("/abandoned"), "slowco", SLOW_UA)  # slot t0 + 2
    try:
        assert wait_for(lambda: delayed_gauge(proxy) == 1, 2)
    finally:
        sock.close()
    assert wait_for(lambda: delayed_gauge(proxy) == 0, 2)  # the proxy noticed
    # Freed: /c gets the abandoned slot (t0 + 2), held less than one interval by the proxy's own
    # account. Not freed: t0 + 4, past max_hold → 429.
    r = get("/c")
    assert r.status_code == 200, r.headers
    assert float(r.headers["X-Crawlguard-Delayed"]) < 2.0
    time.sleep(0.5)  # past the abandoned slot: it must not be forwarded late
    assert site.paths() == ["/a", "/c"]
    assert_spaced(site.page_hits(), 2.0)


# -- 5. Request-rate ----------------------------------------------------------------------------


def test_request_rate_paces_like_crawl_delay(proxy: Proxy, site_factory):
    site = site_factory(b"User-agent: *\nRequest-rate: 1/2s\n")
    assert proxy.get(site.url("/r1")).status_code == 200
    r = proxy.get(site.url("/r2"))
    assert r.status_code == 429
    assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
    ra = int(r.headers["Retry-After"])
    assert ra == 2
    time.sleep(ra)
    assert proxy.get(site.url("/r2")).status_code == 200
    assert site.paths() == ["/r1", "/r2"]
    assert_spaced(site.page_hits(), 2.0)
    (rec,) = records_for(proxy, site, "--tenant", "acme")
    assert (rec["kind"], rec["action"], rec["crawl_delay"], rec["rule"]) == (
        "crawl-delay",
        "blocked",
        2.0,
        "Request-rate: 1/2s",
    )


# -- 6. origin back-off -------------------------------------------------------------------------


def test_origin_429_retry_after_is_honoured(proxy: Proxy, site_factory):
    site = site_factory()
    site.routes["/limited"] = Route(status=429, body=b"slow down\n", headers={"Retry-After": "2"})
    r = proxy.get(site.url("/limited"))
    throttled_at = time.monotonic()
    assert r.status_code == 429  # the origin's own answer, forwarded
    assert r.headers["X-Crawlguard-Decision"] == "allowed"
    assert r.text == "slow down\n"
    r = proxy.get(site.url("/page"))
    assert r.status_code == 429
    assert r.headers["X-Crawlguard-Decision"] == "origin-backoff"
    assert int(r.headers["Retry-After"]) == 2
    assert proxy.get(site.url("/page")).headers["X-Crawlguard-Decision"] == "origin-backoff"
    assert site.paths() == ["/limited"]  # nothing forwarded during the back-off
    time.sleep(max(0.0, throttled_at + 2.05 - time.monotonic()))
    assert proxy.get(site.url("/page")).status_code == 200
    assert site.paths() == ["/limited", "/page"]
    recs = records_for(proxy, site, "--tenant", "acme", "--kind", "origin-backoff")
    assert len(recs) == 2
    assert {r["action"] for r in recs} == {"blocked"}
    assert {r["url"] for r in recs} == {site.url("/page")}


def test_origin_503_without_retry_after_backs_off_exponentially(proxy: Proxy, site_factory):
    site = site_factory()
    site.routes["/down"] = Route(status=503, body=b"down\n")
    assert proxy.get(site.url("/down")).status_code == 503
    throttled_at = time.monotonic()
    r = proxy.get(site.url("/page"))
    assert r.status_code == 429
    assert r.headers["X-Crawlguard-Decision"] == "origin-backoff"
    assert int(r.headers["Retry-After"]) == 1  # first window: 1 s
    time.sleep(max(0.0, throttled_at + 1.05 - time.monotonic()))
    r = proxy.get(site.url("/down"))  # the window has passed: forwarded, and 503 again
    assert r.status_code == 503
    assert r.headers["X-Crawlguard-Decision"] == "allowed"
    r = proxy.get(site.url("/page"))
    assert r.status_code == 429
    assert r.headers["X-Crawlguard-Decision"] == "origin-backoff"
    assert int(r.headers["Retry-After"]) == 2  # second consecutive 503: doubled
    assert site.paths() == ["/down", "/down"]


# -- 7. monitor mode ----------------------------------------------------------------------------


def test_monitor_mode_forwards_and_logs(proxy: Proxy, site_factory):
    site = site_factory(robots(1))
    get = lambda path: proxy.get(site.url(path), tenant="globex", ua=GLOBEX_UA)  # noqa: E731
    r1 = get("/m1")
    r2 = get("/m2")
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert "X-Crawlguard-Monitor" not in r1.headers
    assert r2.headers["X-Crawlguard-Monitor"] == "crawl-delay"
    assert "X-Crawlguard-Delayed" not in r2.headers
    assert site.paths() == ["/m1", "/m2"]
    (rec,) = records_for(proxy, site, "--tenant", "globex")
    assert (rec["kind"], rec["action"], rec["url"], rec["crawl_delay"]) == (
        "crawl-delay",
        "logged",
        site.url("/m2"),
        1.0,
    )


def test_off_mode_is_not_paced(proxy: Proxy, site_factory):
    site = site_factory(robots(2))
    ua = "InitechBot/1.0 (+https://initech.example)"
    codes = [proxy.get(site.url(f"/o{i}"), tenant="initech", ua=ua).status_code for i in range(3)]
    assert codes == [200, 200, 200]
    assert records_for(proxy, site, "--tenant", "initech") == []


# -- 8. isolation -------------------------------------------------------------------------------


def test_tenants_and_origins_are_paced_independently(proxy: Proxy, site_factory):
    a = site_factory(robots(2))
    b = site_factory(robots(2))
    hooli = lambda url: proxy.get(url, tenant="hooli", ua=HOOLI_UA)  # noqa: E731
    assert proxy.get(a.url("/acme")).status_code == 200
    assert hooli(a.url("/hooli")).status_code == 200  # same origin, other tenant
    assert proxy.get(b.url("/acme")).status_code == 200  # same tenant, other origin
    assert hooli(b.url("/hooli")).status_code == 200
    # ... while each (tenant, origin) pair is paced
    for r in (proxy.get(a.url("/again")), hooli(a.url("/again")), proxy.get(b.url("/again"))):
        assert r.status_code == 429
        assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
    assert a.paths() == ["/acme", "/hooli"]
    assert b.paths() == ["/acme", "/hooli"]


def test_threads_of_two_tenants_on_one_origin_do_not_wait_for_each_other(
    proxy: Proxy, site_factory
):
    """A delay-paced tenant's queue does not hold another tenant's requests."""
    site = site_factory(robots(2))
    slow = lambda path: proxy.get(site.url(path), tenant="slowco", ua=SLOW_UA)  # noqa: E731
    assert slow("/s1").status_code == 200
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(slow, "/s2")
        assert wait_for(lambda: delayed_gauge(proxy) > 0, 2)
        r = proxy.get(site.url("/acme"))
        assert r.status_code == 200
        assert "X-Crawlguard-Delayed" not in r.headers  # not queued behind slowco's hold
        assert held.result(timeout=15).status_code == 200
    assert site.paths() == ["/s1", "/acme", "/s2"]  # /acme reached the origin first


# -- 9. default_min_interval --------------------------------------------------------------------


def test_default_min_interval_applies_without_robots_delay(tmp_path: Path, site_factory):
    p = Proxy(pacing_config(tmp_path, pacing={"default_min_interval": 1, "max_hold": 3}), tmp_path)
    try:
        missing = site_factory(None)  # robots.txt 404: no delay at all
        plain = site_factory()  # robots.txt without Crawl-delay
        stricter = site_factory(robots(2))  # robots.txt stricter than the default
        for site in (missing, plain):
            assert p.get(site.url("/x")).status_code == 200
            r = p.get(site.url("/y"))
            assert r.status_code == 429
            assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
            assert r.headers["Retry-After"] == "1"
        assert p.get(stricter.url("/x")).status_code == 200
        r = p.get(stricter.url("/y"))
        assert (r.status_code, r.headers["Retry-After"]) == (429, "2")
        recs = {v["url"]: v for v in p.violations("--kind", "crawl-delay")}
        assert recs[missing.url("/y")]["rule"] == "pacing.default_min_interval: 1"
        assert recs[missing.url("/y")]["crawl_delay"] == 1.0
        assert recs[plain.url("/y")]["rule"] == "pacing.default_min_interval: 1"
        assert recs[stricter.url("/y")]["rule"] == "Crawl-delay: 2"
        # the default also paces delay-mode tenants: held, then forwarded ≥ 1 s apart
        site = site_factory()
        results: list[requests.Response] = []
        lock = threading.Lock()

        def slow(path: str) -> None:
            resp = p.get(site.url(path), tenant="slowco", ua=SLOW_UA)
            with lock:
                results.append(resp)

        slow("/s0")
        threads = [threading.Thread(target=slow, args=(f"/s{i}",)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert [r.status_code for r in results] == [200, 200, 200]
        assert sum("X-Crawlguard-Delayed" in r.headers for r in results) == 2
        assert_spaced(site.page_hits(), 1.0)
    finally:
        p.stop()


def test_sigterm_answers_held_requests_and_stops_quietly(tmp_path: Path) -> None:
    """Issue 21: a request delay pacing holds gets 503 proxy-busy + Retry-After when the proxy
    stops (not a reset), and the stop logs no traceback, also with idle connections open."""
    cfg = pacing_config(tmp_path, pacing={"default_min_interval": 0, "max_hold": 60})
    p = Proxy(cfg, tmp_path)
    site = LocalOrigin(robots=robots(30))
    idle = socket.create_connection(("127.0.0.1", p.port))  # a connection that sends nothing
    try:
        first = p.get(site.url("/first"), tenant="slowco", ua=SLOW_UA)
        assert first.status_code == 200
        with ThreadPoolExecutor(1) as pool:
            held: Future[requests.Response] = pool.submit(
                p.get, site.url("/held"), tenant="slowco", ua=SLOW_UA, timeout=60
            )
            assert wait_for(lambda: "crawlguard_delayed_requests 1.0" in p.metrics(), 20)
            assert p.stop() == 0, p.log()
            r = held.result(timeout=30)
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "proxy-busy")
        assert 1 <= int(r.headers["Retry-After"]) <= 30
        assert "shutting down" in r.text
        assert site.paths() == ["/first"]  # the held request was never forwarded
        log = p.log()
        assert "crawlguard stopped" in log
        assert "Traceback" not in log and "CancelledError" not in log, log
    finally:
        idle.close()
        p.stop()
        site.close()
