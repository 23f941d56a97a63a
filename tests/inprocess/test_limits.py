"""Tenant limits (crawlguard.policy.limits): host globs, the token bucket, the concurrency count,
their config validation, and — in-process through the addon's hooks — that a concurrency slot is
given back on every path (response, error, refusal, client gone during a hold)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import GOOD_UA, base_config, tenant
from inprocess import running as in_process
from mitmproxy import http
from mitmproxy.test import tflow, tutils
from netguard import netguard  # noqa: F401  (fixture)
from origins import RecordingOrigin, respond, routes

from crawlguard.config import ConfigError, Tenant, parse_config
from crawlguard.policy.decisions import DECISION_HEADER, Kind
from crawlguard.policy.limits import (
    FLOW_KEY,
    TenantLimits,
    TokenBucket,
    host_decision,
    host_matches,
    normalise_glob,
)
from crawlguard.proxy.addon import CrawlGuardAddon
from crawlguard.runtime import Guard

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cfg(tid: str = "acme", **extra: Any) -> Tenant:
    return parse_config({"tenants": [tenant(tid, ["AcmeBot"], **extra)]}).tenants[0]


# -- host globs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("*.Example.com", "*.example.com"),
        ("*.bücher.de", "*.xn--bcher-kva.de"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("127.1", "127.0.0.1"),  # the proxy's spelling of that host
        ("::0:1", "::1"),
        ("shop-?.example.com", "shop-?.example.com"),
        ("*", "*"),
    ],
)
def test_globs_are_normalised_like_hosts(glob: str, canonical: str) -> None:
    assert normalise_glob(glob) == canonical


@pytest.mark.parametrize(
    ("glob", "needle"),
    [
        ("", "non-empty"),
        ("exa mple.com", "whitespace"),
        (" example.com", "whitespace"),
        ("a" * 254, "longer than 253"),
        ("[ab].example.com", "[...]"),
        ("[::1]", "[...]"),
        ("*.exa/mple.com", "host characters"),
        ("*..example.com", "empty label"),
        ("exa_mple..com", "empty label"),
        ("*.bü*.de", "ASCII"),
    ],
)
def test_bad_globs_are_refused(glob: str, needle: str) -> None:
    with pytest.raises(ValueError) as exc:
        normalise_glob(glob)
    assert needle in str(exc.value)


def test_star_dot_matches_subdomains_not_the_apex() -> None:
    globs = [normalise_glob("*.example.com")]
    assert host_matches("www.example.com", globs) == "*.example.com"
    assert host_matches("a.b.example.com", globs) == "*.example.com"
    assert host_matches("example.com", globs) is None
    assert host_matches("badexample.com", globs) is None
    assert host_matches("example.com.evil.test", globs) is None


def test_deny_wins_and_allow_list_is_exclusive() -> None:
    t = cfg(allow_hosts=["example.com", "*.example.com"], deny_hosts=["admin.example.com"])
    assert host_decision(t, "example.com") is None
    assert host_decision(t, "www.example.com") is None
    denied = host_decision(t, "admin.example.com")
    assert denied is not None and denied.kind is Kind.DESTINATION_FORBIDDEN
    assert denied.rule == "tenants[acme].deny_hosts: admin.example.com"
    assert denied.status == 403
    other = host_decision(t, "other.test")
    assert other is not None and other.kind is Kind.DESTINATION_FORBIDDEN
    assert other.rule == "tenants[acme].allow_hosts: example.com, *.example.com"
    assert host_decision(cfg(), "anything.test") is None  # no lists: no restriction


# -- config ----------------------------------------------------------------------------------


def bad(tmp_path: Path, **sections: Any) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml.safe_load(yaml.safe_dump(base_config(tmp_path, **sections))))
    return str(exc.value)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("deny_hosts", ["ok.test", "bad host"], "whitespace"),
        ("allow_hosts", [""], "non-empty"),
        ("allow_hosts", "example.com", "valid list"),
        ("max_rps", 0, "greater than 0"),
        ("max_concurrency", 0, "greater than or equal to 1"),
    ],
)
def test_bad_limit_keys_name_the_key(tmp_path: Path, key: str, value: Any, needle: str) -> None:
    msg = bad(tmp_path, tenants=[tenant("acme", ["AcmeBot"], **{key: value})])
    assert f"tenants[acme].{key}" in msg and needle in msg, msg


def test_state_on_error_open_is_refused_without_shared_state(tmp_path: Path) -> None:
    msg = bad(tmp_path, state={"url": "memory://", "on_error": "open"})
    assert "state.on_error" in msg
    assert "only meaningful with a shared state.url (redis://)" in msg
    assert "memory:// state cannot fail" in msg
    ok = parse_config(base_config(tmp_path, state={"url": "memory://", "on_error": "closed"}))
    assert ok.state.on_error == "closed"


def test_globs_load_canonical(tmp_path: Path) -> None:
    t = tenant("acme", ["AcmeBot"], allow_hosts=["*.Bücher.de"], deny_hosts=["Evil.Test."])
    loaded = parse_config(base_config(tmp_path, tenants=[t])).tenants[0]
    assert loaded.allow_hosts == ["*.xn--bcher-kva.de"]
    assert loaded.deny_hosts == ["evil.test"]


# -- token bucket and concurrency ------------------------------------------------------------


def test_token_bucket_with_injected_clock() -> None:
    bucket = TokenBucket.full(2.0, now=0.0)  # burst 2
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)  # refused: no token taken
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0  # refilled, but never beyond the burst
    assert bucket.take(10.0) == 0.0
    assert bucket.take(10.0) > 0


def test_fractional_rate_has_a_burst_of_one() -> None:
    bucket = TokenBucket.full(0.5, now=0.0)
    assert bucket.burst == 1.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)
    assert bucket.take(1.9) > 0
    assert bucket.take(2.0) == 0.0


def test_max_rps_refusal_has_integer_retry_after() -> None:
    clock = Clock()
    limits = TenantLimits(clock=clock)
    t = cfg(max_rps=0.25)
    first = limits.take(t)
    assert first.decision.allowed and first.lease is not None
    first.lease.release()
    refused = limits.take(t)
    assert refused.decision.kind is Kind.TENANT_LIMIT and refused.lease is None
    assert refused.decision.retry_after == 4
    assert refused.decision.status == 429
    assert refused.decision.rule == "tenants[acme].max_rps: 0.25"
    clock.t += 3.5
    assert limits.take(t).decision.retry_after == 1  # 0.5 s left: rounded up to 1
    clock.t += 0.5
    assert limits.take(t).decision.allowed
    assert limits.take(cfg("other", max_rps=0.25)).decision.allowed  # per tenant


def test_concurrency_counts_in_flight_and_refusals_hold_nothing() -> None:
    clock = Clock()
    limits = TenantLimits(clock=clock)
    t = cfg(max_concurrency=2, max_rps=100)
    a, b = limits.take(t), limits.take(t)
    assert a.lease and b.lease and limits.in_flight("acme") == 2
    refused = limits.take(t)
    assert refused.decision.kind is Kind.TENANT_LIMIT and refused.lease is None
    assert refused.decision.retry_after == 1
    assert refused.decision.rule == "tenants[acme].max_concurrency: 2"
    assert limits.in_flight("acme") == 2
    a.lease.release()
    a.lease.release()  # idempotent
    assert limits.in_flight("acme") == 1
    c = limits.take(t)
    assert c.decision.allowed and limits.in_flight("acme") == 2
    b.lease.release()
    assert c.lease is not None
    c.lease.release()
    assert limits.in_flight("acme") == 0


def test_concurrency_refusal_takes_no_token() -> None:
    limits = TenantLimits(clock=Clock())
    t = cfg(max_concurrency=1, max_rps=1)
    held = limits.take(t)
    assert held.lease is not None
    assert limits.take(t).decision.rule == "tenants[acme].max_concurrency: 1"
    held.lease.release()
    # the bucket is empty because of the first request only; the refusal did not count
    assert limits.take(t).decision.rule == "tenants[acme].max_rps: 1"


def test_flow_metadata_api_holds_one_slot_per_flow() -> None:
    limits = TenantLimits(clock=Clock())
    t = cfg(max_concurrency=1)
    meta: dict[str, Any] = {}
    assert limits.check(t, meta).allowed and limits.in_flight("acme") == 1
    other: dict[str, Any] = {}
    assert limits.check(t, other).kind is Kind.TENANT_LIMIT and FLOW_KEY not in other
    limits.release(meta)
    limits.release(meta)
    assert limits.in_flight("acme") == 0
    limits.hold_for("acme", other)  # monitor: counted though over the limit
    assert limits.in_flight("acme") == 1


# -- in-process: the addon's hooks give the slot back on every path ----------------------------


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
) -> AsyncIterator[tuple[Guard, CrawlGuardAddon]]:
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


async def test_reload_keeps_in_flight_counts_and_applies_new_limits(tmp_path: Path) -> None:
    tenants = [tenant("acme", ["AcmeBot"], max_concurrency=1)]
    guard = Guard(parse_config(base_config(tmp_path, tenants=tenants)))
    try:
        meta: dict[str, Any] = {}
        assert guard.limits.check(guard.tenants["acme"].cfg, meta).allowed
        tenants = [tenant("acme", ["AcmeBot"], max_concurrency=2)]
        guard.reload(parse_config(base_config(tmp_path, tenants=tenants)))
        assert guard.limits.in_flight("acme") == 1  # the running request still counts
        assert guard.limits.check(guard.tenants["acme"].cfg, {}).allowed
        assert guard.limits.check(guard.tenants["acme"].cfg, {}).kind is Kind.TENANT_LIMIT
    finally:
        await guard.close()
