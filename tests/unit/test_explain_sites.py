"""`crawlguard explain`'s site budget step (issue 22): the platform's shared pace on the URL's site,
the tenant's share of it when the site is busy, and the live view from a shared state.

The step's arithmetic is tested on small config objects (`cfg()`), the command itself on a real
config file (`--config`), offline (`--robots-file`): as tests/unit/test_explain_offline.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import pytest
import yaml
from harness import GOOD_UA, base_config, tenant

from crawlguard.cli import explain_sites, main
from crawlguard.policy.identity import Target, request_identity
from crawlguard.policy.robots import RobotsRules
from crawlguard.state.sites import SiteView, TenantShare

ROBOTS = b"""\
User-agent: *
Crawl-delay: 2
Disallow: /private/

User-agent: AcmeBot
Request-rate: 1/5
Disallow: /acme-only-no/
"""
FAST = b"User-agent: *\nCrawl-delay: 0.1\n"


def cfg(
    *,
    crawl_delay: str = "shared",
    site_key: str = "host",
    max_rps: float | None = 4,
    state: str = "memory://",
    default_min_interval: float = 0.0,
) -> Any:
    return NS(
        platform=NS(
            site_key=site_key,
            crawl_delay=crawl_delay,
            site_budget=NS(max_rps=max_rps, max_concurrency=8),
            site_overrides=[NS(site="*.big.example", max_rps=50, max_concurrency=None)],
        ),
        pacing=NS(default_min_interval=default_min_interval),
        tenants=[
            NS(id="acme", product_tokens=["AcmeBot"], weight=2.0),
            NS(id="globex", product_tokens=["GlobexCrawler"], weight=1.0),
            NS(id="initech", product_tokens=["InitechBot"], weight=1.0),
        ],
        state=NS(url=state),
    )


def at(url_host: str, path: str = "/a") -> Target:
    return request_identity("https", url_host, None, path)


def budget(c: Any, tenant_id: str | None, robots: bytes | None, host: str = "www.site.example",
           path: str = "/a") -> explain_sites.SiteBudget:  # fmt: skip
    t = next((t for t in c.tenants if t.id == tenant_id), None)
    token = t.product_tokens[0] if t is not None else "OtherBot"
    rules = RobotsRules.parse(robots) if robots is not None else None
    b = explain_sites.site_budget(c, t, token, rules, at(host, path))
    assert b is not None
    return b


def test_shared_pace_is_the_largest_of_any_configured_tenants_group() -> None:
    """As the proxy computes it (policy.budget.shared_pace): acmebot's Request-rate 1/5 paces
    the whole platform, globex (which falls to `*`, Crawl-delay 2) included."""
    acme_rate = "Request-rate: 1/5s (User-agent: acmebot)"
    b = budget(cfg(), "acme", ROBOTS)
    assert (b.site, b.interval, b.set_by) == ("www.site.example", 5.0, acme_rate)
    assert b.robots_groups == ("acmebot", "*")
    b = budget(cfg(), "globex", ROBOTS)
    assert (b.interval, b.set_by) == (5.0, acme_rate)
    lines = explain_sites.text_lines(b, cfg().tenants[1])
    assert f"all tenants together: one request every 5 s to this site, set by {acme_rate}" in (
        lines
    )
    assert any("groups that apply to the platform's tenants: acmebot, *" in x for x in lines)


def test_max_rps_paces_a_site_that_asks_for_less() -> None:
    b = budget(cfg(), "acme", FAST)
    assert b.robots_interval == 0.1
    assert (b.interval, b.set_by, b.budget_rps) == (0.25, "platform.site_budget: max_rps 4", 4.0)
    b = budget(cfg(), "acme", None)  # robots.txt not read: the budget alone
    assert (b.robots_interval, b.interval) == (None, 0.25)
    b = budget(cfg(max_rps=None), "acme", b"")  # no cap and no Crawl-delay: no pace
    assert (b.interval, b.set_by, b.budget_rps) == (0.0, None, None)
    assert "no pace" in " ".join(explain_sites.text_lines(b, None))
    b = budget(cfg(max_rps=None, default_min_interval=1.5), "acme", b"")
    assert (b.interval, b.set_by) == (1.5, "pacing.default_min_interval: 1.5")


def test_site_overrides_and_domain_keys() -> None:
    b = budget(cfg(), "acme", FAST, host="a.big.example")
    assert (b.max_rps, b.max_concurrency) == (50, None)
    assert b.limits_from == "platform.site_overrides (site *.big.example)"
    assert (b.interval, b.set_by) == (0.1, "Crawl-delay: 0.1 (User-agent: *)")  # < 50/s
    b = budget(cfg(site_key="domain"), "acme", FAST, host="www.site.example")
    assert b.site == "site.example" and b.site_key == "domain"


def test_per_tenant_mode_shares_only_the_caps() -> None:
    b = budget(cfg(crawl_delay="per-tenant"), "acme", ROBOTS)
    assert (b.interval, b.robots_interval, b.robots_groups) == (0.25, None, ())
    text = " ".join(explain_sites.text_lines(b, cfg().tenants[0]))
    assert "per-tenant: each tenant keeps its own Crawl-delay pace" in text
    assert "only the site budget's caps are shared" in text
    assert "at most one request every 0.25 s, set by platform.site_budget: max_rps 4" in text


def test_weighted_share_when_busy() -> None:
    c = cfg()
    b = budget(c, "acme", ROBOTS)
    assert (b.weight, b.weights_total, b.share) == (2.0, 4.0, 0.5)
    obj = explain_sites.json_object(b, c.tenants[0])
    assert obj is not None
    assert obj["tenant"] == {
        "id": "acme",
        "weight": 2.0,
        "weights_total": 4.0,
        "share_at_most": 0.5,
        "rps_at_most": 0.1,  # half of one request every 5 s
    }
    text = explain_sites.text_lines(b, c.tenants[0])
    assert (
        "tenant acme: weight 2 of 4: while every configured tenant wants this site, at most 50% "
        "of its slots, one request every 10 s; more while others are idle"
    ) in text
    b = budget(c, None, ROBOTS)  # no --tenant: no share
    assert b.share is None
    assert explain_sites.json_object(b, None)["tenant"] is None  # type: ignore[index]


def test_robots_txt_itself_is_not_paced() -> None:
    b = budget(cfg(), "acme", ROBOTS, path="/robots.txt")
    assert b.exempt
    assert explain_sites.text_lines(b, None)[1] == "none: /robots.txt itself is not paced"
    obj = explain_sites.json_object(b, None)
    assert obj is not None and (obj["interval"], obj["set_by"]) == (0.0, None)


# -- the live view ------------------------------------------------------------------------------


def fake_redis_sites(
    monkeypatch: pytest.MonkeyPatch, view: SiteView | Exception | None
) -> list[str]:
    """crawlguard.state.sites_redis with a RedisSites answering `view`; returns the calls."""
    calls: list[str] = []

    class RedisSites:
        @classmethod
        def from_url(cls, url: str) -> RedisSites:
            calls.append(f"from_url {url}")
            return cls()

        async def view(self, site: str, now: float) -> SiteView | None:
            calls.append(f"view {site}")
            if isinstance(view, Exception):
                raise view
            return view

        async def close(self) -> None:
            calls.append("close")

    module = types.ModuleType("crawlguard.state.sites_redis")
    module.RedisSites = RedisSites  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "crawlguard.state.sites_redis", module)
    return calls


LIVE = SiteView(
    site="www.site.example", interval=10.0, base_interval=5.0, rate=0.5, paused_for=3.0,
    capped_rps=None, in_flight=2, max_concurrency=8, grants=12,
    tenants=(TenantShare("acme", 2.0, 9, False), TenantShare("globex", 1.0, 3, True)),
)  # fmt: skip


async def test_live_view_from_a_shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    c = cfg(state="redis://127.0.0.1:6379/0")
    calls = fake_redis_sites(monkeypatch, LIVE)
    live = await explain_sites.read_live(c, "www.site.example")
    assert calls == ["from_url redis://127.0.0.1:6379/0", "view www.site.example", "close"]
    assert live.note is None and live.view is not None
    assert live.view["rate_rps"] == 0.2 and live.view["budget_rps"] == 0.1  # /api/sites' shape
    b = budget(c, "acme", ROBOTS)
    obj = explain_sites.json_object(replace(b, live=live), c.tenants[0])
    assert obj is not None and obj["live"] == live.view and obj["live_note"] is None
    text = explain_sites.text_lines(replace(b, live=live), c.tenants[0])
    assert (
        "live: 0.2/s granted over the last 60 s (budget now 0.1/s, back-off rate 0.5, paused "
        "3 s more), 2 in flight of 8"
    ) in text
    assert "live: tenant acme got 9 slots, 75% of them" in text
    text = explain_sites.text_lines(replace(b, live=live), c.tenants[1])
    assert "live: tenant globex got 3 slots, 25% of them, waiting for its turn" in text


async def test_live_view_says_why_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    live = await explain_sites.read_live(cfg(state="memory://"), "s.example")
    assert live.view is None and "memory://" in (live.note or "")
    assert "GET /api/sites?site=HOST" in (live.note or "")

    redis = cfg(state="redis://127.0.0.1:6379/0")
    fake_redis_sites(monkeypatch, None)
    live = await explain_sites.read_live(redis, "s.example")
    assert live.view is None and "idle" in (live.note or "")

    calls = fake_redis_sites(monkeypatch, ConnectionError("Connection refused"))
    live = await explain_sites.read_live(redis, "s.example")
    assert live.note == "not read: the shared state did not answer (Connection refused)"
    assert calls[-1] == "close"

    monkeypatch.setitem(sys.modules, "crawlguard.state.sites_redis", None)  # not installed
    live = await explain_sites.read_live(redis, "s.example")
    assert live.note == "not read: this crawlguard has no shared site state to read"


# -- the command --------------------------------------------------------------------------------


def explain(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["explain", *args])
    return code, out.getvalue()


@pytest.fixture
def setup(tmp_path: Path) -> list[str]:
    robots = tmp_path / "robots.txt"
    robots.write_bytes(ROBOTS)
    config = base_config(
        tmp_path,
        platform={"crawl_delay": "shared", "site_budget": {"max_rps": 4, "max_concurrency": 8}},
        tenants=[
            tenant("acme", ["AcmeBot"], weight=2),
            tenant("globex", ["GlobexCrawler"]),
            tenant("initech", ["InitechBot"]),
        ],
    )
    path = tmp_path / "crawlguard.yaml"
    path.write_text(yaml.safe_dump(config))
    return ["--robots-file", str(robots), "--config", str(path)]


def test_explain_shows_the_site_budget(setup: list[str]) -> None:
    url = "https://www.site.example/a"
    code, out = explain(url, "--user-agent", GOOD_UA, *setup, "--tenant", "acme")
    assert code == 0
    assert (
        "  site budget   site www.site.example (platform.site_key: host, crawl_delay: shared)"
        in (out)
    )
    assert "all tenants together: one request every 5 s to this site, set by Request-rate" in out
    assert "tenant acme: weight 2 of 4: while every configured tenant wants this site" in out
    assert "live: not read: state.url memory://" in out

    code, out = explain(url, "--user-agent", GOOD_UA, *setup, "--tenant", "acme", "--json")
    obj = json.loads(out)["site_budget"]
    assert obj["site"] == "www.site.example" and obj["crawl_delay"] == "shared"
    assert (obj["interval"], obj["budget_rps"]) == (5.0, 0.2)
    assert obj["set_by"] == "Request-rate: 1/5s (User-agent: acmebot)"
    assert (obj["max_rps"], obj["max_concurrency"]) == (4, 8)
    assert obj["robots_groups"] == ["acmebot", "*"]
    assert obj["tenant"]["share_at_most"] == 0.5
    assert obj["live"] is None and "memory://" in obj["live_note"]


def test_explain_site_budget_without_a_tenant(setup: list[str]) -> None:
    url = "https://www.site.example/robots.txt"
    code, out = explain(url, "--user-agent", GOOD_UA, *setup, "--json")
    assert code == 0
    obj = json.loads(out)["site_budget"]
    assert (obj["interval"], obj["tenant"], obj["live"], obj["live_note"]) == (
        0.0,
        None,
        None,
        None,
    )
