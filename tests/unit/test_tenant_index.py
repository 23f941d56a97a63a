"""Linear, shared tenant structures (issue 20): one product-token index per tenant set, shared
by every tenant's check (identity, size = tokens registered, not n²); own tokens never
foreign; rebuilds reuse what did not change; authentication by id with retired digests;
YAML loaded as safe_load loads it."""

from __future__ import annotations

import hashlib
import string
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard import config_yaml
from crawlguard.config import Tenant, parse_config, with_overrides
from crawlguard.policy.auth import Authenticator
from crawlguard.policy.decisions import Kind
from crawlguard.policy.tenants import TenantSet, build_tenant_set
from crawlguard.policy.ua import (
    TokenIndex,
    UserAgentPolicy,
    _skeleton_keys,
    _token_keys,
    token_map,
)

LETTERS = "jkqvwxyz"


def token(i: int) -> str:
    digits = ""
    while True:
        digits = LETTERS[i % 8] + digits
        i //= 8
        if not i:
            return "Qz" + digits.rjust(4, LETTERS[0])


def tenant(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"t{i}",
        "token_sha256": hashlib.sha256(f"t{i}-secret".encode()).hexdigest(),
        "product_tokens": [token(i), token(i) + "-news"],
        **extra,
    }


def tenants(n: int, **changed: dict[str, Any]) -> list[Tenant]:
    items = [tenant(i, **changed.get(f"t{i}", {})) for i in range(n)]
    return parse_config({"tenants": items}).tenants


def ua(i: int, extra: str = "") -> str:
    return f"{token(i)}/1.0 (+https://t{i}.example/bot){extra}"


def test_one_index_shared_by_every_tenant_sized_by_tokens() -> None:
    built = build_tenant_set(tenants(200))
    index = built.index
    assert len(index) == 400  # the tokens registered: not 200 x 399 foreign entries
    assert all(r.ua.index is index for r in built.tenants.values())
    assert index.owner(token(7).upper()) == "t7"
    assert len(index.by_lower) <= 400 and len(index.by_upper) <= 400


def test_own_tokens_are_never_foreign_and_others_are() -> None:
    built = build_tenant_set(tenants(50))
    for i in (0, 17, 49):
        check = built.tenants[f"t{i}"].ua
        assert check.evaluate(ua(i)).allowed
        assert check.evaluate(ua(i, f" {token(i)}-news/2.0")).allowed
        other = (i + 1) % 50
        verdict = check.evaluate(ua(i, f" {token(other).lower()}/1.0"))
        assert (verdict.kind, verdict.rule) == (
            Kind.UA_MISMATCH,
            f"mismatch:another-tenant:{token(other)}",
        )
        assert len(check.foreign_tokens) == 98


def test_checks_hold_no_per_tenant_copies_and_compile_lazily() -> None:
    """Per-tenant state is O(1): no memo, no mask regex until the tenant's first request."""
    built = build_tenant_set(tenants(20))
    check = built.tenants["t3"].ua
    assert check._memo is None and check._tenant is not None and check._tenant._mask is None
    assert not hasattr(check, "__dict__")
    check.evaluate(ua(3))
    assert check._memo is not None and check._tenant._mask is not None
    assert built.tenants["t4"].ua._memo is None


def test_same_tokens_reuse_index_and_unchanged_tenants() -> None:
    first = build_tenant_set(tenants(30))
    again = build_tenant_set(tenants(30), previous=first)
    assert again.index is first.index
    assert all(again.tenants[k] is v for k, v in first.tenants.items())

    moded = build_tenant_set(tenants(30, t5={"mode": "monitor"}), previous=again)
    assert moded.index is first.index
    assert moded.tenants["t5"] is not first.tenants["t5"]
    assert moded.tenants["t5"].cfg.mode == "monitor"
    assert all(moded.tenants[k] is v for k, v in first.tenants.items() if k != "t5")


def test_a_token_change_updates_the_index_as_a_fresh_build_would() -> None:
    first = build_tenant_set(tenants(30))
    first.activate()
    memo_before = first.tenants["t1"].ua.evaluate(ua(1, " Qzrenamed/1.0"))
    assert memo_before.allowed  # Qzrenamed is nobody's yet
    renamed = tenants(30, t5={"product_tokens": ["Qzrenamed"]})
    second = build_tenant_set(renamed, previous=first)
    assert second.index is not first.index
    assert second.index.tokens == TokenIndex.of_tenants(renamed).tokens
    assert second.tenants["t1"] is first.tenants["t1"]  # reads the new index once active
    second.activate()
    assert all(r.ua.index is second.index for r in second.tenants.values())
    verdict = second.tenants["t1"].ua.evaluate(ua(1, " Qzrenamed/1.0"))
    assert verdict.rule == "mismatch:another-tenant:Qzrenamed"  # the memo did not answer
    assert second.tenants["t1"].ua.evaluate(ua(1, f" {token(5)}/1.0")).allowed


