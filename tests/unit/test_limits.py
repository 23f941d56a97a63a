"""Tenant limits (crawlguard.policy.limits): host globs, the token bucket, the concurrency count,
their config validation. Through the addon's hooks (a slot given back on every path):
tests/inprocess/test_limits_hooks.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import base_config, tenant

from crawlguard.config import ConfigError, Tenant, parse_config
from crawlguard.policy.decisions import Kind
from crawlguard.policy.limits import (
    FLOW_KEY,
    TenantLimits,
    TokenBucket,
    host_decision,
    host_matches,
    normalise_glob,
)
from crawlguard.runtime import Runtime

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


async def test_reload_keeps_in_flight_counts_and_applies_new_limits(tmp_path: Path) -> None:
    tenants = [tenant("acme", ["AcmeBot"], max_concurrency=1)]
    guard = Runtime(parse_config(base_config(tmp_path, tenants=tenants)))
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
