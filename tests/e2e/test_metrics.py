"""Metrics on the wire (issue 10): the real proxy, real origins, /metrics scraped over HTTP.

Also the held accounting: a request that `delay` pacing holds and then forwards counts as
decision `held` and is no violation (metrics and `crawlguard report`), though its record
(kind `crawl-delay`, action `delayed`) is still written.

Counters are compared before and after the traffic of each test (the module's proxy is shared),
or read from series of a tenant only that test uses.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from harness import LocalOrigin, Proxy, Route, base_config, tenant, wait_for
from prometheus_client.parser import text_string_to_metric_families
from rawhttp import auth

import crawlguard

SLOW_UA = "SlowBot/1.0 (+https://slow.example/bot)"
LEAVE_UA = "LeaveBot/1.0 (+https://leave.example/bot)"
HOOLI_UA = "HooliBot/2.0 (+https://hooli.example/bot)"
ALLOWED_LABELS = {"tenant", "kind", "decision", "result", "table", "version", "le", "reason"}
NEW_SERIES = {
    "crawlguard_robots_cache_entries": "gauge",
    "crawlguard_robots_cache_lookups": "counter",
    "crawlguard_robots_fetch_seconds": "histogram",
    "crawlguard_hold_seconds": "histogram",
    "crawlguard_held_requests_limit": "gauge",
    "crawlguard_origin_backoffs": "counter",
    "crawlguard_build_info": "gauge",
}

SiteFactory = Callable[..., LocalOrigin]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def robots(delay: float) -> bytes:
    return f"User-agent: *\nCrawl-delay: {delay:g}\nAllow: /\n".encode()


def metrics_config(tmp: Path, **sections: Any) -> dict[str, Any]:
    sections.setdefault("pacing", {"default_min_interval": 0, "max_hold": 5, "max_held": 7})
    return base_config(
        tmp,
        tenants=[
            tenant("acme", ["AcmeBot"]),
            tenant("slowco", ["SlowBot"], pacing="delay"),
            tenant("leaveco", ["LeaveBot"], pacing="delay"),
            tenant("hooli", ["HooliBot"]),
        ],
        **sections,
    )


def scrape_text(proxy: Proxy) -> str:
    session = requests.Session()
    session.trust_env = False  # straight to the admin port, never through a proxy from the env
    r = session.get(f"http://127.0.0.1:{proxy.admin_port}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    return r.text


def scrape(proxy: Proxy) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape_text(proxy))
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not exposed (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def exposed(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples


def tenant_series(samples: Samples, name: str, tid: str) -> dict[frozenset[tuple[str, str]], float]:
    return {k[1]: v for k, v in samples.items() if k[0] == name and ("tenant", tid) in k[1]}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("metrics-proxy")
    p = Proxy(metrics_config(tmp), tmp)
    yield p
    p.stop()


@pytest.fixture
def site_factory() -> Iterator[SiteFactory]:
    sites: list[LocalOrigin] = []

    def make(robots_body: bytes | None = b"User-agent: *\nAllow: /\n", **kw: Any) -> LocalOrigin:
        site = LocalOrigin(robots=robots_body, **kw)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


# -- every series, with its type ---------------------------------------------------------------


def test_new_series_are_exposed_with_their_types(proxy: Proxy) -> None:
    families = {f.name: f.type for f in text_string_to_metric_families(scrape_text(proxy))}
    for name, kind in NEW_SERIES.items():
        assert families.get(name) == kind, name
    for name in (
        "crawlguard_requests", "crawlguard_violations", "crawlguard_robots_fetches",
        "crawlguard_decision_seconds", "crawlguard_delayed_requests",
        "crawlguard_auth_failures", "crawlguard_store_errors", "crawlguard_store_queue_depth",
        "crawlguard_store_write_seconds", "crawlguard_store_backlogged",
        "crawlguard_store_pruned",
    ):  # fmt: skip
        assert name in families, name


def test_build_info_carries_the_version(proxy: Proxy) -> None:
    samples = scrape(proxy)
    info = {k: v for k, v in samples.items() if k[0] == "crawlguard_build_info"}
    assert info == {("crawlguard_build_info", frozenset({("version", crawlguard.__version__)})): 1}


# -- robots.txt cache --------------------------------------------------------------------------


def test_robots_cache_miss_then_hit_and_one_fetch_timed(
    proxy: Proxy, site_factory: SiteFactory
) -> None:
    site = site_factory()
    before = scrape(proxy)
    assert proxy.get(site.url("/one")).status_code == 200  # miss: robots.txt fetched
    assert proxy.get(site.url("/two")).status_code == 200  # hit: the cached copy
    after = scrape(proxy)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("crawlguard_robots_cache_lookups_total", result="miss") == 1
    assert delta("crawlguard_robots_cache_lookups_total", result="hit") == 1
    assert delta("crawlguard_robots_fetches_total", result="ok") == 1
    assert delta("crawlguard_robots_fetch_seconds_count") == 1
    assert delta("crawlguard_robots_fetch_seconds_sum") > 0
    assert delta("crawlguard_robots_cache_entries") == 1  # one more origin cached
    assert site.paths(include_robots=True).count("/robots.txt") == 1


def test_a_failed_robots_fetch_is_timed_too(proxy: Proxy, site_factory: SiteFactory) -> None:
    site = site_factory()
    site.routes["/robots.txt"] = Route(status=503, body=b"down\n")
    before = scrape(proxy)
    r = proxy.get(site.url("/page"))
    assert r.headers["X-Crawlguard-Decision"] == "robots-unreachable"
    after = scrape(proxy)
    count = "crawlguard_robots_fetch_seconds_count"
    assert value(after, count) - value(before, count) == 1
    fetches = "crawlguard_robots_fetches_total"
    assert value(after, fetches, result="5xx") - value(before, fetches, result="5xx") == 1
    lookups = "crawlguard_robots_cache_lookups_total"
    assert value(after, lookups, result="miss") - value(before, lookups, result="miss") == 1


# -- held: paced as the tenant asked, not a violation -------------------------------------------


def test_held_then_forwarded_counts_held_and_no_violation(
    proxy: Proxy, site_factory: SiteFactory
) -> None:
    site = site_factory(robots(1))
    get = lambda path: proxy.get(site.url(path), tenant="slowco", ua=SLOW_UA)  # noqa: E731
    assert get("/first").status_code == 200  # takes the slot
    before = scrape(proxy)
    r = get("/held")  # held until the next slot, then forwarded
    assert r.status_code == 200
    assert r.headers["X-Crawlguard-Decision"] == "allowed"
    delayed = float(r.headers["X-Crawlguard-Delayed"])
    assert delayed > 0
    after = scrape(proxy)

    assert tenant_series(after, "crawlguard_requests_total", "slowco") == {
        frozenset({("tenant", "slowco"), ("decision", "allowed")}): 1,
        frozenset({("tenant", "slowco"), ("decision", "held")}): 1,
    }
    assert tenant_series(after, "crawlguard_violations_total", "slowco") == {}
    hold_count = "crawlguard_hold_seconds_count"
    assert value(after, hold_count) - value(before, hold_count) == 1
    hold_sum = "crawlguard_hold_seconds_sum"
    assert value(after, hold_sum) - value(before, hold_sum) >= delayed - 0.01
    assert value(after, "crawlguard_delayed_requests") == 0
    # the record is still written, as SPEC "Violations" says: kind crawl-delay, action delayed
    recs = [v for v in proxy.violations("--tenant", "slowco") if v["url"] == site.url("/held")]
    assert [(v["kind"], v["action"]) for v in recs] == [("crawl-delay", "delayed")]


def test_a_held_request_whose_client_leaves_still_counts_held(
    proxy: Proxy, site_factory: SiteFactory
) -> None:
    site = site_factory(robots(2))
    assert proxy.get(site.url("/a"), tenant="leaveco", ua=LEAVE_UA).status_code == 200
    before = scrape(proxy)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        sock.sendall(
            f"GET {site.url('/left')} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n"
            f"User-Agent: {LEAVE_UA}\r\nProxy-Authorization: {auth('leaveco')}\r\n\r\n".encode()
        )
        assert wait_for(lambda: value(scrape(proxy), "crawlguard_delayed_requests") == 1, 5)
    finally:
        sock.close()
    hold_count = "crawlguard_hold_seconds_count"
    assert wait_for(lambda: value(scrape(proxy), hold_count) - value(before, hold_count) == 1, 5)
    after = scrape(proxy)
    assert value(after, "crawlguard_delayed_requests") == 0
    assert value(after, "crawlguard_requests_total", tenant="leaveco", decision="held") == 1
    assert tenant_series(after, "crawlguard_violations_total", "leaveco") == {}
    assert site.paths() == ["/a"]  # never forwarded


def test_a_refused_crawl_delay_is_still_a_violation(
    proxy: Proxy, site_factory: SiteFactory
) -> None:
    site = site_factory(robots(30))
    assert proxy.get(site.url("/a"), tenant="hooli", ua=HOOLI_UA).status_code == 200
    before = scrape(proxy)
    r = proxy.get(site.url("/b"), tenant="hooli", ua=HOOLI_UA)  # pacing reject: 429
    assert r.status_code == 429
    assert r.headers["X-Crawlguard-Decision"] == "crawl-delay"
    after = scrape(proxy)
    for name in ("crawlguard_requests_total", "crawlguard_violations_total"):
        label = "decision" if name == "crawlguard_requests_total" else "kind"
        labels = {"tenant": "hooli", label: "crawl-delay"}
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name


# -- origin back-off ----------------------------------------------------------------------------


def test_an_origin_429_starts_a_backoff_and_counts_it(
    proxy: Proxy, site_factory: SiteFactory
) -> None:
    site = site_factory()
    site.routes["/limited"] = Route(status=429, body=b"slow down\n", headers={"Retry-After": "30"})
    name = "crawlguard_origin_backoffs_total"
    before = value(scrape(proxy), name, tenant="acme")
    r = proxy.get(site.url("/limited"))
    assert r.status_code == 429 and r.headers["X-Crawlguard-Decision"] == "allowed"
    assert value(scrape(proxy), name, tenant="acme") - before == 1
    r = proxy.get(site.url("/next"))  # refused by the back-off: the origin said nothing new
    assert r.headers["X-Crawlguard-Decision"] == "origin-backoff"
    assert value(scrape(proxy), name, tenant="acme") - before == 1


# -- no URL or host in any label ------------------------------------------------------------------


def test_no_label_holds_a_host_url_or_path(proxy: Proxy, site_factory: SiteFactory) -> None:
    site = site_factory(b"User-agent: *\nDisallow: /secret-area\n", host="localhost")
    redirect = site_factory(None, host="localhost")  # robots.txt 404 after a redirect
    redirect.routes["/robots.txt"] = Route(
        status=301, headers={"Location": f"http://localhost:{redirect.port}/robots-moved.txt"}
    )
    redirect.routes["/robots-moved.txt"] = Route(status=404, body=b"gone\n")
    assert site.url("/").startswith("http://localhost:")
    assert proxy.get(site.url("/visible-page")).status_code == 200
    assert proxy.get(site.url("/secret-area/x")).status_code == 403
    assert proxy.get(site.url("/visible-page"), ua="curl/8.0").status_code == 403
    assert proxy.get(redirect.url("/after-redirect")).status_code == 200
    text = scrape_text(proxy)
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            for label_value in sample.labels.values():
                for needle in ("localhost", "127.0.0.1", "/", ":", "secret", "visible"):
                    assert needle not in label_value, sample
                assert str(site.port) not in label_value, sample
                assert str(redirect.port) not in label_value, sample
    assert "localhost" not in text and "visible-page" not in text


# -- max_held and reload -----------------------------------------------------------------------


def test_held_requests_limit_follows_the_config_and_reload(
    tmp_path: Path, site_factory: SiteFactory
) -> None:
    p = Proxy(metrics_config(tmp_path), tmp_path)
    try:
        site = site_factory()
        assert p.get(site.url("/cached")).status_code == 200
        samples = scrape(p)
        assert value(samples, "crawlguard_held_requests_limit") == 7
        assert value(samples, "crawlguard_robots_cache_entries") == 1
        cfg = dict(p.config)
        cfg["pacing"] = {**cfg["pacing"], "max_held": 3}
        p.config_path.write_text(yaml.safe_dump(cfg))
        out = subprocess.run(
            [sys.executable, "-m", "crawlguard", "reload", "--config", str(p.config_path)],
            cwd=p.tmp, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert wait_for(lambda: value(scrape(p), "crawlguard_held_requests_limit") == 3, 20)
        samples = scrape(p)
        assert value(samples, "crawlguard_robots_cache_entries") == 1  # the cache was kept
        assert exposed(samples, "crawlguard_build_info", version=crawlguard.__version__)
    finally:
        assert p.stop() == 0, p.log()


# -- crawlguard report --------------------------------------------------------------------------


def test_report_shows_held_apart_from_violations(tmp_path: Path, site_factory: SiteFactory) -> None:
    p = Proxy(metrics_config(tmp_path), tmp_path)
    try:
        site = site_factory(robots(1))
        for path in ("/s1", "/s2"):  # the second is held, then forwarded
            assert p.get(site.url(path), tenant="slowco", ua=SLOW_UA).status_code == 200
        strict = site_factory(robots(30))
        assert p.get(strict.url("/h1"), tenant="hooli", ua=HOOLI_UA).status_code == 200
        assert p.get(strict.url("/h2"), tenant="hooli", ua=HOOLI_UA).status_code == 429
    finally:
        assert p.stop() == 0, p.log()  # a graceful stop flushes the request counts

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crawlguard", "report", "--config", str(p.config_path), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    out = report("--format", "json")
    assert out.returncode == 0, out.stderr
    tenants = json.loads(out.stdout)["tenants"]
    assert tenants["slowco"] == {
        "requests_total": 2,
        "requests": {"allowed": 1, "held": 1},
        "violations_total": 0,
        "violations": {},
        "held": 1,
    }
    assert tenants["hooli"]["requests"] == {"allowed": 1, "crawl-delay": 1}
    assert tenants["hooli"]["violations"] == {"crawl-delay": 1}
    assert tenants["hooli"]["held"] == 0

    table = report()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TENANT"))
    end = lines.index("", start)
    rows = {line.split()[0]: line.split() for line in lines[start:end]}
    assert rows["TENANT"] == ["TENANT", "REQUESTS", "HELD", "VIOLATIONS"]
    assert rows["slowco"] == ["slowco", "2", "1", "0"]
    assert rows["hooli"] == ["hooli", "2", "0", "1"]
