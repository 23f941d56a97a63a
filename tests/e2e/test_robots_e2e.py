"""robots.txt enforced on the wire: the real proxy against real local origins (issue 3)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import trustme
from harness import LocalOrigin, Proxy, Route

ROBOTS = (
    b"User-agent: AcmeBot\nDisallow: /private\nAllow: /private/ok\n\nUser-agent: *\nDisallow: /\n"
)


def robots_fetches(origin: LocalOrigin) -> int:
    return sum(1 for h in origin.hits if h.path == "/robots.txt")


def test_disallowed_url_never_reaches_origin(proxy: Proxy):
    site = LocalOrigin(robots=ROBOTS)
    try:
        r = proxy.get(site.url("/private/x"))
        assert r.status_code == 403
        assert r.headers["X-Crawlguard-Decision"] == "robots-disallow"
        assert "Disallow: /private" in r.text
        assert proxy.get(site.url("/private/ok")).status_code == 200
        assert proxy.get(site.url("/public")).status_code == 200
        assert site.paths() == ["/private/ok", "/public"]
        robots_hit = next(h for h in site.hits if h.path == "/robots.txt")
        assert robots_hit.headers["User-Agent"] == proxy.config["robots"]["user_agent"]
        rec = next(
            v for v in proxy.violations("--kind", "robots-disallow") if "/private/x" in v["url"]
        )
        assert rec["rule"] == "Disallow: /private"
        assert rec["robots_sha256"] == hashlib.sha256(ROBOTS).hexdigest()
        from crawlguard.store import open_store

        store = open_store(proxy.config["store"]["url"])
        try:
            assert store.robots_body(rec["robots_sha256"]) == ROBOTS
        finally:
            store.close()
    finally:
        site.close()


def test_other_tokens_fall_back_to_star_group(proxy: Proxy):
    site = LocalOrigin(robots=ROBOTS)
    try:
        r = proxy.get(
            site.url("/anything"), tenant="globex", ua="GlobexCrawler/1.0 (+https://g.example)"
        )
        assert r.status_code == 200  # monitor tenant: forwarded
        assert r.headers["X-Crawlguard-Monitor"] == "robots-disallow"
        recs = [v for v in proxy.violations("--tenant", "globex") if v["url"].endswith("/anything")]
        assert [(v["kind"], v["action"], v["rule"]) for v in recs] == [
            ("robots-disallow", "logged", "Disallow: /")
        ]
    finally:
        site.close()


def test_robots_txt_itself_is_never_blocked(proxy: Proxy):
    site = LocalOrigin(robots=b"User-agent: *\nDisallow: /\n")
    try:
        r = proxy.get(site.url("/robots.txt"))
        assert r.status_code == 200
        assert r.content == b"User-agent: *\nDisallow: /\n"
    finally:
        site.close()


def test_unreachable_robots_is_a_complete_disallow(proxy: Proxy):
    site = LocalOrigin()
    site.routes["/robots.txt"] = Route(status=500, body=b"oops")
    try:
        r = proxy.get(site.url("/page"))
        assert r.status_code == 503
        assert r.headers["X-Crawlguard-Decision"] == "robots-unreachable"
        assert int(r.headers["Retry-After"]) >= 1
        assert site.paths() == []
        fetches = robots_fetches(site)
        assert proxy.get(site.url("/page2")).status_code == 503
        assert robots_fetches(site) == fetches  # failures back off, not refetched per request
    finally:
        site.close()


def test_missing_robots_means_no_restrictions(proxy: Proxy):
    site = LocalOrigin(robots=None)  # 404
    try:
        assert proxy.get(site.url("/anything/at/all")).status_code == 200
    finally:
        site.close()


def test_concurrent_first_requests_cause_one_fetch(proxy: Proxy):
    site = LocalOrigin(robots=b"User-agent: *\nAllow: /\n")
    site.routes["/robots.txt"] = Route(body=b"User-agent: *\nAllow: /\n", delay=0.3)
    try:
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda i: proxy.get(site.url(f"/p{i}")).status_code, range(20)))
        assert codes == [200] * 20
        assert robots_fetches(site) == 1
    finally:
        site.close()


def test_https_origin_robots(proxy: Proxy, server_cert: trustme.LeafCert):
    site = LocalOrigin(robots=ROBOTS, tls=server_cert)
    try:
        assert proxy.get(site.url("/private/y")).status_code == 403
        assert proxy.get(site.url("/fine")).status_code == 200
        assert site.paths() == ["/fine"]
    finally:
        site.close()