def same_lookalikes(a: TokenIndex, b: TokenIndex) -> bool:
    def sets(table: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
        return {k: frozenset(v) for k, v in table.items()}

    return sets(a.by_lower) == sets(b.by_lower) and sets(a.by_upper) == sets(b.by_upper)


NAMES = st.text(alphabet="acmoIl1rn-_", min_size=3, max_size=6).filter(lambda s: s[0].isalpha())


@settings(max_examples=60, deadline=None)
@given(
    before=st.dictionaries(NAMES, st.sampled_from(["a", "b", "c"]), max_size=8),
    after=st.dictionaries(NAMES, st.sampled_from(["a", "b", "c"]), max_size=8),
)
def test_updated_index_equals_a_fresh_one(before: dict[str, str], after: dict[str, str]) -> None:
    def owners(tokens: dict[str, str]) -> list[tuple[str, list[str]]]:
        return [(o, [t for t, owner in tokens.items() if owner == o]) for o in "abc"]

    fresh = TokenIndex(owners(after))
    updated = TokenIndex(owners(before)).updated(fresh.tokens)
    assert updated.tokens == fresh.tokens
    assert same_lookalikes(updated, fresh)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=20))
def test_token_keys_by_table_are_icus(text: str) -> None:
    assert _token_keys(text) == _skeleton_keys(text)


def test_token_map_is_the_index_without_lookalikes() -> None:
    configured = tenants(10)
    assert token_map(configured) == TokenIndex.of_tenants(configured).tokens


def test_legacy_foreign_tokens_build_a_small_index() -> None:
    policy = UserAgentPolicy(["AcmeBot"], foreign_tokens=["acmebot", "BetaBot"])
    assert len(policy.index) == 2 and policy.foreign_tokens == {"BetaBot"}


# -- authentication ------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sha(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def test_authenticator_accepts_retired_digests_until_their_time() -> None:
    auth = Authenticator(
        {"acme": (sha("new"), "ACME"), "beta": (sha("b"), "BETA")},
        {"acme": [(sha("old"), 100.0), (sha("older"), 50.0)], "gone": [(sha("x"), 1e12)]},
    )
    assert auth.check(basic("acme", "new"), now=1e12) == ("ACME", sha("new"))
    assert auth.check(basic("acme", "old"), now=99.0) == ("ACME", sha("old"))
    assert auth.check(basic("acme", "old"), now=100.0) is None
    assert auth.check(basic("acme", "older"), now=60.0) is None
    assert auth.check(basic("beta", "old"), now=0.0) is None
    assert auth.check(basic("gone", "x"), now=0.0) is None  # no such tenant
    assert auth.check(basic("nobody", "new")) is None
    assert auth.accepts("acme", sha("old"), now=10.0) == "ACME"
    assert auth.accepts("acme", sha("old"), now=200.0) is None
    assert auth.authenticate(basic("acme", "new")) == "ACME"
    assert auth.credential("acme") == sha("new") and auth.credential("nobody") is None


def test_unchanged_tenants_keep_their_credentials_objects() -> None:
    first = build_tenant_set(tenants(5))
    again = build_tenant_set(tenants(5), {"t1": [(sha("old"), 1e12)]}, previous=first)
    assert again.auth.entry("t2") is first.auth.entry("t2")
    assert again.auth.accepts("t1", sha("old")) is again.tenants["t1"]
    assert TenantSet.empty().auth.check(basic("t1", "t1-secret")) is None


# -- loading a config ----------------------------------------------------------------------------

DOCUMENTS = [
    "",
    "a: 1",
    "a: [1, 2.5, true, null, ~, yes, 'x', \"y\", 0x1f, .inf, 2001-12-14]",
    "a: &x {b: 1}\nc: *x",
    "<<: {a: 1}\nb: 2",
    "- a\n- b: 2\n  c: [3]",
    '"<<": 1',
    "a: !!str 1",
    "a:\nb: ''",
    "tenants:\n  - id: acme\n    product_tokens: [AcmeBot]\n    max_rps: 2.5\n",
    "x",
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_config_yaml_loads_what_safe_load_loads(document: str) -> None:
    assert config_yaml.load(document) == yaml.safe_load(document)


@pytest.mark.parametrize("document", ["---\na: 1\n---\nb: 2", "? [1]\n: 2", "a: =", "a: [1"])
def test_config_yaml_fails_as_safe_load_fails(document: str) -> None:
    with pytest.raises(yaml.YAMLError) as expected:
        yaml.safe_load(document)
    with pytest.raises(type(expected.value)):
        config_yaml.load(document)


def test_flags_revalidate_only_their_section() -> None:
    cfg = parse_config({"tenants": [tenant(1)]})
    flagged = with_overrides(cfg, **{"proxy.listen_port": 9999, "admin.port": None})
    assert flagged.proxy.listen_port == 9999
    assert flagged.tenants[0] is cfg.tenants[0]
    with pytest.raises(ValueError, match="listen_port"):
        with_overrides(cfg, **{"proxy.listen_port": -1})
