"""crawlguard.policy.robots: group selection, matching, normalisation, delays, hostile input."""

from __future__ import annotations

import os

import pytest
from costs import measure
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.policy.identity import canonical_path
from crawlguard.policy.robots import (
    ALLOW_ALL,
    DISALLOW_ALL,
    MATCH_BUDGET,
    MAX_BYTES,
    RobotsRules,
    normalize_path,
)
from crawlguard.policy.ua import product_token_of


def decide(body: str | bytes, token: str, url: str) -> tuple[bool, str | None]:
    raw = body.encode() if isinstance(body, str) else body
    v = RobotsRules.parse(raw).decide(token, url)
    return v.allowed, v.rule


# --- group selection (RFC 9309 §2.2.1) ---------------------------------------------------


def test_group_for_prefix_of_token_does_not_apply() -> None:
    body = "User-agent: example\nDisallow: /\n\nUser-agent: *\nDisallow: /star\n"
    assert decide(body, "ExampleBot", "/x") == (True, None)
    assert decide(body, "ExampleBot", "/star") == (False, "Disallow: /star")
    assert decide(body, "example", "/x") == (False, "Disallow: /")


def test_token_match_is_exact_and_case_insensitive() -> None:
    body = "User-agent: EXAMPLEBOT\nDisallow: /a\nUser-agent: *\nDisallow: /\n"
    assert decide(body, "examplebot", "/b") == (True, None)
    assert decide(body, "ExampleBot", "/a") == (False, "Disallow: /a")
    assert decide(body, "ExampleBotX", "/b") == (False, "Disallow: /")


def test_all_matching_groups_are_merged() -> None:
    body = (
        "User-agent: AcmeBot\nDisallow: /one\n\n"
        "User-agent: Other\nDisallow: /\n\n"
        "User-agent: acmebot\nDisallow: /two\nCrawl-delay: 3\n"
    )
    rules = RobotsRules.parse(body.encode())
    assert not rules.decide("AcmeBot", "/one").allowed
    assert not rules.decide("AcmeBot", "/two").allowed
    assert rules.decide("AcmeBot", "/three").allowed
    assert rules.decide("AcmeBot", "/").crawl_delay == 3.0


def test_star_only_when_no_group_names_the_token() -> None:
    body = "User-agent: *\nDisallow: /\nCrawl-delay: 9\n\nUser-agent: AcmeBot\nDisallow: /x\n"
    rules = RobotsRules.parse(body.encode())
    assert rules.decide("AcmeBot", "/y").allowed
    assert rules.decide("AcmeBot", "/y").crawl_delay is None  # the * group does not apply
    assert not rules.decide("OtherBot", "/y").allowed
    assert rules.decide("OtherBot", "/y").crawl_delay == 9.0


def test_no_matching_group_and_no_star_allows_everything() -> None:
    assert decide("User-agent: BarBot\nDisallow: /\n", "FooBot", "/x") == (True, None)


def test_unknown_record_does_not_end_a_group() -> None:
    body = (
        "User-agent: FooBot\nInvalid-Unknown-Line: x\nSitemap: /s.xml\nUser-agent: *\nDisallow: /\n"
    )
    assert decide(body, "FooBot", "/") == (False, "Disallow: /")


def test_crawl_delay_between_user_agent_lines_does_not_split_the_group() -> None:
    body = "User-agent: A\nCrawl-delay: 4\nUser-agent: B\nDisallow: /p\n"
    rules = RobotsRules.parse(body.encode())
    for token in ("A", "B"):
        assert not rules.decide(token, "/p").allowed
        assert rules.decide(token, "/").crawl_delay == 4.0


def test_user_agent_value_with_space_or_version_names_its_first_token() -> None:
    body = "User-agent: Acme Bot Crawler\nDisallow: /a\nUser-agent: Zed/2.1\nDisallow: /z\n"
    assert decide(body, "Acme", "/a") == (False, "Disallow: /a")
    assert decide(body, "Zed", "/z") == (False, "Disallow: /z")
    assert decide(body, "AcmeBot", "/a") == (True, None)


def test_user_agent_without_colon_and_rules_before_any_group() -> None:
    body = "Disallow: /orphan\nuser-agent FooBot\ndisallow /x\n"
    assert decide(body, "FooBot", "/orphan") == (True, None)
    assert decide(body, "FooBot", "/x") == (False, "disallow /x")


