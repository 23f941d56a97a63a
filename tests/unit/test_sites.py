"""Site keys and site budgets (crawlguard.policy.sites, `platform.*` config keys).

`domain` groups hosts by registrable domain from tldextract's bundled Public Suffix List
(private suffixes included): co.uk, github.io, IP literals, IDN hosts, unknown TLDs. Budgets:
`site_overrides` by glob, first match wins, keys left out inherit `site_budget`'s at load.
The unit tier refuses sockets, so every lookup here also shows the list is never fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crawlguard.config import ConfigError, parse_config
from crawlguard.policy import sites
from crawlguard.policy.identity import canonical_host
from crawlguard.policy.sites import SiteLimits, registrable_domain, site_key, site_limits

DOMAIN_CASES = [
    # ICANN suffixes of more than one label
    ("www.bbc.co.uk", "bbc.co.uk"),
    ("shop.bbc.co.uk", "bbc.co.uk"),
    ("bbc.co.uk", "bbc.co.uk"),
    ("a.b.c.example.com", "example.com"),
    ("example.com", "example.com"),
    ("foo.bar.ck", "foo.bar.ck"),  # *.ck: bar.ck is a suffix
    # private suffixes: each owner's sub-site is a site of its own (a browser's "site")
    ("alice.github.io", "alice.github.io"),
    ("www.alice.github.io", "alice.github.io"),
    ("bob.github.io", "bob.github.io"),
    ("x.y.s3.amazonaws.com", "y.s3.amazonaws.com"),
    # hosts that are themselves a public suffix: their own site
    ("github.io", "github.io"),
    ("co.uk", "co.uk"),
    ("com", "com"),
    # IP literals, localhost and single-label names: unchanged
    ("127.0.0.1", "127.0.0.1"),
    ("192.0.2.10", "192.0.2.10"),
    ("::1", "::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
    ("localhost", "localhost"),
    ("intranet", "intranet"),
    # no listed suffix: the PSL's default rule (the last label is the suffix)
    ("a.b.internal", "b.internal"),
    ("api.service.test", "service.test"),
    ("b.internal", "b.internal"),
    ("a.b.localhost", "b.localhost"),
]


@pytest.mark.parametrize(("host", "site"), DOMAIN_CASES)
def test_domain_mode_is_the_registrable_domain(host: str, site: str) -> None:
    assert site_key(host, "domain") == site
    assert site_key(host, "host") == host


@pytest.mark.parametrize(
    ("spelling", "site"),
    [
        ("www.bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("shop.пример.рф", "xn--e1afmkfd.xn--p1ai"),  # an IDN TLD of the list
        ("www.例え.テスト", "xn--r8jz45g.xn--zckzah"),  # not on the list: default rule
    ],
)
def test_idn_hosts_group_by_their_a_label_domain(spelling: str, site: str) -> None:
    host = canonical_host(spelling)
    assert site_key(host, "domain") == site
    assert site_key(canonical_host(spelling.upper()), "domain") == site


def test_hosts_of_one_registrable_domain_share_one_key_and_others_do_not() -> None:
    keys = {h: site_key(h, "domain") for h in ("a.example.co.uk", "b.example.co.uk")}
    assert len(set(keys.values())) == 1
    apart = {site_key(h, "domain") for h in ("alice.github.io", "bob.github.io")}
    assert len(apart) == 2


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="host or domain"):
        site_key("example.com", "origin")


def test_the_suffix_list_is_the_bundled_snapshot_nothing_fetched_or_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh extractor with HOME and the cache folders moved to an empty directory: it
    answers (sockets are refused in this tier) and leaves that directory empty."""
    for name in ("HOME", "XDG_CACHE_HOME", "TLDEXTRACT_CACHE"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.setattr(sites, "_extractor", None)
    registrable_domain.cache_clear()
    try:
        assert registrable_domain("news.example.co.uk") == "example.co.uk"
        assert registrable_domain("me.github.io") == "me.github.io"
        assert sites._extractor is not None
        assert list(tmp_path.iterdir()) == [], os.listdir(tmp_path)
    finally:
        registrable_domain.cache_clear()


def test_the_extractor_is_made_once() -> None:
    site_key("one.example.org", "domain")
    first = sites._extractor
    registrable_domain.cache_clear()
    site_key("two.example.org", "domain")
    assert sites._extractor is first


# -- budgets ----------------------------------------------------------------------------------


def platform(**section: object) -> object:
    return parse_config({"platform": section}).platform


def test_defaults_are_four_per_second_and_eight_at_once() -> None:
    cfg = parse_config({}).platform
    assert (cfg.site_key, cfg.crawl_delay) == ("host", "shared")
    assert site_limits("example.com", cfg) == SiteLimits(max_rps=4, max_concurrency=8)


def test_null_means_no_cap() -> None:
    cfg = platform(site_budget={"max_rps": None, "max_concurrency": None})
    assert site_limits("example.com", cfg) == SiteLimits(None, None)


def test_overrides_first_match_wins_and_fields_inherit() -> None:
    cfg = platform(
        site_budget={"max_rps": 2, "max_concurrency": 3},
        site_overrides=[
            {"site": "api.Example.com", "max_rps": 50},  # concurrency inherited: 3
            {"site": "*.example.com", "max_concurrency": 20},  # rps inherited: 2
            {"site": "*.wiki.org", "max_rps": None, "max_concurrency": 100},  # no rps cap
        ],
    )
    assert site_limits("api.example.com", cfg) == SiteLimits(50, 3)  # the first of two
    assert site_limits("www.example.com", cfg) == SiteLimits(2, 20)
    assert site_limits("example.com", cfg) == SiteLimits(2, 3)  # *.x does not match x
    assert site_limits("en.wiki.org", cfg) == SiteLimits(None, 100)
    assert site_limits("other.net", cfg) == SiteLimits(2, 3)
    assert site_limits("api.example.com", cfg) == SiteLimits(50, 3)  # remembered, the same


def test_overrides_match_the_site_key_so_domain_mode_names_domains() -> None:
    cfg = platform(
        site_key="domain",
        site_overrides=[{"site": "example.co.uk", "max_rps": 20}],
    )
    site = site_key("www.example.co.uk", cfg.site_key)
    assert site_limits(site, cfg) == SiteLimits(20, 8)


def test_a_new_config_is_not_answered_from_the_old_ones_memo() -> None:
    old = platform(site_overrides=[{"site": "a.example", "max_rps": 9}])
    assert site_limits("a.example", old).max_rps == 9
    new = platform(site_overrides=[{"site": "a.example", "max_rps": 1}])
    assert site_limits("a.example", new).max_rps == 1


def test_inherited_values_survive_a_dump_and_reload() -> None:
    """`run --workers` writes the validated config and reads it back (it must be equal)."""
    cfg = parse_config(
        {
            "platform": {
                "site_budget": {"max_rps": 1.5},
                "site_overrides": [{"site": "*.example.org", "max_concurrency": 2}],
            }
        }
    )
    again = parse_config(cfg.model_dump(mode="json"))
    assert again == cfg
    assert site_limits("x.example.org", again.platform) == SiteLimits(1.5, 2)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"site_key": "origin"}, "platform.site_key: Input should be 'host' or 'domain'"),
        ({"crawl_delay": "tenant"}, "platform.crawl_delay: Input should be 'shared'"),
        ({"site_budget": {"max_rps": 0}}, "platform.site_budget.max_rps: Input should be greater"),
        ({"site_budget": {"max_concurrency": 0}}, "platform.site_budget.max_concurrency"),
        ({"site_budget": {"max_rpz": 1}}, "unknown key (did you mean 'max_rps'?)"),
        ({"site_overides": []}, "unknown key (did you mean 'site_overrides'?)"),
        ({"site_overrides": [{"site": "a.com", "max_rps": 1, "max_conc": 1}]}, "did you mean"),
        ({"site_overrides": [{"site": "[::1]", "max_rps": 1}]}, "no [...] classes"),
        ({"site_overrides": [{"site": "a b", "max_rps": 1}]}, "contains whitespace"),
        ({"site_overrides": [{"site": "a..com", "max_rps": 1}]}, "site_overrides[0].site"),
        ({"site_overrides": [{"site": "a.com"}]}, "an override of neither changes nothing"),
        ({"site_overrides": [{"max_rps": 1}]}, "site_overrides[0].site: Field required"),
        (
            {"site_overrides": [{"site": "A.com", "max_rps": 1}, {"site": "a.com", "max_rps": 2}]},
            "site 'a.com' is listed twice",
        ),
    ],
)
def test_bad_platform_keys_are_config_errors(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"platform": section})
    assert message in str(info.value)


@pytest.mark.parametrize("weight", [0, -1, 1001, "heavy"])
def test_a_tenant_weight_is_more_than_0_and_at_most_1000(weight: object) -> None:
    tenant = {"id": "acme", "token_sha256": "0" * 64, "product_tokens": ["AcmeBot"]}
    assert parse_config({"tenants": [tenant]}).tenants[0].weight == 1
    assert parse_config({"tenants": [{**tenant, "weight": 2.5}]}).tenants[0].weight == 2.5
    with pytest.raises(ConfigError, match=r"tenants\[acme\]\.weight"):
        parse_config({"tenants": [{**tenant, "weight": weight}]})
