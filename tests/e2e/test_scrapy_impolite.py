"""A real crawler configured impolitely, through the proxy (issue 4).

Scrapy with robots.txt ignored, no download delay and 8 concurrent requests crawls a small
site whose robots.txt asks for `Crawl-delay: 1` and forbids /private. With a `delay`-paced
tenant the proxy holds the burst and lets it through one page per second: the origin never
sees /private and never two pages closer than the Crawl-delay.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import GOOD_UA, LocalOrigin, Proxy, Route, base_config, tenant

CRAWL_DELAY = 1.0
GAP_SLACK = 0.05
ROBOTS = b"User-agent: *\nCrawl-delay: 1\nDisallow: /private\n"
PAGES = ["/", "/p1", "/p2", "/p3", "/p4", "/p5", "/p6", "/p7"]
PRIVATE = ["/private/a", "/private/b"]

SPIDER = textwrap.dedent(
    """
    import os

    import scrapy


    class Impolite(scrapy.Spider):
        name = "impolite"

        async def start(self):
            yield scrapy.Request(os.environ["CG_START"], meta={"proxy": os.environ["CG_PROXY"]})

        def parse(self, response):
            yield {
                "url": response.url,
                "status": response.status,
                "delayed": response.headers.get("X-Crawlguard-Delayed", b"").decode() or None,
            }
            for href in response.css("a::attr(href)").getall():
                yield response.follow(href, meta={"proxy": os.environ["CG_PROXY"]})
    """
)


def page(links: list[str]) -> Route:
    body = "".join(f'<a href="{href}">{href}</a>\n' for href in links)
    return Route(
        body=f"<html><body>{body}</body></html>".encode(),
        headers={"Content-Type": "text/html; charset=utf-8"},
    )


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=ROBOTS)
    for i, path in enumerate(PAGES):
        # every page links to every other page (rotated) and to the private pages
        others = PAGES[i + 1 :] + PAGES[:i]
        o.routes[path] = page([*PRIVATE, *others])
    for path in PRIVATE:
        o.routes[path] = page(PAGES)
    yield o
    o.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    cfg = base_config(
        tmp_path,
        pacing={"default_min_interval": 0, "max_hold": 30},
        tenants=[tenant("acme", ["AcmeBot"], pacing="delay")],
    )
    p = Proxy(cfg, tmp_path)
    yield p
    p.stop()


def test_impolite_scrapy_crawl_is_paced_and_kept_out_of_private(
    proxy: Proxy, site: LocalOrigin, tmp_path: Path
):
    spider = tmp_path / "spider.py"
    spider.write_text(SPIDER)
    out = tmp_path / "items.jsonl"
    settings = {
        "ROBOTSTXT_OBEY": "False",
        "DOWNLOAD_DELAY": "0",
        "CONCURRENT_REQUESTS": "8",
        "CONCURRENT_REQUESTS_PER_DOMAIN": "8",
        "RETRY_ENABLED": "False",
        "AUTOTHROTTLE_ENABLED": "False",
        "USER_AGENT": GOOD_UA,
        "CLOSESPIDER_PAGECOUNT": str(len(PAGES) + len(PRIVATE)),
        "CLOSESPIDER_TIMEOUT": "20",
        "DOWNLOAD_TIMEOUT": "30",
        "TELNETCONSOLE_ENABLED": "False",
        "LOG_LEVEL": "INFO",
    }
    cmd = [sys.executable, "-m", "scrapy", "runspider", str(spider), "-O", f"{out}:jsonlines"]
    for key, value in settings.items():
        cmd += ["-s", f"{key}={value}"]
    env = {
        **os.environ,
        "CG_START": site.url("/"),
        "CG_PROXY": f"http://acme:acme-secret@127.0.0.1:{proxy.port}",
    }
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        env.pop(var, None)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=40)
    assert done.returncode == 0, done.stderr[-3000:]

    items = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    crawled = sorted(item["url"].removeprefix(site.url("")) for item in items)
    assert crawled == sorted(PAGES), done.stderr[-3000:]
    assert all(item["status"] == 200 for item in items)
    assert sum(item["delayed"] is not None for item in items) >= len(PAGES) - 2  # held burst

    # The origin: no /private, and pages no closer than the Crawl-delay.
    assert not [p for p in site.paths() if p.startswith("/private")]
    assert sorted(site.paths()) == sorted(PAGES)
    times = sorted(h.t for h in site.page_hits())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= CRAWL_DELAY - GAP_SLACK, gaps

    # The proxy refused the private pages (403) and held the burst; both on the record.
    recs = proxy.violations("--tenant", "acme")
    blocked = {r["url"].removeprefix(site.url("")) for r in recs if r["action"] == "blocked"}
    assert blocked == set(PRIVATE)
    assert {r["kind"] for r in recs if r["action"] == "blocked"} == {"robots-disallow"}
    delayed = [r for r in recs if r["action"] == "delayed"]
    assert len(delayed) >= len(PAGES) - 2
    assert all(r["kind"] == "crawl-delay" and r["crawl_delay"] == CRAWL_DELAY for r in delayed)
