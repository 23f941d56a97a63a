"""User-agent look-alikes and crawler names in contacts, through the real proxy (subprocess):
the origin's own request log shows that such a user agent never reaches it, while the genuine
token, in bytes exactly as sent, does (issue 18, items 6 and 7)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import LocalOrigin, Proxy, base_config, tenant, wait_for
from rawhttp import auth, request_bytes, send


@pytest.fixture(scope="module")
def ua_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("ua-e2e")
    tenants = [
        tenant("acme", ["AcmeBot"]),
        tenant("kite", ["KiteBot"]),
        tenant("beta", ["BetaBot"]),
    ]
    p = Proxy(base_config(tmp, tenants=tenants), tmp)
    yield p
    p.stop()


def get(proxy: Proxy, origin: LocalOrigin, tid: str, ua: str):
    """GET /page with `ua` as UTF-8 bytes (requests would refuse non-Latin-1 header values)."""
    authority = f"127.0.0.1:{origin.port}"
    return send(
        proxy.port, request_bytes(origin.url("/page"), authority, ua=ua, proxy_auth=auth(tid))
    )


@pytest.mark.parametrize(
    ("tid", "ua", "rule"),
    [
        # 6: the reproduction, Kelvin sign for K: passed as KiteBot on main
        ("kite", "\u212aiteBot/1.0 (+https://kite.example/bot)", "impersonation:lookalike:KiteBot"),
        ("kite", "\u212aITEBOT/1.0 (+https://kite.example/bot)", "impersonation:lookalike:KiteBot"),
        # fullwidth, Cyrillic o (U+043E): the tenant's own token, a well-known one, another tenant's
        (
            "acme",
            "\uff21\uff43\uff4d\uff45\uff22\uff4f\uff54/1.0 (+https://acme.example/bot)",
            "impersonation:lookalike:AcmeBot",
        ),
        (
            "acme",
            "G\u043e\u043eglebot/2.1 (+https://acme.example/bot)",
            "impersonation:lookalike:Googlebot",
        ),
        (
            "acme",
            "AcmeBot/1.0 (+https://acme.example/bot) B\u0435taBot/1.0",
            "impersonation:lookalike:BetaBot",
        ),
        (
            "acme",
            "AcmeBot/1.0 (+https://acme.example/G\u043e\u043eglebot)",
            "impersonation:lookalike:Googlebot",
        ),
        # 7: a well-known crawler's name in the contact is what a site's regex sees
        ("acme", "AcmeBot/1.0 (+https://acme.example/Googlebot/2.1)", "impersonation:Googlebot"),
        ("acme", "AcmeBot/1.0 (googlebot@acme.example)", "impersonation:Googlebot"),
    ],
    ids=lambda v: ascii(v)[:48],
)
def test_impersonating_user_agents_never_reach_the_origin(
    ua_proxy: Proxy, origin: LocalOrigin, tid: str, ua: str, rule: str
) -> None:
    r = get(ua_proxy, origin, tid, ua)
    assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "ua-impersonation")
    assert f"Rule: {rule}\n" in r.body.decode()
    assert origin.page_hits() == []


@pytest.mark.parametrize(
    ("tid", "ua"),
    [
        ("kite", "KiteBot/1.0 (+https://kite.example/bot)"),
        ("kite", "kitebot/1.0 (+https://kite.example/bot)"),
        # non-ASCII that imitates nothing: an IDN contact
        ("acme", "AcmeBot/1.0 (+https://b\u00fccher.example/bot)"),
    ],
    ids=ascii,
)
def test_genuine_tokens_reach_the_origin_byte_exact(
    ua_proxy: Proxy, origin: LocalOrigin, tid: str, ua: str
) -> None:
    r = get(ua_proxy, origin, tid, ua)
    assert (r.status, r.header("X-Crawlguard-Decision")) == (200, "allowed")
    [hit] = origin.page_hits()
    # http.server reads header bytes as Latin-1: compare the bytes the origin received
    assert hit.headers["User-Agent"].encode("latin-1") == ua.encode()


def test_a_look_alike_is_recorded_for_its_tenant(ua_proxy: Proxy, origin: LocalOrigin) -> None:
    ua = "\u212aiteBot/2.0 (+https://kite.example/recorded)"
    assert get(ua_proxy, origin, "kite", ua).status == 403

    def recorded() -> list[dict[str, Any]]:
        records = ua_proxy.violations("--tenant", "kite", "--kind", "ua-impersonation")
        return [r for r in records if r["user_agent"] == ua]  # stored as sent, not folded

    assert wait_for(lambda: len(recorded()) == 1)
    [record] = recorded()
    assert (record["action"], record["rule"]) == ("blocked", "impersonation:lookalike:KiteBot")
    assert origin.page_hits() == []
