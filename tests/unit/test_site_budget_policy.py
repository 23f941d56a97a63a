"""The site budget's pure parts (issue 22): which robots.txt lines make a site's shared pace,
the health signals that slow a site, the decisions it makes, and how its refusals are planned
(counted, never recorded as a violation)."""

from __future__ import annotations

import pytest

from crawlguard.config import PlatformSection
from crawlguard.policy.budget import (
    ERROR_THRESHOLD,
    HEALTH_WINDOW,
    SiteBudget,
    SiteHealth,
    budget_refusal,
)
from crawlguard.policy.decisions import Kind
from crawlguard.policy.plan import plan
from crawlguard.policy.robots import RobotsRules
from crawlguard.policy.ua import TokenIndex
from crawlguard.state.sites import SiteGrant
from crawlguard.state.sites_memory import MemorySites

ROBOTS = b"""User-agent: acmebot
Crawl-delay: 5
Allow: /

User-agent: unknownbot
Crawl-delay: 60
Allow: /

User-agent: *
Crawl-delay: 2
Allow: /
"""


def budget(crawl_delay: str = "shared", default: float = 0.0) -> SiteBudget:
    platform = PlatformSection.model_validate(
        {"crawl_delay": crawl_delay, "site_budget": {"max_rps": None, "max_concurrency": None}}
    )
    return SiteBudget(MemorySites(), platform, default_min_interval=default)


def test_shared_pace_is_the_largest_delay_of_any_registered_tokens_group() -> None:
    rules = RobotsRules.parse(ROBOTS)
    index = TokenIndex([("acme", ["AcmeBot"]), ("hooli", ["HooliBot"])])
    seconds, source = budget().shared_interval(rules, index)
    # acmebot's group (5) and `*` for HooliBot (2); unknownbot's 60 belongs to no tenant
    assert seconds == 5 and source == "Crawl-delay: 5 (User-agent: acmebot)"


def test_star_group_counts_only_while_some_token_is_not_named() -> None:
    rules = RobotsRules.parse(
        b"User-agent: acmebot\nCrawl-delay: 1\nAllow: /\n\nUser-agent: *\nCrawl-delay: 9\n"
    )
    only_acme = TokenIndex([("acme", ["AcmeBot"])])
    assert budget().shared_interval(rules, only_acme)[0] == 1
    both = TokenIndex([("acme", ["AcmeBot"]), ("hooli", ["HooliBot"])])
    assert budget().shared_interval(rules, both) == (9, "Crawl-delay: 9 (User-agent: *)")


def test_request_rate_and_default_min_interval() -> None:
    index = TokenIndex([("acme", ["AcmeBot"])])
    rules = RobotsRules.parse(b"User-agent: *\nRequest-rate: 1/10s\n")
    assert budget().shared_interval(rules, index) == (10, "Request-rate: 1/10s (User-agent: *)")
    assert budget(default=3).shared_interval(RobotsRules.parse(b""), index)[0] == 3
    assert budget(default=3).shared_interval(None, index)[0] == 3


def test_sustained_5xx_slows_once_per_run() -> None:
    health = SiteHealth()
    answers = [health.observe("s", 500, None) for _ in range(ERROR_THRESHOLD)]
    assert answers == [False] * (ERROR_THRESHOLD - 1) + [True]
    assert not health.observe("s", 500, None)  # a new run starts counting again
    assert not any(health.observe("s", 503, None) for _ in range(10))  # 503: throttling, apart
    assert not any(health.observe("other", 200, None) for _ in range(10))


def test_doubling_median_response_time_slows() -> None:
    health = SiteHealth()
    assert not any(health.observe("s", 200, 0.1) for _ in range(HEALTH_WINDOW))  # baseline
    assert not any(health.observe("s", 200, 0.15) for _ in range(HEALTH_WINDOW))
    slow = [health.observe("s", 200, 0.5) for _ in range(HEALTH_WINDOW)]
    assert slow == [False] * (HEALTH_WINDOW - 1) + [True]


def test_a_fast_sites_jitter_is_not_strain() -> None:
    """5 ms to 20 ms is four times the median but no strain (nor is the proxy's loop lag)."""
    health = SiteHealth()
    assert not any(health.observe("s", 200, 0.005) for _ in range(HEALTH_WINDOW))
    assert not any(health.observe("s", 200, 0.02) for _ in range(3 * HEALTH_WINDOW))


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_site_budget_is_counted_never_recorded(mode: str) -> None:
    grant = SiteGrant(False, 2.2, "share", 1.0, 0.5)
    decision = budget_refusal("example.com", grant, "Crawl-delay: 1 (User-agent: *)", "acme", None)
    assert decision.kind is Kind.SITE_BUDGET and decision.status == 429
    assert decision.retry_after == 3
    assert "50%" in (decision.rule or "") and "not a violation" in decision.body()
    refused = plan(mode, decision)
    assert refused.record is None and refused.refuse
    held = plan(mode, decision, held=True)
    assert held.record is None and held.hold and not held.refuse


async def test_observe_slows_and_speeds_the_site() -> None:
    b = budget()
    assert await b.observe("s", 429, "7", 0.1)
    view = await b.view("s")
    assert view is not None and view.rate == 0.5 and view.paused_for == pytest.approx(7, abs=0.5)
    assert not await b.observe("s", 200, None, 0.1)
    view = await b.view("s")
    assert view is not None and view.rate > 0.5  # a success adds
    await b.observe("s", 200, None, None, (2.0, None))  # RateLimit: at most 2/s
    view = await b.view("s")
    assert view is not None and view.capped_rps == 2.0
