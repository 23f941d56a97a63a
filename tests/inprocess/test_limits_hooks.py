"""Tenant limits in-process through the addon's hooks (mitmproxy's test flows, a real Runtime and
origin): a concurrency slot is given back on every path (response, error, refusal, client gone
during a hold), limits refuse before robots.txt and pacing, monitor mode forwards and counts,
host globs refuse in every mode without DNS. The rules alone: tests/unit/test_limits.py.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import GOOD_UA, tenant
from inprocess import running as in_process
from mitmproxy import http
from mitmproxy.test import tflow, tutils
from netguard import netguard  # noqa: F401  (fixture)
from origins import RecordingOrigin, respond, routes

from crawlguard.policy.decisions import DECISION_HEADER
from crawlguard.proxy.addon import CrawlGuardAddon
from crawlguard.runtime import Runtime

pytestmark = pytest.mark.timeout(30)


def auth(tid: str) -> str:
    return "Basic " + base64.b64encode(f"{tid}:{tid}-secret".encode()).decode()


def flow_for(port: int, path: str, tid: str = "acme", ua: str = GOOD_UA) -> http.HTTPFlow:
    headers = [("Proxy-Authorization", auth(tid)), ("User-Agent", ua)]
    req = tutils.treq(
        host="127.0.0.1",
        port=port,
        path=path.encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in headers]),
        content=b"",
    )
    return tflow.tflow(req=req)


@asynccontextmanager
async def running(
    tmp_path: Path, tenants: list[dict[str, Any]]
) -> AsyncIterator[tuple[Runtime, CrawlGuardAddon]]:
    async with in_process(tmp_path, tenants=tenants) as env:
        yield env.guard, env.addon


ROBOTS = b"User-agent: *\nDisallow: /private/\n"


@pytest.fixture
async def origin() -> AsyncIterator[RecordingOrigin]:
    handler = routes({"/robots.txt": respond(body=ROBOTS)}, default=respond(200, b"page\n"))
    async with RecordingOrigin(handler) as o:
        yield o


@pytest.mark.usefixtures("netguard")
async def test_slot_released_on_response_error_and_refusal(
    tmp_path: Path, origin: RecordingOrigin
) -> None:
    tenants = [tenant("acme", ["AcmeBot"], max_concurrency=1)]
    async with running(tmp_path, tenants) as (guard, addon):
        limits = guard.limits
        # forwarded, then the origin's response: released
        first = flow_for(origin.port, "/a")
        await addon.requestheaders(first)
        assert first.response is None and limits.in_flight("acme") == 1
        second = flow_for(origin.port, "/b")
        await addon.requestheaders(second)
        assert second.response is not None
        assert second.response.status_code == 429
        assert second.response.headers[DECISION_HEADER] == "tenant-limit"
        assert second.response.headers["Retry-After"] == "1"
        assert limits.in_flight("acme") == 1  # the refusal holds nothing
        await addon.response(second)  # our own refusal's response hook: nothing to release
        assert limits.in_flight("acme") == 1
        first.response = http.Response.make(200, b"ok")
        await addon.response(first)
        assert limits.in_flight("acme") == 0
        # forwarded, then an error (origin failure or client gone): released
        third = flow_for(origin.port, "/c")
        await addon.requestheaders(third)
        assert third.response is None and limits.in_flight("acme") == 1
        addon.error(third)
        addon.error(third)
        assert limits.in_flight("acme") == 0
        # refused later by robots.txt: the slot taken before robots is given back
        private = flow_for(origin.port, "/private/x")
        await addon.requestheaders(private)
        assert private.response is not None
        assert private.response.headers[DECISION_HEADER] == "robots-disallow"
        assert limits.in_flight("acme") == 0
        (rec,) = guard.store.query(kind="tenant-limit")
        assert (rec.tenant, rec.action, rec.retry_after) == ("acme", "blocked", 1)
        assert rec.rule == "tenants[acme].max_concurrency: 1"


@pytest.mark.usefixtures("netguard")
async def test_limit_refused_before_robots_and_pacing(tmp_path: Path) -> None:
    handler = routes(
        {"/robots.txt": respond(body=b"User-agent: *\nCrawl-delay: 5\n")},
        default=respond(200, b"page\n"),
    )
    async with RecordingOrigin(handler) as slow, RecordingOrigin(handler) as other:
        tenants = [tenant("acme", ["AcmeBot"], max_rps=1)]
        async with running(tmp_path, tenants) as (guard, addon):
            # spend the tenant's token on another origin's robots.txt (its own pacing lane)
            warm = flow_for(other.port, "/robots.txt")
            await addon.requestheaders(warm)
            assert warm.response is None
            addon.error(warm)
            flow = flow_for(slow.port, "/page")
            await addon.requestheaders(flow)
            assert flow.response is not None
            assert flow.response.headers[DECISION_HEADER] == "tenant-limit"
            assert slow.hits == []  # robots.txt was not even fetched
            # no pacing slot was consumed: once the token is back, the page passes pacing
            guard.limits.clock = lambda: 10**9  # far in the future for the bucket only
            again = flow_for(slow.port, "/page")
            await addon.requestheaders(again)
            assert again.response is None, again.response and again.response.get_text()


@pytest.mark.usefixtures("netguard")
async def test_monitor_over_the_limit_is_forwarded_logged_and_counted(
    tmp_path: Path, origin: RecordingOrigin
) -> None:
    ua = "GlobexCrawler/2.0 (+https://globex.example/bot)"
    tenants = [tenant("globex", ["GlobexCrawler"], mode="monitor", max_concurrency=1)]
    async with running(tmp_path, tenants) as (guard, addon):
        a, b = flow_for(origin.port, "/a", "globex", ua), flow_for(origin.port, "/b", "globex", ua)
        await addon.requestheaders(a)
        await addon.requestheaders(b)
        assert a.response is None and b.response is None  # monitor forwards
        assert guard.limits.in_flight("globex") == 2
        (rec,) = guard.store.query(kind="tenant-limit")
        assert rec.action == "logged"
        addon.error(a)
        addon.error(b)
        assert guard.limits.in_flight("globex") == 0


@pytest.mark.usefixtures("netguard")
async def test_host_globs_refuse_in_every_mode_without_dns(tmp_path: Path) -> None:
    tenants = [
        tenant("acme", ["AcmeBot"], deny_hosts=["*.evil.test"]),
        tenant("initech", ["InitechBot"], mode="off", allow_hosts=["example.com"]),
    ]
    async with running(tmp_path, tenants) as (guard, addon):
        denied = flow_for(80, "/")
        denied.request.host = "WWW.Evil.Test."
        await addon.requestheaders(denied)
        assert denied.response is not None and denied.response.status_code == 403
        assert denied.response.headers[DECISION_HEADER] == "destination-forbidden"
        assert "tenants[acme].deny_hosts: *.evil.test" in denied.response.get_text()
        off = flow_for(80, "/", "initech", "InitechBot/3.0 (+https://initech.example/bot)")
        off.request.host = "other.test"
        await addon.requestheaders(off)
        assert off.response is not None and off.response.status_code == 403
        assert "tenants[initech].allow_hosts" in off.response.get_text()
        (rec,) = guard.store.query(kind="destination-forbidden")  # `off` records nothing
        assert (rec.tenant, rec.rule) == ("acme", "tenants[acme].deny_hosts: *.evil.test")