# --- matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "url", "allowed", "rule"),
    [
        ("Disallow: /x/\nAllow: /x/page", "/x/page.html", True, "Allow: /x/page"),
        ("Allow: /x\nDisallow: /x", "/x/1", True, "Allow: /x"),  # Allow wins ties
        ("Disallow: /x\nAllow: /x", "/x/1", True, "Allow: /x"),
        ("Allow: /\nDisallow: /*.php$", "/a.php", False, "Disallow: /*.php$"),
        ("Allow: /\nDisallow: /*.php$", "/a.php?x", True, "Allow: /"),
        ("Disallow: /a$", "/a", False, "Disallow: /a$"),
        ("Disallow: /a$", "/ab", True, None),
        ("Disallow: /*", "/anything", False, "Disallow: /*"),
        ("Disallow: *", "/anything", False, "Disallow: *"),
        ("Disallow: /a/**/b", "/a/x/y/b", False, "Disallow: /a/**/b"),
        ("Disallow: /a*b$", "/a-b-c", True, None),
        ("Disallow: /a*b$", "/a-c-b", False, "Disallow: /a*b$"),
        ("Disallow: /path/x-%2A.html", "/path/x-*.html", False, "Disallow: /path/x-%2A.html"),
        ("Disallow: /path/x-%2A.html", "/path/x-y.html", True, None),
        ("Disallow: /foo-$-bar", "/foo-$-bar/", False, "Disallow: /foo-$-bar"),
        ("Disallow:\nAllow:", "/x", True, None),
        ("  DISALLOW :  /p  # a comment", "/p", False, "DISALLOW :  /p"),
        ("Allow: /d/index.html\nDisallow: /", "/d/", True, "Allow: /d/index.html"),
        ("Allow: /d/index.html\nDisallow: /", "/d/x", False, "Disallow: /"),
    ],
)
def test_longest_match(body: str, url: str, allowed: bool, rule: str | None) -> None:
    assert decide(f"User-agent: *\n{body}\n", "AcmeBot", url) == (allowed, rule)


def test_robots_txt_is_always_allowed() -> None:
    assert DISALLOW_ALL.decide("AcmeBot", "/robots.txt").allowed
    assert DISALLOW_ALL.decide("AcmeBot", "https://h.example/robots.txt?x=1").allowed
    assert not DISALLOW_ALL.decide("AcmeBot", "/robots.txt.bak").allowed
    assert ALLOW_ALL.decide("AcmeBot", "/anything").allowed


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://h.example", "/"),
        ("https://h.example?q=1", "/?q=1"),
        ("https://h.example:8443/a/b?c#frag", "/a/b?c"),
        ("/a?b", "/a?b"),
        ("", "/"),
        ("//double/slash", "//double/slash"),
    ],
)
def test_url_forms(url: str, path: str) -> None:
    rules = RobotsRules.parse(f"User-agent: *\nDisallow: {path}$\n".encode())
    assert not rules.decide("AcmeBot", url).allowed


# --- percent-encoding (RFC 9309 §2.2.2) ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normal"),
    [
        ("/foo/bar/%62%61%7A", "/foo/bar/baz"),  # unreserved escapes decoded (RFC 3986 §6.2.2)
        ("/%7e%2D%2e%5f", "/~-._"),
        ("/a%2fb", "/a%2Fb"),  # reserved escapes kept, hex upper-cased
        ("/a*b$c", "/a%2Ab%24c"),  # the operators' literal spelling
        ("/a%2a%24", "/a%2A%24"),
        ("/a[b]", "/a%5Bb%5D"),  # not allowed in a path: encoded, as identity.canonical_path
        ("/foo/bar/ツ", "/foo/bar/%E3%83%84"),  # non-ASCII encoded as UTF-8
        ("/foo/bar/%e3%83%84", "/foo/bar/%E3%83%84"),
        ("/a b", "/a%20b"),
        ("/100%", "/100%25"),  # a stray "%" is a literal percent sign
        ("/x?a=1&b=%3D", "/x?a=1&b=%3D"),
        ("/caf\udce9", "/caf%E9"),  # an undecodable octet keeps its value
    ],
)
def test_normalize_path(value: str, normal: str) -> None:
    assert normalize_path(value) == normal


@pytest.mark.parametrize(
    ("pattern", "url"),
    [
        ("/foo/bar/ツ", "/foo/bar/%E3%83%84"),
        ("/foo/bar/%e3%83%84", "/foo/bar/%E3%83%84"),
        ("/foo/bar/%E3%83%84", "/foo/bar/%e3%83%84"),
        ("/a b", "/a%20b"),
    ],
)
def test_percent_encoding_is_normalised_on_both_sides(pattern: str, url: str) -> None:
    assert decide(f"User-agent: *\nDisallow: {pattern}\n", "AcmeBot", url)[0] is False


@pytest.mark.parametrize(
    ("pattern", "raw_path"),
    [
        ("/foo/bar/%E3%83%84", "/foo/bar/ツ"),
        ("/foo/bar/ツ", "/foo/bar/ツ"),
        ("/*/caf%C3%A9", "/x/café"),
        ("/caf%E9", "/caf\udce9"),  # a raw Latin-1 octet off the wire keeps its value
    ],
)
def test_raw_request_targets_are_encoded_by_the_proxy_before_matching(
    pattern: str, raw_path: str
) -> None:
    """What the proxy does with a raw (non-ASCII) request line: it cannot dodge a rule."""
    target = canonical_path(raw_path)
    assert target.isascii()
    assert decide(f"User-agent: *\nDisallow: {pattern}\n", "AcmeBot", target)[0] is False


