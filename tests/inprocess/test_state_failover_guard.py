"""state.on_error in the Runtime against a Redis that is not there (a real connection refused on
loopback): `closed` decides 503 `state-unavailable`, `open` paces per process. FailoverState
alone, on a fake backend and clock: tests/unit/test_state_failover.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import GOOD_UA, base_config, free_port

from crawlguard.config import parse_config
from crawlguard.policy.decisions import Decision, Kind
from crawlguard.policy.identity import request_identity
from crawlguard.policy.pipeline import RequestInfo
from crawlguard.policy.plan import plan
from crawlguard.runtime import Runtime


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_guard_decides_state_unavailable_only_when_closed(
    tmp_path: Path, on_error: str
) -> None:
    """The service branch: a dead Redis with `closed` is a 503 `state-unavailable` decision
    (Retry-After, kept robots evidence); with `open` the request is paced per process."""
    dead = f"redis://127.0.0.1:{free_port()}/0?timeout=0.5"  # nothing listens there
    cfg = parse_config(base_config(tmp_path, state={"url": dead, "on_error": on_error}))
    guard = Runtime(cfg)
    try:
        tenant = guard.tenants["acme"]
        req = RequestInfo("GET", request_identity("http", "127.0.0.1", 8000, "/x"), GOOD_UA)
        allowed = Decision(Kind.ALLOWED, crawl_delay=5.0, robots_sha256="ab" * 32)
        decision, outcome = await guard.pace(tenant, req, allowed)
        fallbacks = guard.metrics.state_fallbacks._value.get()
        if on_error == "closed":
            assert decision.kind is Kind.STATE_UNAVAILABLE and decision.status == 503
            assert decision.retry_after is not None and decision.retry_after >= 1
            assert decision.rule == "state.on_error: closed"
            assert (decision.crawl_delay, decision.robots_sha256) == (5.0, "ab" * 32)
            assert not outcome.forward and not outcome.held
            assert plan("enforce", decision).refuse and plan("monitor", decision).record
            assert "127.0.0.1" not in decision.body()  # the backend's address stays in the log
            assert fallbacks == 0
        else:
            assert decision.kind is Kind.ALLOWED and outcome.forward
            again, _ = await guard.pace(tenant, req, allowed)
            assert again.kind is Kind.CRAWL_DELAY  # paced within the process
            assert fallbacks == 1
        # Feedback after the decision never raises, whatever the mode.
        await guard.pacer.observe_response(tenant.id, req.origin, 429, "30")
        await guard.pacer.observe_response(tenant.id, req.origin, 200, None)
    finally:
        await guard.close()
