"""Crawler threads for the site-budget tests (issue 22): tenants that ask for the next page as
soon as one is answered, and the origin-log arithmetic that judges the platform's pace."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import requests
from harness import Hit, Proxy


def token(tid: str) -> str:
    return tid.capitalize() + "Bot"


def ua(tid: str) -> str:
    return f"{token(tid)}/1.0 (+https://{tid}.example/bot)"


DRAIN = 1.0  # s after `until` a held request may still be answered; then the crawler leaves


def crawl(proxy: Proxy, url: str, tid: str, until: float, statuses: list[int]) -> None:
    """One of a tenant's crawler threads, until `until` (time.monotonic): a request still held
    by then is given up (its client leaves, the proxy frees its place), as a crawler that
    stops would, so the test does not wait for every held request's slot."""
    session = requests.Session()
    for n in itertools.count():
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            r = session.get(
                f"{url}/t/{tid}/{n}",
                proxies=proxy.proxies(tid),
                headers={"User-Agent": ua(tid)},
                timeout=(5, left + DRAIN),
            )
            statuses.append(r.status_code)
        except requests.RequestException:
            if time.monotonic() < until:  # given up after the end: not a failure
                statuses.append(0)


def start_crawlers(
    jobs: list[tuple[Proxy, str, str, float]], statuses: dict[str, list[int]]
) -> Callable[[], None]:
    """Start one thread per (proxy, site url, tenant, until); returns a join."""
    threads = []
    for proxy, url, tid, until in jobs:
        got = statuses.setdefault(tid, [])
        t = threading.Thread(target=crawl, args=(proxy, url, tid, until, got), daemon=True)
        t.start()
        threads.append(t)

    def join() -> None:
        for t in threads:
            t.join(60)

    return join


def who(hit: Hit) -> str:
    return hit.path.split("/")[2]


def gaps(hits: list[Hit]) -> list[float]:
    times = sorted(h.t for h in hits)
    return [b - a for a, b in itertools.pairwise(times)]