def test_escaped_allow_does_not_allow_the_plain_spelling() -> None:
    """RFC 9309's §2.2.2 table decodes %62%61%7A to baz; Google's suite (ID_Encoding/06)
    compares them as written. Safety wins: allowed only if both readings allow."""
    body = "User-agent: *\nDisallow: /\nAllow: /foo/bar/%62%61%7A\n"
    assert decide(body, "AcmeBot", "/foo/bar/%62%61%7A") == (True, "Allow: /foo/bar/%62%61%7A")
    assert decide(body, "AcmeBot", "/foo/bar/baz") == (False, "Disallow: /")
    assert decide(body, "AcmeBot", "/foo/bar/%62az") == (False, "Disallow: /")


def test_an_escaped_url_must_be_allowed_in_both_readings() -> None:
    """Decoded, /some/p%61th is /some/path (allowed); as written, only "Disallow: /some/p"
    matches it. Safety wins. (The proxy hands `decide` canonical, decoded paths.)"""
    body = "User-agent: *\nAllow: /some/path\nDisallow: /some/p\n"
    assert decide(body, "AcmeBot", "/some/path/x") == (True, "Allow: /some/path")
    assert decide(body, "AcmeBot", "/some/p%61th/x") == (False, "Disallow: /some/p")


@pytest.mark.parametrize(
    ("pattern", "url"),
    [
        ("/private", "/%70rivate/"),
        ("/private", "/priv%61te/"),
        ("/*.pdf$", "/docs/a.p%64f"),
        ("/*.pdf$", "/docs/a%2Ep%64%66"),
        ("/%70rivate", "/private"),  # an escaped pattern catches the plain spelling too
        ("/%70rivate", "/%70rivate"),
        ("/a~b", "/a%7eb"),
        ("/*/secret$", "/x/%73ecret"),
    ],
)
def test_unreserved_escapes_cannot_dodge_a_disallow(pattern: str, url: str) -> None:
    body = f"User-agent: *\nDisallow: {pattern}\n"
    assert decide(body, "AcmeBot", url) == (False, f"Disallow: {pattern}")


@pytest.mark.parametrize(
    ("pattern", "url", "disallowed"),
    [
        ("/a%2Ab", "/a%2Ab", True),  # an escaped "*" is a literal "*", never the operator
        ("/a%2Ab", "/a*b", True),
        ("/a%2Ab", "/axb", False),
        ("/a%24", "/a$", True),
        ("/a%24", "/a", False),
        ("/a$", "/a%24", False),  # a "$" operator is not a literal "$"
        ("/a*c", "/a%2Ac", True),
        ("/a%2Fb", "/a/b", False),  # an escaped "/" stays distinct from "/"
    ],
)
def test_operator_escapes_stay_literal(pattern: str, url: str, disallowed: bool) -> None:
    body = f"User-agent: *\nDisallow: {pattern}\n"
    assert decide(body, "AcmeBot", url)[0] is not disallowed


def test_encoded_slash_is_not_a_slash() -> None:
    body = "User-agent: *\nDisallow: /a/b\n"
    assert decide(body, "AcmeBot", "/a%2Fb") == (True, None)


def test_latin1_body_matches_its_raw_octets() -> None:
    body = b"User-agent: *\nDisallow: /caf\xe9\n"
    rules = RobotsRules.parse(body)
    verdict = rules.decide("AcmeBot", "/caf%E9")
    assert not verdict.allowed
    assert verdict.rule == "Disallow: /caf\ufffd"  # printable: no lone surrogates leak out


# --- BOM, line endings -----------------------------------------------------------------


def test_utf8_bom_does_not_swallow_the_first_line() -> None:
    assert decide(b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n", "AcmeBot", "/x")[0] is False


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_line_endings(eol: str) -> None:
    body = eol.join(["User-agent: FooBot", "Allow: /a", "User-agent: *", "Disallow: /"])
    assert decide(body, "FooBot", "/a")[0] is True
    assert decide(body, "FooBot", "/b")[0] is True  # FooBot's group has only Allow: /a
    assert decide(body, "Other", "/a")[0] is False


# --- Crawl-delay / Request-rate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "delay", "rate"),
    [
        ("Crawl-delay: 5", 5.0, None),
        ("Crawl-delay: 0.5", 0.5, None),
        ("Crawl-delay: .25", 0.25, None),
        ("Crawl-delay: 0", 0.0, None),
        ("crawl-delay:10 # slow down", 10.0, None),
        ("Crawl-delay: -1", None, None),
        ("Crawl-delay: nan", None, None),
        ("Crawl-delay: inf", None, None),
        ("Crawl-delay: 1e3", None, None),
        ("Crawl-delay: 1_000", None, None),
        ("Crawl-delay: \uff15", None, None),  # fullwidth 5
        ("Crawl-delay: soon", None, None),
        ("Crawl-delay:", None, None),
        ("Crawl-delay: 2\nCrawl-delay: 7", 7.0, None),
        ("Crawl-delay: 7\nCrawl-delay: 2", 7.0, None),  # the largest, not the last
        ("Crawl-delay: 2\nCrawl-delay: bad", 2.0, None),
        ("Crawl-delay: " + "9" * 400, None, None),  # beyond float: ignored
        ("Request-rate: 1/5", None, (1, 5.0)),
        ("Request-rate: 3/1m", None, (3, 60.0)),
        ("Request-rate: 1/10s 0900-1700", None, (1, 10.0)),
        ("Request-rate: 0/5", None, None),
        ("Request-rate: 1/0", None, None),
        ("Request-rate: -1/5", None, None),
        ("Request-rate: fast", None, None),
        ("Request-rate: 1/5\nRequest-rate: 1/1", None, (1, 5.0)),  # the slowest, not the last
        ("Request-rate: 1/1\nRequest-rate: 1/5s", None, (1, 5.0)),
        ("Request-rate: 10/1m\nRequest-rate: 1/5", None, (10, 60.0)),  # 6 s beats 5 s
        ("Request-rate: 1/1d\nRequest-rate: 1/1h", None, (1, 86400.0)),
        ("Request-rate: 1/" + "9" * 5000, None, None),  # too many digits: ignored
        ("Request-rate: 1/5 2500-9999", None, (1, 5.0)),  # window ignored, rate kept
        ("Crawl-delay: 2\nRequest-rate: 1/4", 2.0, (1, 4.0)),
    ],
)
def test_crawl_delay_and_request_rate(
    lines: str, delay: float | None, rate: tuple[int, float] | None
) -> None:
    body = f"User-agent: AcmeBot\nUser-agent: other\n{lines}\nDisallow: /x\n"
    verdict = RobotsRules.parse(body.encode()).decide("AcmeBot", "/")
    assert (verdict.crawl_delay, verdict.request_rate) == (delay, rate)


