"""`crawlguard.contrib.scrapy.CrawlguardMiddleware` with a real Scrapy crawl (issue 13).

Three crawls of three copies of one small site (`Crawl-delay: 1`, six pages) run side by
side through one proxy, as a `pacing: reject` tenant (crawlguard paces per tenant and origin,
so the copies do not interfere):

* the README's old advice (a download delay half the Crawl-delay, randomised, Scrapy's own
  immediate retry): crawlguard refuses pages with 429 `crawl-delay`;
* the same crawler made impolite (no delay, 8 at once) but with the middleware: every page
  arrives, because the middleware waits `Retry-After` and paces to the learnt interval;
* the settings the guide gives (no jitter, delay above the Crawl-delay, one at a time):
  every page arrives.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import scrapy
from harness import GOOD_UA, LocalOrigin, Proxy, base_config, tenant

ROBOTS = b"User-agent: *\nCrawl-delay: 1\n"
PAGES = ["/", "/p1", "/p2", "/p3", "/p4", "/p5"]
MIDDLEWARE = '{"crawlguard.contrib.scrapy.CrawlguardMiddleware": 580}'

SPIDER = textwrap.dedent(
    """
    import os

    import scrapy


    class Pages(scrapy.Spider):
        name = "pages"

        async def start(self):
            for url in os.environ["CG_URLS"].split():
                yield scrapy.Request(url, meta={"proxy": os.environ["CG_PROXY"]})

        def parse(self, response):
            yield {"url": response.url, "status": response.status}
    """
)

# docs/scrapy.md: Scrapy 2.19 replaced RANDOMIZE_DOWNLOAD_DELAY (and warns about it)
NO_JITTER = (
    {"DOWNLOAD_DELAY_JITTER": "0"}
    if scrapy.version_info >= (2, 19)
    else {"RANDOMIZE_DOWNLOAD_DELAY": "False"}
)

COMMON = {
    "USER_AGENT": GOOD_UA,
    "ROBOTSTXT_OBEY": "True",
    "TELNETCONSOLE_ENABLED": "False",
    "LOG_LEVEL": "INFO",
    "CLOSESPIDER_TIMEOUT": "40",
    "DOWNLOAD_TIMEOUT": "20",
}
RUNS: dict[str, dict[str, str]] = {
    # README before issue 13: "DOWNLOAD_DELAY = 1 against Crawl-delay: 2", here at scale 1/2.
    "old": {"DOWNLOAD_DELAY": "0.5"},
    # impolite on purpose: only the middleware keeps it inside the Crawl-delay
    "middleware": {
        "DOWNLOAD_DELAY": "0",
        "CONCURRENT_REQUESTS_PER_DOMAIN": "8",
        "DOWNLOADER_MIDDLEWARES": MIDDLEWARE,
    },
    # docs/crawlers/scrapy.md: no jitter, a delay above the Crawl-delay, one request at a time
    "settings": {
        "DOWNLOAD_DELAY": "1.25",
        **NO_JITTER,
        "CONCURRENT_REQUESTS_PER_DOMAIN": "1",
    },
}


@pytest.fixture
def sites() -> Iterator[dict[str, LocalOrigin]]:
    made = {name: LocalOrigin(robots=ROBOTS) for name in RUNS}
    yield made
    for site in made.values():
        site.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    cfg = base_config(tmp_path, tenants=[tenant("acme", ["AcmeBot"], pacing="reject")])
    p = Proxy(cfg, tmp_path)
    yield p
    p.stop()


def _crawl(name: str, site: LocalOrigin, proxy: Proxy, tmp: Path) -> subprocess.Popen[str]:
    spider = tmp / "pages.py"
    spider.write_text(SPIDER)
    cmd = [sys.executable, "-m", "scrapy", "runspider", str(spider),
           "-O", f"{tmp / name}.jsonl:jsonlines"]  # fmt: skip
    for key, value in {**COMMON, **RUNS[name]}.items():
        cmd += ["-s", f"{key}={value}"]
    env = {
        **os.environ,
        "CG_URLS": " ".join(site.url(path) for path in PAGES),
        "CG_PROXY": f"http://acme:acme-secret@127.0.0.1:{proxy.port}",
    }
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        env.pop(var, None)
    log = (tmp / f"{name}.log").open("w")
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _stat(log: str, key: str) -> int:
    m = re.search(rf"'{re.escape(key)}': (\d+)", log)
    return int(m.group(1)) if m else 0


def test_middleware_and_settings_lose_no_page_the_old_advice_is_refused(
    proxy: Proxy, sites: dict[str, LocalOrigin], tmp_path: Path
) -> None:
    crawls = {name: _crawl(name, sites[name], proxy, tmp_path) for name in RUNS}
    for name, crawl in crawls.items():
        assert crawl.wait(timeout=60) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    refusals = {
        name: [
            r
            for r in proxy.violations("--tenant", "acme")
            if r["url"].startswith(site.url("")) and r["kind"] == "crawl-delay"
        ]
        for name, site in sites.items()
    }
    fetched: dict[str, list[str]] = {}
    logs: dict[str, str] = {}
    for name, site in sites.items():
        items = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        fetched[name] = sorted(i["url"].removeprefix(site.url("")) for i in items)
        assert all(i["status"] == 200 for i in items)
        logs[name] = (tmp_path / f"{name}.log").read_text()

    # The old advice: crawlguard refused pages (429 crawl-delay), each one a violation.
    assert refusals["old"], logs["old"][-3000:]
    assert all(r["action"] == "blocked" and r["retry_after"] >= 1 for r in refusals["old"])

    # The middleware: paced from the robots.txt Scrapy read (issue 21), so no page was
    # refused, though the crawler asks for 8 at once with no delay; every page arrived.
    assert fetched["middleware"] == sorted(PAGES), logs["middleware"][-3000:]
    assert _stat(logs["middleware"], "crawlguard/robots_seeded") == 1, logs["middleware"][-3000:]
    assert refusals["middleware"] == []
    assert _stat(logs["middleware"], "crawlguard/retried/crawl-delay") == 0
    assert "retry/max_reached" not in logs["middleware"]

    # The guide's settings: every page arrived, and this Scrapy has nothing to warn about.
    assert fetched["settings"] == sorted(PAGES), logs["settings"][-3000:]
    assert "Deprecat" not in logs["settings"], logs["settings"][-3000:]

    # Whatever the client did, the site saw its pages no closer than the Crawl-delay.
    for site in sites.values():
        times = sorted(h.t for h in site.page_hits())
        assert all(b - a >= 1.0 - 0.05 for a, b in itertools.pairwise(times))
