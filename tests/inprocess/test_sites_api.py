"""`GET /api/sites` (issue 22) over real HTTP on loopback: the real AdminServer and its auth, over
a real Runtime whose site views come from a fake (`FakeSites`): what the handler does with the
views (order, top N, shares, shape, validation) is tested here; the views themselves are the
site state's (tests of crawlguard.state.sites_memory and the Redis backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adminutil import Admin
from harness import base_config

from crawlguard.admin import AdminServer
from crawlguard.admin.sites_api import MAX_TENANTS
from crawlguard.config import parse_config
from crawlguard.runtime import Runtime
from crawlguard.state.sites import SiteView, TenantShare


def view(
    site: str,
    grants: int,
    *,
    rate: float = 1.0,
    paused_for: float = 0.0,
    interval: float = 0.25,
    tenants: tuple[TenantShare, ...] = (),
    **kw: Any,
) -> SiteView:
    fields: dict[str, Any] = {
        "base_interval": 0.25,
        "capped_rps": None,
        "in_flight": 0,
        "max_concurrency": 8,
    }
    fields.update(kw)
    return SiteView(
        site=site, interval=interval, rate=rate, paused_for=paused_for, grants=grants,
        tenants=tenants, **fields,
    )  # fmt: skip


class FakeSites:
    """The Runtime with the site-state reads the admin server uses replaced by canned views
    (everything else, config and auth included, is the real Runtime's)."""

    def __init__(self, runtime: Runtime, views: list[SiteView]) -> None:
        self._runtime = runtime
        self.views = views
        self.asked: list[int] = []  # the limits site_views was called with

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    async def site_views(self, limit: int) -> list[SiteView]:
        self.asked.append(limit)
        return sorted(self.views, key=lambda v: -v.grants)[:limit]

    async def site_view(self, site: str) -> SiteView | None:
        return next((v for v in self.views if v.site == site), None)

    def site_of(self, host: str) -> str:
        """`platform.site_key: domain` for *.example.com, the host otherwise."""
        return "example.com" if host.endswith(".example.com") else host


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[tuple[Admin, FakeSites]]:
    runtime = Runtime(parse_config(base_config(tmp_path)))
    runtime.start()
    fake = FakeSites(runtime, [])
    server = AdminServer(fake)
    await server.start()
    session = aiohttp.ClientSession(trust_env=False, cookie_jar=aiohttp.DummyCookieJar())
    try:
        yield Admin(fake, server, session), fake  # type: ignore[arg-type]
    finally:
        await session.close()
        await server.stop()
        await runtime.close()


SHOP = view(
    "example.com",
    120,
    interval=1.0,
    base_interval=0.5,
    rate=0.5,
    paused_for=2.5,
    capped_rps=1.0,
    in_flight=3,
    max_concurrency=4,
    tenants=(
        TenantShare("globex", 1.0, 40, True),
        TenantShare("acme", 2.0, 80, False),
        TenantShare("initech", 1.0, 0, True),
    ),
)


async def test_sites_shape(sites: tuple[Admin, FakeSites]) -> None:
    admin, fake = sites
    fake.views = [SHOP, view("news.example.org", 6, interval=0.0, base_interval=0.0,
                             max_concurrency=None)]  # fmt: skip
    body = await admin.json("/api/sites")
    assert body["window"] == 60 and body["sort"] == "busy"
    assert [s["site"] for s in body["sites"]] == ["example.com", "news.example.org"]
    assert body["sites"][0] == {
        "site": "example.com",
        "rate_rps": 2.0,  # 120 slots in 60 s
        "budget_rps": 1.0,  # 1 / the interval in force
        "interval": 1.0,
        "base_interval": 0.5,
        "backoff": {"rate": 0.5, "paused_for": 2.5, "capped_rps": 1.0},
        "in_flight": 3,
        "max_concurrency": 4,
        "tenants": [  # most slots first
            {"tenant": "acme", "weight": 2.0, "grants": 80, "share": 0.667, "waiting": False},
            {"tenant": "globex", "weight": 1.0, "grants": 40, "share": 0.333, "waiting": True},
            {"tenant": "initech", "weight": 1.0, "grants": 0, "share": 0.0, "waiting": True},
        ],
        "tenants_total": 3,
    }
    quiet = body["sites"][1]
    assert quiet["rate_rps"] == 0.1 and quiet["budget_rps"] is None  # no pace: null
    assert quiet["max_concurrency"] is None and quiet["tenants"] == []
    r = await admin.get("/api/sites")
    assert r.headers["Cache-Control"] == "no-store"


async def test_sites_top_n_and_backoff_order(sites: tuple[Admin, FakeSites]) -> None:
    admin, fake = sites
    fake.views = [view(f"s{i:03}.test", grants=i) for i in range(150)]
    fake.views += [
        view("slow.test", 1, rate=1 / 16, paused_for=0.0),
        view("paused.test", 2, rate=1 / 16, paused_for=30.0),
        view("half.test", 3, rate=0.5),
    ]
    body = await admin.json("/api/sites")
    assert [s["site"] for s in body["sites"]] == [f"s{i:03}.test" for i in range(149, 129, -1)]
    assert fake.asked[-1] == 20
    assert len((await admin.json("/api/sites?limit=100"))["sites"]) == 100
    assert len((await admin.json("/api/sites?limit=1&sort=busy"))["sites"]) == 1

    body = await admin.json("/api/sites?sort=backoff&limit=3")
    assert body["sort"] == "backoff"
    # ranked among the busiest 100 the state lists: the three slowed sites are not among them
    assert fake.asked[-1] == 100
    assert [s["site"] for s in body["sites"]] == ["s149.test", "s148.test", "s147.test"]
    # lowest rate first; of equal rates the longer pause first
    fake.views = [*fake.views[-3:], view("busy.test", 500)]
    body = await admin.json("/api/sites?sort=backoff&limit=3")
    assert [s["site"] for s in body["sites"]] == ["paused.test", "slow.test", "half.test"]
    assert body["sites"][0]["backoff"] == {"rate": 0.062, "paused_for": 30.0, "capped_rps": None}


async def test_sites_one_site(sites: tuple[Admin, FakeSites]) -> None:
    admin, fake = sites
    fake.views = [SHOP, view("other.test", 500)]
    body = await admin.json("/api/sites?site=WWW.Example.COM.")  # canonical, then its site key
    assert [s["site"] for s in body["sites"]] == ["example.com"]
    body = await admin.json("/api/sites?site=idle.test")
    assert body == {"window": 60, "sort": "busy", "sites": []}  # idle: empty, not a 404
    assert (await admin.json("/api/sites?site=other.test&sort=backoff"))["sites"][0]["site"] == (
        "other.test"
    )


async def test_sites_lists_at_most_max_tenants(sites: tuple[Admin, FakeSites]) -> None:
    admin, fake = sites
    many = tuple(TenantShare(f"t{i:03}", 1.0, i, False) for i in range(MAX_TENANTS + 10))
    fake.views = [view("crowded.test", sum(t.grants for t in many), tenants=many)]
    site = (await admin.json("/api/sites"))["sites"][0]
    assert len(site["tenants"]) == MAX_TENANTS and site["tenants_total"] == MAX_TENANTS + 10
    assert site["tenants"][0]["tenant"] == f"t{MAX_TENANTS + 9:03}"


async def test_sites_bad_input(sites: tuple[Admin, FakeSites]) -> None:
    admin, _ = sites

    async def bad(query: str) -> dict[str, Any]:
        r = await admin.get("/api/sites?" + query)
        assert r.status == 400, (query, r.status)
        return await r.json()

    assert (await bad("sort=rate"))["valid"] == ["busy", "backoff"]
    for limit in ("0", "101", "-1", "ten", "1e2"):
        assert "1 to 100" in (await bad(f"limit={limit}"))["error"], limit
    assert "once" in (await bad("sort=busy&sort=backoff"))["error"]
    assert "once" in (await bad("limit=1&limit=2"))["error"]
    body = await bad("host=example.com")  # a typo must not silently show every site
    assert body["valid"] == ["sort", "limit", "site"]
    assert "site" in (await bad("site=a..b"))["error"]
    assert "site" in (await bad("site=example.com:443"))["error"]
    assert (await admin.json("/api/sites?sort=&limit="))["sort"] == "busy"  # empty is absent


async def test_sites_needs_the_operator_token(sites: tuple[Admin, FakeSites]) -> None:
    admin, _ = sites
    assert (await admin.get("/api/sites", token=None)).status == 401
    assert (await admin.get("/api/sites", token="acme-secret")).status == 401
