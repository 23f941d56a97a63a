"""A Scrapy downloader middleware that keeps a crawl inside crawlguard's pacing.

Why: stock Scrapy loses pages behind a `pacing: reject` proxy. Its RetryMiddleware retries a
429 at once and ignores `Retry-After`, so a retry meets the same refusal and the page is
dropped after `RETRY_TIMES`; and `RANDOMIZE_DOWNLOAD_DELAY` sends every other request up to
50 % early even when `DOWNLOAD_DELAY` equals the site's Crawl-delay. Every refusal is also a
violation on the tenant's record.

What it does, per origin (scheme, host, port: the key crawlguard paces by):

* A 429 or 503 with `Retry-After` (crawlguard's `crawl-delay`, `origin-backoff`,
  `tenant-limit`, `site-budget` (the platform's shared pace on the site: the Retry-After is
  this tenant's next fair slot, kept for it), `proxy-busy`, `robots-unreachable`,
  `state-unavailable`, `store-backlogged`, or the origin's own) pauses that origin for
  `Retry-After` seconds and re-schedules the request (`dont_filter`), at most
  `CRAWLGUARD_MAX_RETRIES` times; a `Retry-After` longer than `CRAWLGUARD_MAX_RETRY_AFTER`
  gives up at once (the response goes on to the spider).
* The robots.txt Scrapy downloads (`ROBOTSTXT_OBEY`; the request passes through this
  middleware) seeds the site's interval: its Crawl-delay / Request-rate for the crawler's
  product token (read as crawlguard reads it), plus `CRAWLGUARD_PACING_MARGIN`, so the first
  pages are paced before any refusal. Stat: `crawlguard/robots_seeded`.
* A `crawl-delay` refusal teaches it the site's interval: the gap since the previous request
  it released to that origin plus `Retry-After` (plus `CRAWLGUARD_PACING_MARGIN`). From then
  on it releases one request per interval to that origin, so later pages are not refused.
* The interval counts from the later of the previous release and the previous answer, so
  time a request spends on its way to crawlguard cannot make the next one arrive early.
* Waiting never blocks the reactor: `process_request` awaits a `deferLater`, so other
  origins keep crawling.
* `CRAWLGUARD_PROXY` (optional, `http://tenant:token@host:port`): sent as the proxy of every
  request that has none in `meta`, Scrapy's own robots.txt request included. Unlike an
  exported `https_proxy` it reaches no other program (curl to the admin port, say).
* Refusals that a retry cannot fix (403 `ua-*`, `robots-disallow`, `destination-forbidden`)
  are logged once per kind with crawlguard's explanation and passed on.

Stats: `crawlguard/retried/<kind>`, `crawlguard/gave_up/<kind>`, `crawlguard/refused/<kind>`,
`crawlguard/held` (responses `delay` pacing held), `crawlguard/waited_seconds`.

    DOWNLOADER_MIDDLEWARES = {"crawlguard.contrib.scrapy.CrawlguardMiddleware": 580}

580 puts it before Scrapy's RetryMiddleware (550) on the way back, so that one never sees
a 429 this middleware handles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy.exceptions import NotConfigured

from crawlguard.policy.http_dates import parse_retry_after

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.statscollectors import StatsCollector

log = logging.getLogger(__name__)

DECISION = "X-Crawlguard-Decision"
DELAYED = "X-Crawlguard-Delayed"
RETRY_META = "crawlguard_retries"
GAP_META = "_crawlguard_gap"  # seconds since the previous request released to the origin
THROTTLE = frozenset({429, 503})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class _Origin:
    """Client-side pacing for one origin: what crawlguard does, done before it has to."""

    interval: float = 0.0  # learnt from crawl-delay refusals
    next_free: float = 0.0  # monotonic time the next request may be released
    paused_until: float = 0.0  # Retry-After in force
    last_release: float | None = None


def origin_of(url: str) -> str:
    """`scheme://host:port`, the key crawlguard paces a tenant by."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class CrawlguardMiddleware:
    """Honours crawlguard's (and origins') Retry-After and paces to the learnt Crawl-delay."""

    def __init__(
        self,
        stats: StatsCollector | None = None,
        *,
        proxy: str | None = None,
        max_retries: int = 5,
        max_retry_after: float = 600.0,
        margin: float = 0.1,
        clock: Any = time.monotonic,
    ) -> None:
        self.stats = stats
        self.proxy = proxy or None
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.margin = margin
        self._clock = clock
        self._origins: dict[str, _Origin] = {}
        self._told: set[str] = set()  # refusal kinds already logged

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CrawlguardMiddleware:
        settings = crawler.settings
        if not settings.getbool("CRAWLGUARD_ENABLED", True):
            raise NotConfigured("CRAWLGUARD_ENABLED is off")
        return cls(
            crawler.stats,
            proxy=settings.get("CRAWLGUARD_PROXY"),
            max_retries=settings.getint("CRAWLGUARD_MAX_RETRIES", 5),
            max_retry_after=settings.getfloat("CRAWLGUARD_MAX_RETRY_AFTER", 600.0),
            margin=settings.getfloat("CRAWLGUARD_PACING_MARGIN", 0.1),
        )

    def interval(self, url: str) -> float:
        """The interval learnt for the origin of `url` (0 until a crawl-delay refusal)."""
        state = self._origins.get(origin_of(url))
        return state.interval if state is not None else 0.0

    # -- the way out ------------------------------------------------------------------------

    async def process_request(self, request: Request, spider: Spider | None = None) -> None:
        """Release the request at its origin's next free time (a pause or the interval)."""
        if self.proxy and "proxy" not in request.meta:
            request.meta["proxy"] = self.proxy  # HttpProxyMiddleware (750) sends it
        state = self._origins.setdefault(origin_of(request.url), _Origin())
        waited = 0.0
        while True:  # a response may move the origin's next free time while this one waits
            now = self._clock()
            at = max(now, state.next_free, state.paused_until)
            if at <= now:
                break
            waited += at - now
            await _sleep(at - now)
        state.next_free = now + state.interval  # no await since the check: this one's turn
        if state.last_release is not None:
            request.meta[GAP_META] = now - state.last_release
        state.last_release = now
        if waited:
            self._inc("crawlguard/waited_seconds", round(waited, 3))

    # -- the way back -----------------------------------------------------------------------

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        kind = _header(response, DECISION)
        robots = urlsplit(request.url).path == "/robots.txt"
        if robots and response.status == 200 and kind in (None, "allowed"):
            self._seed(request, response)
        elif not robots and (state := self._origins.get(origin_of(request.url))) is not None:
            # crawlguard timed this request when it arrived, before this answer: the next one
            # released an interval from now arrives at least an interval after it, however
            # long either spent on the way (robots.txt is paced on a lane of its own)
            state.next_free = max(state.next_free, self._clock() + state.interval)
        if response.headers.get(DELAYED):
            self._inc("crawlguard/held")
        if response.status in THROTTLE:
            wait = parse_retry_after(_header(response, "Retry-After"), time.time())
            if wait is not None:
                return self._retry(request, response, kind or "origin", wait)
        if kind and kind not in ("allowed", "auth-required") and response.status >= 400:
            self._inc(f"crawlguard/refused/{kind}")
            if kind not in self._told:
                self._told.add(kind)
                body = response.text if hasattr(response, "text") else ""
                why = body.strip()[:1000]
                log.warning("crawlguard refused %s (%s): %s", request.url, kind, why)
        return response

    def _seed(self, request: Request, response: Response) -> None:
        """The site's interval from the robots.txt Scrapy fetched (RobotsTxtMiddleware): the
        Crawl-delay and Request-rate of the group crawlguard applies to this product token."""
        from crawlguard.policy.pacing import interval
        from crawlguard.policy.robots import RobotsRules
        from crawlguard.policy.ua import product_token_of

        agent = _header(request, "User-Agent") or ""
        token = product_token_of(agent) or "*"
        verdict = RobotsRules.parse(response.body).decide(token, "/")
        seconds = interval(verdict.crawl_delay, verdict.request_rate, 0.0)
        if seconds <= 0:
            return
        origin = origin_of(request.url)
        state = self._origins.setdefault(origin, _Origin())
        learnt = seconds + self.margin
        if learnt > state.interval:
            state.interval = learnt
            self._inc("crawlguard/robots_seeded")
            log.info("crawlguard: %s robots.txt asks %s for one request every %.2f s; pacing to "
                     "it", origin, token, learnt)  # fmt: skip

    def _retry(
        self, request: Request, response: Response, kind: str, wait: float
    ) -> Request | Response:
        origin = origin_of(request.url)
        state = self._origins.setdefault(origin, _Origin())
        now = self._clock()
        state.paused_until = max(state.paused_until, now + wait)
        if kind == "crawl-delay":
            learnt = float(request.meta.get(GAP_META) or 0.0) + wait + self.margin
            if learnt > state.interval:
                state.interval = learnt
                log.info(
                    "crawlguard: %s asks for one request every %.2f s; pacing to it", origin, learnt
                )
        retries = int(request.meta.get(RETRY_META, 0))
        if request.meta.get("dont_retry") or retries >= self.max_retries:
            self._inc(f"crawlguard/gave_up/{kind}")
            return response
        if wait > self.max_retry_after:
            self._inc(f"crawlguard/gave_up/{kind}")
            log.warning(
                "crawlguard: %s asks to wait %.0f s (over CRAWLGUARD_MAX_RETRY_AFTER); gave up %s",
                origin,
                wait,
                request.url,
            )
            return response
        self._inc(f"crawlguard/retried/{kind}")
        log.debug("crawlguard: %s %s; retrying %s in %.1f s", response.status, kind, request, wait)
        retry = request.replace(dont_filter=True)
        retry.meta[RETRY_META] = retries + 1
        retry.meta.pop(GAP_META, None)
        return retry

    def _inc(self, key: str, count: float = 1) -> None:
        if self.stats is not None:
            self.stats.inc_value(key, count)


def _header(message: Request | Response, name: str) -> str | None:
    value = message.headers.get(name)
    return value.decode("latin-1") if value is not None else None


async def _sleep(seconds: float) -> None:
    """Wait without blocking the reactor, under any reactor Scrapy runs."""
    from scrapy.utils.defer import maybe_deferred_to_future
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await maybe_deferred_to_future(deferLater(reactor, seconds, lambda: None))
