"""The site budget in a real Runtime (issue 22): the decisions the pipeline gets from it, in
process, without the proxy around them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crawlguard.config import parse_config
from crawlguard.policy.decisions import Decision, Kind
from crawlguard.policy.identity import Target
from crawlguard.policy.pipeline import RequestInfo
from crawlguard.policy.robots import RobotsRules
from crawlguard.runtime import Runtime
from crawlguard.state.sites_failover import FailoverSites
from crawlguard.state.sites_redis import RedisSites

ROBOTS = RobotsRules.parse(b"User-agent: *\nCrawl-delay: 1\nAllow: /\n")


def runtime(tmp: Path) -> Runtime:
    def tenant(tid: str, pacing: str) -> dict[str, object]:
        return {
            "id": tid,
            "token_sha256": hashlib.sha256(tid.encode()).hexdigest(),
            "product_tokens": [tid.capitalize() + "Bot"],
            "pacing": pacing,
        }

    cfg = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp / 'cg.db'}"},
            "pacing": {"scope": "host"},
            "tenants": [
                tenant("acme", "reject"),
                tenant("hooli", "reject"),
                tenant("slow", "delay"),
            ],
        },
        "test",
    )
    return Runtime(cfg)


async def paced(rt: Runtime, tid: str, path: str) -> Decision:
    """Pacing, then the site budget, as the pipeline runs them for an allowed request."""
    tenant = rt.tenants[tid]
    info = RequestInfo("GET", Target("http", "site.example", 80, path), f"{tid}/1.0")
    allowed = Decision(Kind.ALLOWED, crawl_delay=1.0)
    decision, outcome = await rt.pace(tenant, info, allowed)
    if not outcome.forward:
        return decision
    turn = await rt.site_turn(tenant, info, decision, outcome, ROBOTS)
    return turn if isinstance(turn, Decision) else decision


async def test_a_tenant_refused_for_the_site_keeps_its_own_pacing_slot(tmp_path: Path) -> None:
    """hooli, refused because acme took the site's slot, asks again at once: the site refuses
    it again (`site-budget`), never its own pacing (`crawl-delay`): the slot pacing gave it
    went back, since the request was not forwarded."""
    rt = runtime(tmp_path)
    try:
        assert (await paced(rt, "acme", "/a")).kind is Kind.ALLOWED
        first = await paced(rt, "hooli", "/b")
        assert first.kind is Kind.SITE_BUDGET and first.retry_after == 1
        again = await paced(rt, "hooli", "/b")
        assert again.kind is Kind.SITE_BUDGET
    finally:
        await rt.close()


async def test_a_held_request_whose_shared_state_goes_down_is_refused_state_unavailable(
    tmp_path: Path,
) -> None:
    rt = runtime(tmp_path)
    try:
        tenant = rt.tenants["slow"]
        info = RequestInfo("GET", Target("http", "site.example", 80, "/a"), "slow/1.0")
        allowed = Decision(Kind.ALLOWED, crawl_delay=1.0)
        decision, outcome = await rt.pace(tenant, info, allowed)
        turn = await rt.site_turn(tenant, info, decision, outcome, ROBOTS)
        assert not isinstance(turn, Decision) and turn.granted
        decision, outcome = await rt.pace(tenant, info, allowed)  # held: its own slot first
        turn = await rt.site_turn(tenant, info, decision, outcome, ROBOTS)
        assert not isinstance(turn, Decision) and turn.pending
        dead = RedisSites.from_url("redis://127.0.0.1:1/0?timeout=0.2")
        rt.budget.state = FailoverSites(dead, on_error="closed")
        lease, refused = await rt.site_wait(turn, 5.0, "f" * 64)
        assert lease is None and refused is not None
        assert (refused.kind, refused.robots_sha256) == (Kind.STATE_UNAVAILABLE, "f" * 64)
        assert refused.retry_after is not None and refused.retry_after >= 1
    finally:
        await rt.close()


@pytest.mark.parametrize("seconds", [0.0, 0.05])
async def test_a_held_request_past_max_hold_is_refused_site_budget(
    tmp_path: Path, seconds: float
) -> None:
    rt = runtime(tmp_path)
    try:
        assert (await paced(rt, "acme", "/a")).kind is Kind.ALLOWED
        tenant = rt.tenants["slow"]
        info = RequestInfo("GET", Target("http", "site.example", 80, "/b"), "slow/1.0")
        decision, outcome = await rt.pace(tenant, info, Decision(Kind.ALLOWED, crawl_delay=1.0))
        turn = await rt.site_turn(tenant, info, decision, outcome, ROBOTS)
        assert not isinstance(turn, Decision) and turn.pending and turn.wait > 0.5
        lease, refused = await rt.site_wait(turn, seconds, None)
        assert lease is None and refused is not None and refused.kind is Kind.SITE_BUDGET
        assert "Crawl-delay: 1 (User-agent: *)" in (refused.rule or "")
    finally:
        await rt.close()