def test_crawl_delay_in_a_merged_group_is_the_largest() -> None:
    """A Crawl-delay line does not end a group (as Google reads it), so the examplebot and *
    lines below are one group; of its two delays the larger applies, to both names."""
    body = "User-agent: examplebot\nCrawl-delay: 5\n\nUser-agent: *\nCrawl-delay: 1\n"
    rules = RobotsRules.parse(body.encode())
    for token in ("examplebot", "ExampleBot", "OtherBot"):
        verdict = rules.decide(token, "/")
        assert verdict.crawl_delay == 5.0
        assert verdict.agents == ("examplebot", "*")


@pytest.mark.parametrize(
    "body",
    [
        "User-agent: a\nCrawl-delay: 12\nUser-agent: b\nCrawl-delay: 1\nDisallow: /x\n",
        "User-agent: a\nCrawl-delay: 1\nUser-agent: b\nCrawl-delay: 12\nDisallow: /x\n",
        "User-agent: a\nUser-agent: b\nCrawl-delay: 1\nDisallow: /x\nCrawl-delay: 12\n",
        "User-agent: a\nCrawl-delay: 12\nDisallow: /x\n\nUser-agent: a\nCrawl-delay: 1\n",
        "User-agent: a\nCrawl-delay: 1\nDisallow: /x\n\nUser-agent: a\nCrawl-delay: 12\n",
        "User-agent: a\nCrawl-delay: 1\nDisallow: /\nUser-agent: b\nUser-agent: A\n"
        "Crawl-delay: 12\n",
    ],
)
def test_largest_crawl_delay_wins_in_any_shape(body: str) -> None:
    assert RobotsRules.parse(body.encode()).decide("a", "/").crawl_delay == 12.0


def test_several_merged_groups_take_the_largest_delay_and_slowest_rate() -> None:
    body = (
        "User-agent: AcmeBot\nCrawl-delay: 3\nRequest-rate: 1/1\nDisallow: /one\n\n"
        "User-agent: Other\nCrawl-delay: 60\nRequest-rate: 1/60\nDisallow: /\n\n"
        "User-agent: acmebot\nCrawl-delay: 8\nRequest-rate: 1/5s\nDisallow: /two\n\n"
        "User-agent: ACMEBOT\nCrawl-delay: 2\nRequest-rate: 2/4\nDisallow: /three\n"
    )
    verdict = RobotsRules.parse(body.encode()).decide("AcmeBot", "/three/x")
    assert not verdict.allowed
    assert (verdict.crawl_delay, verdict.request_rate) == (8.0, (1, 5.0))
    assert verdict.agents == ("acmebot",)


@pytest.mark.parametrize(
    ("body", "token", "agents"),
    [
        ("User-agent: examplebot\nCrawl-delay: 5\n\nUser-agent: *\n", "x", ("examplebot", "*")),
        ("User-agent: FooBot\nDisallow: /\n\nUser-agent: *\nDisallow: /x\n", "Other", ("*",)),
        ("User-agent: FooBot\nDisallow: /\n\nUser-agent: *\nDisallow: /x\n", "FOOBOT", ("foobot",)),
        ("User-agent: FooBot\nDisallow: /\n", "Other", ()),
        ("", "Other", ()),
        (
            "User-agent: FooBot\nUser-agent: Bar\nDisallow: /a\n\n"
            "User-agent: Baz\nUser-agent: foobot\nDisallow: /b\n",
            "foobot",
            ("foobot", "bar", "baz"),
        ),
    ],
)  # fmt: skip
def test_verdict_names_the_agents_of_the_groups_that_applied(
    body: str, token: str, agents: tuple[str, ...]
) -> None:
    assert RobotsRules.parse(body.encode()).decide(token, "/").agents == agents


def test_crawl_delay_falls_back_to_star_group_and_ignores_preamble() -> None:
    body = "Crawl-delay: 99\nUser-agent: *\nCrawl-delay: 1.5\nUser-agent: Named\nDisallow: /\n"
    rules = RobotsRules.parse(body.encode())
    assert rules.decide("AcmeBot", "/").crawl_delay == 1.5  # "*" and Named share one group
    assert rules.decide("Named", "/").crawl_delay == 1.5
    assert RobotsRules.parse(b"Crawl-delay: 99\n").decide("AcmeBot", "/").crawl_delay is None


# --- product tokens (derived by policy.ua, the one derivation; robots matches with them) ----


@pytest.mark.parametrize(
    ("ua", "token"),
    [
        ("AcmeBot/1.2 (+https://acme.example/bot)", "AcmeBot"),
        ("Mozilla/5.0 (compatible; AcmeBot/1.2; +https://acme.example/bot)", "AcmeBot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot"),
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/120 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
            "+http://www.google.com/bot.html)",
            "Googlebot",
        ),
        (
            "Mozilla/5.0 (X11) AppleWebKit/537.36 (KHTML) Chrome/120 Safari/537 AcmeBot/1.0",
            "AcmeBot",
        ),
        ("Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0", "Mozilla"),
        ("python-requests/2.31.0", "python-requests"),
        ("Scrapy/2.11.0 (+https://scrapy.org)", "Scrapy"),
        ("AcmeBot (+https://acme.example)", "AcmeBot"),
        ("Acme_Crawler-X", "Acme_Crawler-X"),
        ("  FooBot  ", "FooBot"),
        ("Foo Bar", "Foo"),
        ("123", ""),
        ("", ""),
    ],
)
def test_product_token_of(ua: str, token: str) -> None:
    assert product_token_of(ua) == token


# --- hostile input ------------------------------------------------------------------------

LONG_URL = "/" + "/".join(f"segment{i}" for i in range(40)) + "?q=" + "x" * 200


# A decision's cost is counted, not timed (tests/costs.py): whatever the file and URL, it runs
# few lines of crawlguard code and hands its C string calls a few match budgets' worth of
# octets. Trying every pattern of a 1000-rule file on a 200 KB URL instead runs ~14,000 lines
# over ~600 MB. The milliseconds: benchmarks/decide_worst_case.py.
DECIDE_LINES = 2_000


def _over_cost(rules: RobotsRules, cases: list[tuple[str, str]]) -> list[str]:
    """The decisions of `cases` (token, URL) that cost more than a decision may."""
    over = []
    for token, url in cases:
        _, work = measure(lambda: rules.decide(token, url))  # noqa: B023  (called right here)
        if work.lines > DECIDE_LINES or work.octets > 4 * MATCH_BUDGET + 32 * len(url):
            over.append(f"{token}, {len(url)}-octet URL: {work}")
    return over


def _worst_decide_cost(rules: RobotsRules) -> list[str]:
    urls = ("/", "/a" * 500, LONG_URL, "/" + "ab" * 2000, "/zzz?q=1")
    return _over_cost(rules, [(token, url) for token in ("AcmeBot", "Unnamed") for url in urls])


HOSTILE = {
    "1000 wildcards": b"User-agent: *\nDisallow: /" + b"*a" * 1000 + b"$\n",
    "1000 bare wildcards": b"User-agent: AcmeBot\nDisallow: " + b"/*" * 1000 + b"x\n",
    "100k plain lines": b"User-agent: *\n"
    + b"".join(b"Disallow: /p%d\n" % i for i in range(100_000)),
    "100k wildcard lines": b"User-agent: *\n"
    + b"".join(b"Disallow: /*%d\n" % i for i in range(100_000)),
    "100k anchored wildcards": b"User-agent: AcmeBot\n"
    + b"".join(b"Allow: /*a*%d$\n" % i for i in range(100_000)),
    "many groups": b"".join(
        b"User-agent: *\nUser-agent: AcmeBot\nDisallow: /*%d\n" % i for i in range(30_000)
    ),
    "many agents": b"".join(b"User-agent: a%s\n" % (b"b" * (i % 80)) for i in range(20_000))
    + b"Disallow: /\n",
    "random bytes": os.urandom(MAX_BYTES),
    "NUL bytes": b"\x00" * MAX_BYTES,
    "one huge line": b"User-agent: *\nDisallow: /" + b"a" * MAX_BYTES,
    "no newlines": b"User-agent: * Disallow: /" * 20_000,
    "invalid utf-8": b"User-agent: *\nDisallow: /\xff\xfe\xc3(\n" * 1000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_parses_and_decides_fast(name: str) -> None:
    rules = RobotsRules.parse(HOSTILE[name])
    assert len(rules.body) <= MAX_BYTES
    assert not _worst_decide_cost(rules)


def test_body_is_truncated_to_max_bytes() -> None:
    body = b"User-agent: *\n" + b"#" * MAX_BYTES + b"\nDisallow: /\n"
    rules = RobotsRules.parse(body)
    assert len(rules.body) == MAX_BYTES
    assert rules.decide("AcmeBot", "/").allowed  # the Disallow lies beyond the limit


def test_sha256_is_of_the_parsed_body() -> None:
    import hashlib

    rules = RobotsRules.parse(b"User-agent: *\nDisallow: /\n")
    assert rules.sha256 == hashlib.sha256(rules.body).hexdigest()


FOOTPRINT_CASES = {
    "typical": b"User-agent: *\nDisallow: /private\nCrawl-delay: 2\n",
    "prefix rules": b"User-agent: *\n" + b"".join(b"Disallow: /%d\n" % i for i in range(60_000)),
    "long rules": b"User-agent: *\n"
    + b"".join(b"Disallow: /%s%d\n" % (b"a" * 200, i) for i in range(2000)),
    "100k wildcard lines": HOSTILE["100k wildcard lines"],
    "many groups": HOSTILE["many groups"],
    "one huge line": HOSTILE["one huge line"],
    "many agents": HOSTILE["many agents"],
    "escaped rules (two readings)": b"User-agent: *\n"
    + b"".join(b"Disallow: /%%61%d\n" % i for i in range(20_000)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FOOTPRINT_CASES))
def test_footprint_covers_what_a_parsed_copy_keeps_alive(name: str) -> None:
    """The robots cache bounds memory with `footprint`: it must not undercount (the parsed
    rules are many times the body), nor overcount so much that the bound means little."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        rules = RobotsRules.parse(FOOTPRINT_CASES[name])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held <= rules.footprint <= 3 * held + 4096


# --- bounded matching cost and fail-closed verdicts (issue 9) ------------------------------

LIMITS = "robots.txt exceeds crawlguard's limits"


def _issue9_file(rules: int, seed: int = 9) -> bytes:
    import random

    rnd = random.Random(seed)
    lines = (b"Disallow: /*abcdefgh*1%d0\n" % rnd.randrange(10**6) for _ in range(rules))
    return b"User-agent: *\n" + b"".join(lines)


HUGE_URLS = [
    "/abcdefgh" + "x" * 200_000,
    "/abcdefgh" + "1" * 200_000,
    "/" + "abcdefgh1" * 22_000,
    "/abc" + "%2F" * 66_000,
    "https://site.example/abcdefgh/" + "y" * 200_000 + "?q=" + "1" * 1000,
]


def _costliest(rules: RobotsRules, urls: list[str]) -> list[str]:
    return _over_cost(rules, [("AcmeBot", url) for url in urls])


def test_issue9_file_is_too_complex_fails_closed_and_decides_fast() -> None:
    rules = RobotsRules.parse(_issue9_file(18_000))  # cut at MAX_BYTES: ~17k rules kept
    assert rules.too_complex is not None and rules.too_complex.endswith("wildcard rules > 1000")
    assert rules.parse_error is None
    assert not _costliest(rules, HUGE_URLS)
    for url in [*HUGE_URLS, "/", "/abcdefgh1230"]:
        verdict = rules.decide("AcmeBot", url)
        assert not verdict.allowed
        assert verdict.rule == f"{LIMITS} ({rules.too_complex})"
    assert rules.decide("AcmeBot", "/robots.txt").allowed  # the file itself stays fetchable
    # Only that site: other files, and ALLOW_ALL, are untouched.
    assert ALLOW_ALL.too_complex is None and ALLOW_ALL.decide("AcmeBot", "/").allowed
    assert decide("User-agent: *\nDisallow: /*x\n", "AcmeBot", "/a") == (True, None)


def test_wildcard_rule_cap_is_per_merged_group() -> None:
    at_cap = RobotsRules.parse(_issue9_file(1000, seed=1))
    assert at_cap.too_complex is None
    over = b"User-agent: *\n" + b"".join(b"Disallow: /*q%d\n" % i for i in range(1001))
    assert RobotsRules.parse(over).too_complex == "1001 wildcard rules > 1000"
    # Two groups of 600 are fine alone, too many once merged for a token naming both.
    split = b"".join(
        b"User-agent: %s\n" % agent
        + b"".join(b"Disallow: /*g%d-%d\n" % (group, i) for i in range(600))
        for group, agent in enumerate((b"acmebot", b"*", b"acmebot"))
    )
    rules = RobotsRules.parse(split)
    assert rules.too_complex == "1200 wildcard rules > 1000"
    assert not rules.decide("OtherBot", "/").allowed  # the whole site, every token
    # Duplicates and plain rules do not count.
    plain = (
        b"User-agent: *\n"
        + b"Disallow: /*a\n" * 5000
        + b"".join(b"Disallow: /p%d\n" % i for i in range(20_000))
    )
    assert RobotsRules.parse(plain).too_complex is None


def test_wildcard_pattern_length_cap() -> None:
    # "/a*" and 1021 "b": 1,024 octets normalised ("*" and "$" count, like priority).
    at_cap = "User-agent: *\nDisallow: /a*" + "b" * 1021 + "\n"
    rules = RobotsRules.parse(at_cap.encode())
    assert rules.too_complex is None
    assert not rules.decide("AcmeBot", "/a/" + "b" * 1021).allowed
    assert rules.decide("AcmeBot", "/a/" + "b" * 1020).allowed
    rules = RobotsRules.parse((at_cap[:-1] + "$\n").encode())
    assert rules.too_complex == "a 1025-octet wildcard pattern > 1024"
    assert rules.decide("AcmeBot", "/zzz").rule == f"{LIMITS} ({rules.too_complex})"
    # Escapes count as their normalised spelling; long plain patterns are not capped.
    rules = RobotsRules.parse(b"User-agent: *\nDisallow: /" + b"a" * 100_000 + b"\n")
    assert rules.too_complex is None


def test_match_budget_fails_closed_for_the_costly_url_only() -> None:
    """At the cap, 1000 patterns x a 200 KB URL would scan 200 MB: the URL is disallowed, in
    bounded time, while short URLs on the same site are matched exactly."""
    body = b"User-agent: *\nAllow: /abcdefgh/ok/longer-than-any-wildcard\n" + b"".join(
        b"Disallow: /*abcdefgh*1%d0\n" % i for i in range(1000)
    )
    rules = RobotsRules.parse(body)
    assert rules.too_complex is None
    assert not _costliest(rules, HUGE_URLS)
    verdict = rules.decide("AcmeBot", "/abcdefgh" + "x" * 200_000)
    assert not verdict.allowed
    assert verdict.rule is not None and verdict.rule.startswith(LIMITS)
    assert "200009-octet URL x 1000 wildcard rules" in verdict.rule
    assert decide(body, "AcmeBot", "/abcdefgh/x/17/1230") == (False, "Disallow: /*abcdefgh*1230")
    assert decide(body, "AcmeBot", "/abcdefgh/" + "x" * 300) == (True, None)
    # A plain rule longer than every "*" pattern decides without trying them, at any length.
    allow = "Allow: /abcdefgh/ok/longer-than-any-wildcard"
    assert decide(body, "AcmeBot", allow[7:] + "x" * 200_000) == (True, allow)
    # Patterns with escapes are matched in two readings, which share the one budget.
    escaped = b"User-agent: *\n" + b"".join(b"Disallow: /*%%61bc*x%d\n" % i for i in range(1000))
    rules = RobotsRules.parse(escaped)
    assert rules.too_complex is None
    assert not _costliest(rules, [*HUGE_URLS, "/q" + "y" * 200_000, "/abc" + "y" * 16_000])
    assert not rules.decide("AcmeBot", "/q" + "abc" * 60_000).allowed
    assert decide(escaped, "AcmeBot", "/abc/x17") == (False, "Disallow: /*%61bc*x17")
    # Few wildcard patterns: long URLs are matched exactly (5 x 200 KB is within 1 MiB).
    few = b"User-agent: *\n" + b"".join(b"Disallow: /*abcdefgh*1%d0\n" % i for i in range(5))
    assert decide(few, "AcmeBot", "/abcdefgh" + "x" * 200_000) == (True, None)
    assert decide(few, "AcmeBot", "/abcdefgh" + "x" * 200_000 + "140") == (
        False,
        "Disallow: /*abcdefgh*140",
    )


def test_wildcard_index_tries_only_patterns_whose_literal_the_path_holds() -> None:
    """Issue 12: "*" patterns are indexed by a literal a match needs (the "$" tail, a head
    longer than "/", the rarest trigram), so a decision tries the few that can match. What
    is tried is read off the budget: every pattern tried costs the path's length."""
    from crawlguard.policy.robots import MATCH_BUDGET

    body = (
        "User-agent: *\n"
        + "".join(f"Disallow: /*/{i:x}*/item{i}$\n" for i in range(300))  # tail index
        + "".join(f"Disallow: /cat{i}/*/x\n" for i in range(300))  # head index
        + "".join(f"Disallow: /*?session=s{i:03d}\n" for i in range(300))  # rarest trigram
        + "Disallow: /*?a\n"  # no literal of 3 octets: always tried
    )
    rules = RobotsRules.parse(body.encode())
    assert rules.too_complex is None
    matcher = rules._selections["*"].matcher

    def tried(path: str) -> int:
        _, left = matcher.best(path)
        return (MATCH_BUDGET - left) // len(path)

    assert tried("/products/item/abcde?ref=home") == 1  # only "/*?a"
    assert tried("/shop/1f/x/item31") == 1 and not rules.decide("A", "/shop/1f/x/item31").allowed
    assert tried("/cat7/a/x") == 1  # "/cat7/*/x", the better candidate, matches
    assert tried("/cat7/a/y") == 2 and rules.decide("A", "/cat7/a/y").allowed
    assert not rules.decide("A", "/p?session=s123").allowed
    assert tried("/p?session=s123") <= 3  # its bucket (s12 or 123), then it matches


def test_parser_exception_fails_closed_for_that_site(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import crawlguard.policy.robots as robots

    def boom(text: str) -> object:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(robots, "_groups", boom)
    with caplog.at_level("ERROR", logger="crawlguard"):
        rules = RobotsRules.parse(b"User-agent: *\nAllow: /\n")
    assert rules.parse_error == "RuntimeError" and rules.too_complex is None
    assert "could not be parsed" in caplog.text and "parser bug" in caplog.text
    verdict = rules.decide("AcmeBot", "/anything")
    assert not verdict.allowed
    assert verdict.rule == "robots.txt could not be parsed (crawlguard error: RuntimeError)"
    assert rules.decide("AcmeBot", "/robots.txt").allowed
    assert ALLOW_ALL.decide("AcmeBot", "/anything").allowed  # parsed before the patch


# Brute force: every rule as a regex, the longest (then Allow) wins. Files just under the
# caps must match exactly as this says (budget never reached: 1000 x 400 octets < 1 MiB).
def _brute_force(lines: list[tuple[bool, str]], path: str) -> tuple[bool, set[str]]:
    import re

    best: tuple[int, bool] | None = None
    texts: set[str] = set()
    for allow, pattern in lines:
        text = f"{'Allow' if allow else 'Disallow'}: {pattern}"
        pattern = re.sub(r"\*+", "*", pattern)
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        regex = "".join(".*" if c == "*" else re.escape(c) for c in body) + (
            "$" if anchored else ""
        )
        if re.match(regex, path, re.DOTALL):
            key = (len(pattern), allow)
            if best is None or key > best:
                best, texts = key, {text}
            elif key == best:
                texts.add(text)
    return (best is None or best[1]), texts


def _near_cap_lines(wildcards: int, seed: int) -> list[tuple[bool, str]]:
    import random

    rnd = random.Random(seed)
    wild: dict[str, bool] = {"/a*" + "b" * 1021: False}  # the longest pattern allowed
    while len(wild) < wildcards:
        parts = [
            "".join(rnd.choices("ab/", k=rnd.randrange(4))) for _ in range(rnd.randrange(2, 5))
        ]
        pattern = "/" + "*".join(parts) + ("$" if rnd.random() < 0.3 else "")
        wild.setdefault(pattern, rnd.random() < 0.4)
    plain = ["/" + "".join(rnd.choices("ab/", k=rnd.randrange(1, 8))) for _ in range(60)]
    lines = [(allow, p) for p, allow in wild.items()]
    lines += [(rnd.random() < 0.4, p + ("$" if rnd.random() < 0.3 else "")) for p in plain]
    rnd.shuffle(lines)
    return lines


def _rules_of(lines: list[tuple[bool, str]]) -> RobotsRules:
    text = "User-agent: *\n" + "".join(
        f"{'Allow' if allow else 'Disallow'}: {p}\n" for allow, p in lines
    )
    rules = RobotsRules.parse(text.encode())
    assert rules.too_complex is None and rules.parse_error is None
    return rules


NEAR_CAP = _near_cap_lines(1000, seed=72)
NEAR_CAP_RULES = _rules_of(NEAR_CAP)
FEW = _near_cap_lines(100, seed=73)
FEW_RULES = _rules_of(FEW)


@settings(max_examples=60, deadline=None)  # each brute-forces ~1,000 patterns
@given(st.text("ab/", max_size=300))
def test_file_at_the_caps_matches_like_brute_force(tail: str) -> None:
    path = "/" + tail
    verdict = NEAR_CAP_RULES.decide("AcmeBot", path)
    allowed, texts = _brute_force(NEAR_CAP, path)
    assert verdict.allowed == allowed
    assert verdict.rule in texts if texts else verdict.rule is None


@settings(max_examples=100, deadline=None)
@given(st.text("ab/", max_size=40), st.integers(0, 5000), st.text("ab/", max_size=40))
def test_long_paths_past_the_trigram_filter_match_like_brute_force(
    head: str, pad: int, tail: str
) -> None:
    path = "/" + head + "a" * pad + tail  # up to ~5 KiB: 100 patterns x 5 KiB < 1 MiB
    verdict = FEW_RULES.decide("AcmeBot", path)
    allowed, texts = _brute_force(FEW, path)
    assert verdict.allowed == allowed
    assert verdict.rule in texts if texts else verdict.rule is None


@given(st.text(alphabet="/abc%2Ee.*$?=~éK\u212a", max_size=30).map(lambda t: "/" + t))
@settings(max_examples=300, deadline=None)
def test_a_canonical_target_is_not_normalised_twice(raw: str) -> None:
    """The pipeline hands `decide` the canonical target and skips the second normalisation:
    the verdict is the one the normalising path gives that target."""
    from crawlguard.policy.identity import IdentityError, canonical_path

    try:
        target = canonical_path(raw)
    except IdentityError:
        return
    rules = RobotsRules.parse(
        b"User-agent: *\nDisallow: /a*b$\nAllow: /a%2Eb\nDisallow: /%7E\nDisallow: /c$\n"
        b"Disallow: /*?q=\nDisallow: /\xc3\xa9\n"
    )
    assert rules.decide("AcmeBot", target, canonical=True) == rules.decide("AcmeBot", target)
