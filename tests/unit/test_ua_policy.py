"""User-agent policy: real-world user agents against a tenant that registered `AcmeBot`."""

from __future__ import annotations

import string

import pytest
from costs import measure
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.policy.decisions import Kind
from crawlguard.policy.ua import (
    MAX_LENGTH,
    UAVerdict,
    UserAgentPolicy,
    ascii_lower,
    lint,
    product_token_of,
    product_token_problem,
    well_known_crawler,
)

ALLOWED = Kind.ALLOWED
MISSING = Kind.UA_MISSING
GENERIC = Kind.UA_GENERIC
UNDESCRIPTIVE = Kind.UA_UNDESCRIPTIVE
MISMATCH = Kind.UA_MISMATCH
IMPERSONATION = Kind.UA_IMPERSONATION

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html)"
)

# (user agent, expected kind, expected rule) for a tenant whose product token is AcmeBot.
CASES: list[tuple[str | None, Kind, str]] = [
    # the tenant's own crawler, several well-formed shapes
    ("AcmeBot/1.0 (+https://acme.example/bot)", ALLOWED, "ok:AcmeBot"),
    ("Mozilla/5.0 (compatible; AcmeBot/2.1; +https://acme.example/bot)", ALLOWED, "ok:AcmeBot"),
    ("AcmeBot/1.0 (crawler@acme.example)", ALLOWED, "ok:AcmeBot"),
    ("AcmeBot/1.0 (+mailto:ops@acme.example)", ALLOWED, "ok:AcmeBot"),
    ("acmebot/3 (+https://acme.example)", ALLOWED, "ok:AcmeBot"),  # token case-insensitive
    ("AcmeBot/v2.0.1-beta (+http://acme.example/bot)", ALLOWED, "ok:AcmeBot"),
    ("AcmeBot/1.0 (+https://acme.example/bot) python-requests/2.31.0", ALLOWED, "ok:AcmeBot"),
    (
        "Scrapy/2.11.2 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example)",
        ALLOWED,
        "ok:AcmeBot",
    ),
    (f"{CHROME} (compatible; AcmeBot/1.0; +https://acme.example/bot)", ALLOWED, "ok:AcmeBot"),
    # contacts that name no well-known crawler, or only in non-ASCII that imitates nothing
    ("AcmeBot/1.0 (+https://acme.example/google-compatible)", ALLOWED, "ok:AcmeBot"),
    ("AcmeBot/1.0 (+https://www.google.com/search?q=acme)", ALLOWED, "ok:AcmeBot"),
    ("AcmeBot/1.0 (+https://b\u00fccher.example/bot)", ALLOWED, "ok:AcmeBot"),  # IDN
    ("AcmeBot/1.0 (+https://xn--bcher-kva.example/bot)", ALLOWED, "ok:AcmeBot"),
    ("AcmeBot/1.0 (b\u00fccher@acme.example)", ALLOWED, "ok:AcmeBot"),
    # Google App Engine appends this to every outgoing UA: not a claim to be Google
    (
        "AcmeBot/1.0 (+https://acme.example/bot) AppEngine-Google; "
        "(+http://code.google.com/appengine; appid: s~acme)",
        ALLOWED,
        "ok:AcmeBot",
    ),
    # missing
    (None, MISSING, "missing"),
    ("", MISSING, "missing"),
    ("   \t", MISSING, "missing"),
    # the tenant's token, but not descriptive
    ("AcmeBot", UNDESCRIPTIVE, "undescriptive:no-version"),
    ("AcmeBot (+https://acme.example/bot)", UNDESCRIPTIVE, "undescriptive:no-version"),
    ("AcmeBot/latest (+https://acme.example/bot)", UNDESCRIPTIVE, "undescriptive:no-version"),
    ("AcmeBot/1.0", UNDESCRIPTIVE, "undescriptive:no-contact"),
    ("Mozilla/5.0 (compatible; AcmeBot/2.1)", UNDESCRIPTIVE, "undescriptive:no-contact"),
    ("AcmeBot/1.0 python-requests/2.31.0", UNDESCRIPTIVE, "undescriptive:no-contact"),
    ("AcmeBot/1.0 (+acme.example)", UNDESCRIPTIVE, "undescriptive:no-contact"),  # no scheme
    # library, tool and automation defaults
    ("python-requests/2.31.0", GENERIC, "generic:python-requests"),
    ("curl/8.4.0", GENERIC, "generic:curl"),
    ("curl", GENERIC, "generic:curl"),
    ("Wget/1.21.4", GENERIC, "generic:Wget"),
    ("Go-http-client/1.1", GENERIC, "generic:Go-http-client"),
    ("Go-http-client/2.0", GENERIC, "generic:Go-http-client"),
    ("okhttp/4.12.0", GENERIC, "generic:okhttp"),
    ("Java/17.0.2", GENERIC, "generic:Java"),
    ("Java-http-client/21.0.1", GENERIC, "generic:Java-http-client"),
    ("Apache-HttpClient/4.5.14 (Java/17.0.9)", GENERIC, "generic:Apache-HttpClient"),
    ("libwww-perl/6.72", GENERIC, "generic:libwww-perl"),
    ("axios/1.6.2", GENERIC, "generic:axios"),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", GENERIC, "generic:node-fetch"),
    ("node-fetch", GENERIC, "generic:node-fetch"),
    ("undici", GENERIC, "generic:undici"),
    ("node", GENERIC, "generic:node"),
    ("got (https://github.com/sindresorhus/got)", GENERIC, "generic:got"),
    ("Python/3.12 aiohttp/3.9.1", GENERIC, "generic:aiohttp"),
    ("python-httpx/0.27.0", GENERIC, "generic:httpx"),
    ("Python-urllib/3.12", GENERIC, "generic:Python-urllib"),
    ("Scrapy/2.11.2 (+https://scrapy.org)", GENERIC, "generic:Scrapy"),  # contact, but Scrapy's
    ("HTTPie/3.2.2", GENERIC, "generic:HTTPie"),
    (
        "Dalvik/2.1.0 (Linux; U; Android 11; Pixel 5 Build/RQ3A.210805.001.A1)",
        GENERIC,
        "generic:Dalvik",
    ),
    ("MyBot/1.0 python-requests/2.31.0", GENERIC, "generic:python-requests"),  # no contact
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/120.0.6099.109 Safari/537.36",
        GENERIC,
        "generic:HeadlessChrome",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 Playwright/1.40.0",
        GENERIC,
        "generic:Playwright",
    ),
    (
        "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) "
        "PhantomJS/2.1.1 Safari/538.1",
        GENERIC,
        "generic:PhantomJS",
    ),
    # bare browsers
    (CHROME, GENERIC, "generic:browser"),
    (f"{CHROME} Edg/124.0.2478.51", GENERIC, "generic:browser"),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        GENERIC,
        "generic:browser",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4 Safari/605.1.15",
        GENERIC,
        "generic:browser",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        GENERIC,
        "generic:browser",
    ),
    ("Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)", GENERIC, "generic:browser"),
    ("Opera/9.80 (Windows NT 6.1) Presto/2.12.388 Version/12.16", GENERIC, "generic:browser"),
    ("Mozilla/5.0", GENERIC, "generic:browser"),
    (f"{CHROME} (+https://acme.example)", GENERIC, "generic:browser"),  # contact, no product
    # impersonators, bare and Mozilla-compatible
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", IMPERSONATION, "impersonation:Googlebot"),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        IMPERSONATION,
        "impersonation:Googlebot",
    ),
    (GOOGLEBOT_SMARTPHONE, IMPERSONATION, "impersonation:Googlebot"),
    ("Googlebot-Image/1.0", IMPERSONATION, "impersonation:Googlebot-Image"),
    (
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
        "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        IMPERSONATION,
        "impersonation:bingbot",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
        IMPERSONATION,
        "impersonation:Applebot",
    ),
    (
        "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
        IMPERSONATION,
        "impersonation:Baiduspider",
    ),
    (
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        IMPERSONATION,
        "impersonation:YandexBot",
    ),
    ("Mozilla/5.0 (compatible; YandexImages/3.0)", IMPERSONATION, "impersonation:YandexImages"),
    (
        "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
        IMPERSONATION,
        "impersonation:DuckDuckBot",
    ),
    (
        "Mozilla/5.0 (compatible; Exabot/3.0; +http://www.exabot.com/go/robot)",
        IMPERSONATION,
        "impersonation:Exabot",
    ),
    # the tenant's token does not excuse a false claim; a library beside it does not hide one
    (
        "AcmeBot/1.0 (+https://acme.example/bot) Googlebot/2.1",
        IMPERSONATION,
        "impersonation:Googlebot",
    ),
    ("python-requests/2.31.0 Googlebot/2.1", IMPERSONATION, "impersonation:Googlebot"),
    # a contact naming a well-known crawler is a claim: sites match the whole UA by regex (item 7)
    ("AcmeBot/1.0 (+https://acme.example/Googlebot/2.1)", IMPERSONATION, "impersonation:Googlebot"),
    ("AcmeBot/1.0 (googlebot@acme.example)", IMPERSONATION, "impersonation:Googlebot"),
    ("AcmeBot/1.0 (+mailto:GOOGLEBOT@acme.example)", IMPERSONATION, "impersonation:Googlebot"),
    ("AcmeBot/1.0 (+https://bingbot.acme.example)", IMPERSONATION, "impersonation:bingbot"),
    ("AcmeBot/1.0 (+https://speedy.example/bot)", IMPERSONATION, "impersonation:speedy"),
    (
        "AcmeBot/1.0 (+https://acme.example/googlebot/; bingbot@acme.example)",
        IMPERSONATION,
        "impersonation:Googlebot",
    ),
    (
        "Mozilla/5.0 (compatible; AcmeBot/2.1; +https://acme.example/DuckDuckBot-compatible)",
        IMPERSONATION,
        "impersonation:DuckDuckBot",
    ),
    # any case spelling of a well-known crawler's token is a claim (the dataset is case-sensitive)
    ("googlebot/2.1 (+https://acme.example/bot)", IMPERSONATION, "impersonation:Googlebot"),
    ("GOOGLEBOT", IMPERSONATION, "impersonation:Googlebot"),
    ("GoogleBot/2.1 AcmeBot/1.0", IMPERSONATION, "impersonation:Googlebot"),
    (
        "AcmeBot/1.0 (+https://acme.example/bot) googlebot/2.1",
        IMPERSONATION,
        "impersonation:Googlebot",
    ),
    (
        "Mozilla/5.0 (compatible; googlebot/2.1; +http://www.google.com/bot.html)",
        IMPERSONATION,
        "impersonation:Googlebot",
    ),
    ("googlebot-image/1.0", IMPERSONATION, "impersonation:Googlebot-Image"),
    ("googlebot-clone/1.0 (+https://clone.example)", IMPERSONATION, "impersonation:Googlebot"),
    ("BingBot/2.0 (+https://acme.example/bot)", IMPERSONATION, "impersonation:BingBot"),
    ("BINGBOT/2.0 (+https://acme.example/bot)", IMPERSONATION, "impersonation:BINGBOT"),
    ("applebot/0.1 (+https://acme.example/bot)", IMPERSONATION, "impersonation:Applebot"),
    ("duckduckbot/1.1 (+https://acme.example/bot)", IMPERSONATION, "impersonation:DuckDuckBot"),
    ("YANDEXBOT/3.0 (+https://acme.example/bot)", IMPERSONATION, "impersonation:YandexBot"),
    # non-ASCII look-alikes (item 6): fullwidth, Cyrillic, Greek, Kelvin sign, zero-width space;
    # of the tenant's own token, of a well-known crawler's, in any ASCII case, contacts included
    (
        "\uff21\uff43\uff4d\uff45\uff22\uff4f\uff54/1.0 (+https://acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:AcmeBot",
    ),
    ("AcmeB\u043et/1.0 (+https://acme.example)", IMPERSONATION, "impersonation:lookalike:AcmeBot"),
    ("Acme\u0412ot/1.0 (+https://acme.example)", IMPERSONATION, "impersonation:lookalike:AcmeBot"),
    ("ACMEB\u041eT/1.0 (+https://acme.example)", IMPERSONATION, "impersonation:lookalike:AcmeBot"),
    ("\u0430cmebot/1.0 (+https://acme.example)", IMPERSONATION, "impersonation:lookalike:AcmeBot"),
    (
        "Mozilla/5.0 (compatible; AcmeB\u043et/2.1; +https://acme.example/bot)",
        IMPERSONATION,
        "impersonation:lookalike:AcmeBot",
    ),
    (
        "AcmeBot/1.0 (+https://acme.example) AcmeB\u043et/1.0",  # beside the genuine one
        IMPERSONATION,
        "impersonation:lookalike:AcmeBot",
    ),
    ("G\u043e\u043eglebot/2.1", IMPERSONATION, "impersonation:lookalike:Googlebot"),
    (
        "Mozilla/5.0 (compatible; \uff27\uff4f\uff4f\uff47\uff4c\uff45\uff42\uff4f\uff54/2.1; "
        "+https://acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:Googlebot",
    ),
    (
        "Goog\u200blebot/2.1 (+https://acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:Googlebot",
    ),
    (
        "G\u043e\u043eglebot-Image/1.0 (+https://acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:Googlebot-Image",
    ),
    (
        "g\u043e\u043eglebot-clone/1.0 (+https://acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:Googlebot",
    ),
    ("\u0392ingbot/2.0 (+https://acme.example)", IMPERSONATION, "impersonation:lookalike:bingbot"),
    (
        "Y\u0430ndexImages/3.0 (+https://acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:YandexBot",
    ),
    (
        "AcmeBot/1.0 (+https://acme.example/G\u043e\u043eglebot)",
        IMPERSONATION,
        "impersonation:lookalike:Googlebot",
    ),
    (
        "AcmeBot/1.0 (G\u043e\u043eglebot@acme.example)",
        IMPERSONATION,
        "impersonation:lookalike:Googlebot",
    ),
    # non-ASCII that imitates no token is judged as before: not a claim
    (
        "B\u00fccherbot/1.0 (+https://b\u00fccher.example)",
        UNDESCRIPTIVE,
        "undescriptive:invalid-token",
    ),
    (
        "G\u00f6\u00f6glebot/2.1 (+https://acme.example)",
        UNDESCRIPTIVE,
        "undescriptive:invalid-token",
    ),
    # an ASCII token with fullwidth punctuation after it is no look-alike (and no version)
    ("AcmeBot\uff0f\uff11.\uff10 (+https://acme.example)", UNDESCRIPTIVE, "undescriptive:no-token"),
    # another token, not descriptive
    ("MyCrawler", UNDESCRIPTIVE, "undescriptive:no-version"),
    ("MyCrawler (+https://example.org/crawler)", UNDESCRIPTIVE, "undescriptive:no-version"),
    ("MyCrawler/1.0", UNDESCRIPTIVE, "undescriptive:no-contact"),
    ("Mozilla/5.0 (compatible; MyCrawler/1.0)", UNDESCRIPTIVE, "undescriptive:no-contact"),
    (
        "Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)",
        UNDESCRIPTIVE,
        "undescriptive:invalid-token",
    ),
    ("Mozilla/5.0 (Windows NT 10.0)", UNDESCRIPTIVE, "undescriptive:no-token"),
    # another crawler's descriptive UA
    ("OtherBot/1.0 (+https://other.example/bot)", MISMATCH, "mismatch"),
    (
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        MISMATCH,
        "mismatch",
    ),
    ("AcmeBotNet/1.0 (+https://acme.example)", MISMATCH, "mismatch"),  # not a whole-name match
    ("AcmeBot-Images/1.0 (+https://acme.example)", MISMATCH, "mismatch"),
    ("ScrapyBot/1.0 (+https://scrapy-bot.example)", MISMATCH, "mismatch"),  # not Scrapy itself
    ("QRCode/1.0 (+https://qr.example)", MISMATCH, "mismatch"),  # dataset `Code\/1\.` is VS Code
    (
        "MyCrawler/2.0 (+https://example.org/crawler) python-requests/2.31.0",
        MISMATCH,
        "mismatch",
    ),
    # garbage and unicode
    ("\x00\xff\xfe\x1b[31m", UNDESCRIPTIVE, "undescriptive:no-token"),
    ("\x00\xff garbage \x1b[31m", UNDESCRIPTIVE, "undescriptive:no-version"),
    ("日本語クローラー/1.0 (+https://例え.jp)", UNDESCRIPTIVE, "undescriptive:invalid-token"),
    (
        "\u0410\u043a\u043c\u0435Bot/1.0 (+https://acme.example)",
        UNDESCRIPTIVE,
        "undescriptive:invalid-token",
    ),
    ("🤖🤖🤖", UNDESCRIPTIVE, "undescriptive:no-token"),
    ("x" * 10_000, UNDESCRIPTIVE, "undescriptive:too-long"),
    (
        "AcmeBot/1.0 (+https://acme.example) " + "x" * 10_000,
        UNDESCRIPTIVE,
        "undescriptive:too-long",
    ),
    ("Googlebot/2.1 " + "x" * 10_000, IMPERSONATION, "impersonation:Googlebot"),
]


@pytest.fixture(scope="module")
def policy() -> UserAgentPolicy:
    return UserAgentPolicy(["AcmeBot"])


@pytest.mark.parametrize(("user_agent", "kind", "rule"), CASES, ids=lambda v: repr(v)[:60])
def test_verdicts(policy: UserAgentPolicy, user_agent: str | None, kind: Kind, rule: str) -> None:
    verdict = policy.evaluate(user_agent)
    assert (verdict.kind, verdict.rule) == (kind, rule), verdict.reason
    assert verdict.reason and "\n" not in verdict.reason


def test_verdict_is_the_documented_shape(policy: UserAgentPolicy) -> None:
    verdict = policy.evaluate("python-requests/2.31.0")
    assert isinstance(verdict, UAVerdict)
    assert not verdict.allowed
    with pytest.raises(AttributeError):
        verdict.kind = Kind.ALLOWED  # type: ignore[misc]
    assert policy.evaluate("AcmeBot/1.0 (+https://acme.example)").allowed


def test_reasons_say_what_is_wrong(policy: UserAgentPolicy) -> None:
    assert "Googlebot" in policy.evaluate("Googlebot/2.1").reason
    assert "AcmeBot/1.0" in policy.evaluate("AcmeBot (+https://a.example)").reason
    assert "contact" in policy.evaluate("AcmeBot/1.0").reason
    assert "AcmeBot" in policy.evaluate("OtherBot/1.0 (+https://o.example)").reason
    assert "python-requests" in policy.evaluate("python-requests/2.31.0").reason


def test_several_tokens_and_tenant_isolation() -> None:
    two = UserAgentPolicy(["AcmeBot", "AcmeNews"])
    assert two.evaluate("AcmeNews/0.9 (+https://acme.example/news)").rule == "ok:AcmeNews"
    other = UserAgentPolicy(["OtherBot"])
    assert other.evaluate("AcmeBot/1.0 (+https://acme.example/bot)").kind is MISMATCH


def test_own_token_masked_for_impersonation_check() -> None:
    """A token that merely contains a well-known name (not allowed by config, but possible
    through the API) is the tenant's own and claims nothing."""
    policy = UserAgentPolicy(["Googlebot-Acme"])
    assert policy.evaluate("Googlebot-Acme/1.0 (+https://acme.example)").allowed
    assert policy.evaluate("Googlebot-Acme/1.0 (+https://a.example) Googlebot/2.1").kind is (
        IMPERSONATION
    )


def test_memoised_and_bounded(policy: UserAgentPolicy) -> None:
    ua = "AcmeBot/9.9 (+https://acme.example/memo)"
    assert policy.evaluate(ua) is policy.evaluate(ua)
    info = policy._cached.cache_info()
    assert info.maxsize is not None and info.maxsize <= 100_000
    policy.evaluate("y" * (MAX_LENGTH + 1))
    assert policy._cached.cache_info().currsize == info.currsize  # huge UAs are not kept


# --- other tenants' tokens ----------------------------------------------------------------------

# Tenant acme registered AcmeBot; tenant beta registered BetaBot (and BetaNews).
ACME_FOREIGN = ("BetaBot", "BetaNews")


@pytest.fixture(scope="module")
def acme() -> UserAgentPolicy:
    return UserAgentPolicy(("AcmeBot",), foreign_tokens=ACME_FOREIGN)


@pytest.mark.parametrize(
    ("user_agent", "kind", "rule"),
    [
        # another tenant's token beside (before or after) our own: never passes
        (
            "BetaBot/1.0 AcmeBot/1.0 (+https://beta.example/bot)",
            MISMATCH,
            "mismatch:another-tenant:BetaBot",
        ),
        (
            "AcmeBot/1.0 (+https://acme.example/bot) BetaBot/1.0",
            MISMATCH,
            "mismatch:another-tenant:BetaBot",
        ),
        (
            "Mozilla/5.0 (compatible; AcmeBot/1.0; betanews/2.0; +https://acme.example)",
            MISMATCH,
            "mismatch:another-tenant:BetaNews",
        ),
        ("BETABOT/1.0 (+https://beta.example)", MISMATCH, "mismatch:another-tenant:BetaBot"),
        ("BetaBot", MISMATCH, "mismatch:another-tenant:BetaBot"),  # before undescriptive
        # impersonation comes first
        (
            "GoogleBot/2.1 BetaBot/1.0 AcmeBot/1.0 (+https://acme.example)",
            IMPERSONATION,
            "impersonation:Googlebot",
        ),
        # whole product names only; a contact naming it claims nothing
        ("AcmeBot/1.0 (+https://acme.example) BetaBotNet/1.0", ALLOWED, "ok:AcmeBot"),
        (
            "AcmeBot/1.0 (+https://acme.example/betabot; betabot@acme.example)",
            ALLOWED,
            "ok:AcmeBot",
        ),
        # our own token, any case, still passes
        ("acmebot/1.0 (+https://acme.example)", ALLOWED, "ok:AcmeBot"),
        ("ACMEBOT/1.0 (+https://acme.example)", ALLOWED, "ok:AcmeBot"),
        ("Mozilla/5.0 (compatible; AcmeBot/2.1; +https://acme.example/bot)", ALLOWED, "ok:AcmeBot"),
    ],
)
def test_other_tenants_tokens(
    acme: UserAgentPolicy, user_agent: str, kind: Kind, rule: str
) -> None:
    verdict = acme.evaluate(user_agent)
    assert (verdict.kind, verdict.rule) == (kind, rule), verdict.reason
    if kind is ALLOWED:
        assert verdict.token == "AcmeBot"
    else:
        assert verdict.token is None


def test_other_tenants_token_reason_names_the_token_not_the_tenant(acme: UserAgentPolicy) -> None:
    verdict = acme.evaluate("BetaBot/1.0 AcmeBot/1.0 (+https://beta.example/bot)")
    assert "carries a product token registered by another tenant: BetaBot" in verdict.reason
    assert "beta" not in verdict.reason.replace("BetaBot", "")  # no tenant id
    assert "AcmeBot" in verdict.reason  # says what to send instead


def test_both_tenants_see_each_other() -> None:
    """The reproduction: acme registers AcmeBot, beta registers BetaBot."""
    acme = UserAgentPolicy(("AcmeBot",), foreign_tokens=("BetaBot",))
    beta = UserAgentPolicy(("BetaBot",), foreign_tokens=("AcmeBot",))
    both = "BetaBot/1.0 AcmeBot/1.0 (+https://beta.example/bot)"
    assert acme.evaluate(both).kind is MISMATCH
    assert beta.evaluate(both).kind is MISMATCH
    assert beta.evaluate(both).rule == "mismatch:another-tenant:AcmeBot"
    assert acme.evaluate("AcmeBot/1.0 (+https://acme.example)").token == "AcmeBot"
    assert beta.evaluate("BetaBot/1.0 (+https://beta.example)").token == "BetaBot"
    assert acme.evaluate("BetaBot/1.0 (+https://beta.example)").kind is MISMATCH


def test_own_token_is_never_foreign() -> None:
    policy = UserAgentPolicy(["AcmeBot"], foreign_tokens=["acmebot", "BetaBot"])
    assert policy.foreign_tokens == {"BetaBot"}
    assert policy.evaluate("AcmeBot/1.0 (+https://acme.example)").allowed


def test_lint_with_foreign_tokens_is_the_proxy_check(acme: UserAgentPolicy) -> None:
    for user_agent in [
        "BetaBot/1.0 AcmeBot/1.0 (+https://beta.example/bot)",
        "AcmeBot/1.0 (+https://acme.example)",
        "GoogleBot/2.1 AcmeBot/1.0",
        *(ua for ua, _, _ in CASES),
    ]:
        assert lint(user_agent, ["AcmeBot"], ACME_FOREIGN) == acme.evaluate(user_agent)
    # without own tokens, another tenant's token is still refused
    assert lint("BetaBot/1.0 (+https://b.example)", (), ["BetaBot"]).kind is MISMATCH


# --- the product token robots.txt is matched with ----------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "token"),
    [
        ("AcmeBot/1.0 (+https://acme.example/bot)", "AcmeBot"),
        ("acmebot/3 (+https://acme.example)", "AcmeBot"),  # as registered, not as sent
        ("Mozilla/5.0 (compatible; AcmeBot/2.1; +https://acme.example/bot)", "AcmeBot"),
        ("Scrapy/2.11.2 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example)", "AcmeBot"),
        ("AcmeBot/1.0 (+https://acme.example/bot) python-requests/2.31.0", "AcmeBot"),
        (f"{CHROME} (compatible; AcmeBot/1.0; +https://acme.example/bot)", "AcmeBot"),
        ("AcmeNews/0.9 (+https://acme.example) AcmeBot/1.0", "AcmeNews"),  # first versioned
        ("AcmeNews (+https://acme.example) AcmeBot/1.0", "AcmeBot"),
        # refused: the proxy never consults robots.txt
        ("AcmeBot/1.0", None),
        ("OtherBot/1.0 (+https://other.example)", None),
        ("Googlebot/2.1", None),
        (None, None),
    ],
)
def test_verdict_token_for_a_tenant(user_agent: str | None, token: str | None) -> None:
    assert UserAgentPolicy(["AcmeBot", "AcmeNews"]).evaluate(user_agent).token == token


# (user agent, product token): `crawlguard check` derives it with product_token_of; the proxy,
# with that token registered, takes UAVerdict.token. Both come from the same parse.
AGREEMENT: list[tuple[str, str]] = [
    ("AcmeBot/1.0 (+https://acme.example/bot)", "AcmeBot"),
    ("Scrapy/2.11 (+https://scrapy.org) AcmeBot/1.0 (+https://acme.example/bot)", "AcmeBot"),
    ("Scrapy/2.11.2 (+https://scrapy.org) acmebot/1.0 (+https://acme.example)", "acmebot"),
    ("Mozilla/5.0 (compatible; AcmeBot/1.2; +https://acme.example/bot)", "AcmeBot"),
    (f"{CHROME} AcmeBot/1.0 (+https://acme.example)", "AcmeBot"),
    ("python-requests/2.31.0 AcmeBot/1.0 (+https://acme.example)", "AcmeBot"),
    ("Go-http-client/1.1 Acme_Crawler/2 (crawler@acme.example)", "Acme_Crawler"),
    ("AppEngine-Google; (+http://code.google.com/appengine) PriceSpider/1.0 (+https://p.example)",
     "PriceSpider"),
    ("linkdexbot/Nutch-1.0-dev (http://www.linkdex.com/) NewsCrawler/3.1 (+https://n.example)",
     "NewsCrawler"),
    ("Mozilla/5.0 (X11) AppleWebKit/537.36 (KHTML) Chrome/120 Safari/537 AcmeBot/1.0 "
     "(+https://acme.example)", "AcmeBot"),
]  # fmt: skip


@pytest.mark.parametrize(("user_agent", "token"), AGREEMENT, ids=lambda v: repr(v)[:50])
def test_check_and_proxy_agree(user_agent: str, token: str) -> None:
    checked = product_token_of(user_agent)
    assert checked == token
    proxied = UserAgentPolicy([token.lower().capitalize()]).evaluate(user_agent)
    assert proxied.allowed, proxied.reason
    assert proxied.token is not None and proxied.token.lower() == checked.lower()
    assert lint(user_agent).token == checked  # lint and explain say the same


@pytest.mark.parametrize(
    ("user_agent", "token"),
    [
        # bare product tokens and simple UAs, as robots.txt test suites pass them (RFC 9309)
        ("FooBot", "FooBot"),
        ("foobot", "foobot"),
        ("Foo Bar", "Foo"),
        ("  FooBot  ", "FooBot"),
        ("Acme_Crawler-X", "Acme_Crawler-X"),
        ("AcmeBot (+https://acme.example)", "AcmeBot"),
        ("Googlebot/2.1", "Googlebot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bingbot"),
        (GOOGLEBOT_SMARTPHONE, "Googlebot"),
        # no crawler identity: the software's own name
        ("python-requests/2.31.0", "python-requests"),
        ("Scrapy/2.11.0 (+https://scrapy.org)", "Scrapy"),
        (CHROME, "Mozilla"),
        ("Dalvik/2.1.0 (Linux; U; Android 11; Pixel 5 Build/RQ3A.210805.001.A1)", "Dalvik"),
        ("got (https://github.com/sindresorhus/got)", "got"),
        # a name that is no RFC 9309 token is read up to its first other character
        ("Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)", "MJ"),
        ("123", ""),
        ("", ""),
        ("🤖🤖🤖", ""),
    ],
)
def test_product_token_of(user_agent: str, token: str) -> None:
    assert product_token_of(user_agent) == token
    assert lint(user_agent).token == (token or None)


# --- lint (no tenant) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "kind", "rule"),
    [
        ("OtherBot/1.0 (+https://other.example/bot)", ALLOWED, "ok:OtherBot"),
        ("Mozilla/5.0 (compatible; AcmeBot/2.1; +https://acme.example/bot)", ALLOWED, "ok:AcmeBot"),
        ("AcmeBot/1.0 (+https://acme.example) Go-http-client/1.1", ALLOWED, "ok:AcmeBot"),
        ("", MISSING, "missing"),
        (
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            IMPERSONATION,
            "impersonation:bingbot",
        ),
        ("curl/8.4.0", GENERIC, "generic:curl"),
        ("Scrapy/2.11.2 (+https://scrapy.org)", GENERIC, "generic:Scrapy"),
        (CHROME, GENERIC, "generic:browser"),
        ("OtherBot/1.0", UNDESCRIPTIVE, "undescriptive:no-contact"),
        ("OtherBot (+https://other.example)", UNDESCRIPTIVE, "undescriptive:no-version"),
    ],
)
def test_lint_without_tokens(user_agent: str, kind: Kind, rule: str) -> None:
    verdict = lint(user_agent)
    assert (verdict.kind, verdict.rule) == (kind, rule), verdict.reason


def test_lint_with_tokens_is_the_proxy_check() -> None:
    policy = UserAgentPolicy(["AcmeBot"])
    for user_agent, _, _ in CASES:
        assert lint(user_agent, ["AcmeBot"]) == policy.evaluate(user_agent)


# --- tokens and well-known crawlers ----------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "AcmeBot",
        "ExampleBot",
        "Acme_Crawler",
        "acme-news",
        "PriceSpider",
        "NewsCrawler",
        "ScrapyBot",
        "FluidBot",
    ],
)
def test_good_product_tokens(token: str) -> None:
    assert product_token_problem(token) is None


@pytest.mark.parametrize(
    ("token", "mentions"),
    [
        ("", "letters"),
        ("Acme Bot", "letters"),
        ("AcmeBot2", "letters"),
        ("AcmeBot/1.0", "letters"),
        ("Acmé", "letters"),
        ("ab", "3 characters"),
        ("Googlebot", "Googlebot"),
        ("googlebot", "Googlebot"),
        ("Googlebot-Image", "Googlebot"),
        ("MyGooglebotClone", "Googlebot"),
        ("bingbot", "bingbot"),
        ("Applebot", "Applebot"),
        ("Baiduspider", "Baiduspider"),
        ("YandexBot", "YandexBot"),
        ("DuckDuckBot", "DuckDuckBot"),
        ("Mozilla", "library"),
        ("curl", "library"),
        ("python-requests", "library"),
        ("Scrapy", "library"),
        ("HeadlessChrome", "library"),
        ("Java", "library"),
    ],
)
def test_bad_product_tokens(token: str, mentions: str) -> None:
    problem = product_token_problem(token)
    assert problem is not None and mentions in problem


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Googlebot", "Googlebot"),
        ("googlebot", "Googlebot"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot"),
        ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "YandexBot"),
        ("Mozilla/5.0 (compatible; googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot"),
        ("GOOGLEBOT/2.1", "Googlebot"),
        ("AcmeBot", None),
        ("AcmeBot/1.0 (+https://speedy.example; googlebot@acme.example)", "speedy"),  # contacts
        ("AcmeBot/1.0 (+https://acme.example; googlebot@acme.example)", "Googlebot"),
        ("AcmeBot/1.0 (+https://acme.example)", None),
        ("G\u043e\u043eglebot/2.1 (+https://acme.example)", "Googlebot"),  # look-alike
        ("AcmeBot/1.0 (+https://b\u00fccher.example)", None),
        ("MyGooglebotlessCrawler/1.0 (+https://acme.example)", None),
        ("linkdexbot/Nutch-1.0-dev (http://www.linkdex.com/)", None),  # Nutch: a framework
        (CHROME, None),
    ],
)
def test_well_known_crawler(value: str, name: str | None) -> None:
    assert well_known_crawler(value) == name


# --- ASCII case folding and look-alikes (issue 18, items 6 and 7) ----------------------------


def test_ascii_lower_folds_ascii_only() -> None:
    assert "\u212a".lower() == "k"  # why str.lower is not used on user agents
    assert ascii_lower("\u212aiteBot") == "\u212aitebot"
    assert ascii_lower("\u0130STANBUL") == "\u0130stanbul"
    assert ascii_lower("AcmeBot") == "acmebot"


@pytest.fixture(scope="module")
def kite() -> UserAgentPolicy:
    return UserAgentPolicy(["KiteBot"], foreign_tokens=["BetaBot"])


@pytest.mark.parametrize(
    ("user_agent", "kind", "rule"),
    [
        # the reproduction: Unicode folding made the Kelvin sign pass as K
        (
            "\u212aiteBot/1.0 (+https://kite.example)",
            IMPERSONATION,
            "impersonation:lookalike:KiteBot",
        ),
        (
            "\u212aITEBOT/1.0 (+https://kite.example)",
            IMPERSONATION,
            "impersonation:lookalike:KiteBot",
        ),
        (
            "\u212aitebot/1.0 (+https://kite.example)",
            IMPERSONATION,
            "impersonation:lookalike:KiteBot",
        ),
        (
            "Mozilla/5.0 (compatible; \u212aiteBot/1.0; +https://kite.example)",
            IMPERSONATION,
            "impersonation:lookalike:KiteBot",
        ),
        ("\u212aiteBot (+https://kite.example)", IMPERSONATION, "impersonation:lookalike:KiteBot"),
        # another tenant's token, imitated beside our own
        (
            "KiteBot/1.0 (+https://kite.example) B\u0435taBot/1.0",
            IMPERSONATION,
            "impersonation:lookalike:BetaBot",
        ),
        (
            "KiteBot/1.0 (+https://kite.example/B\u0415TABOT)",
            IMPERSONATION,
            "impersonation:lookalike:BetaBot",
        ),
        # the genuine token, any ASCII case
        ("KiteBot/1.0 (+https://kite.example)", ALLOWED, "ok:KiteBot"),
        ("KITEBOT/1.0 (+https://kite.example)", ALLOWED, "ok:KiteBot"),
        ("kitebot/1.0 (+https://k\u00efte.example)", ALLOWED, "ok:KiteBot"),  # IDN contact
    ],
    ids=ascii,
)
def test_look_alikes_of_registered_tokens(
    kite: UserAgentPolicy, user_agent: str, kind: Kind, rule: str
) -> None:
    verdict = kite.evaluate(user_agent)
    assert (verdict.kind, verdict.rule) == (kind, rule), verdict.reason
    assert lint(user_agent, ["KiteBot"], ["BetaBot"]) == verdict


def test_claim_in_a_contact_is_explained_as_such() -> None:
    reason = lint("AcmeBot/1.0 (+https://acme.example/Googlebot/2.1)", ["AcmeBot"]).reason
    assert "contact https://acme.example/Googlebot/2.1 names Googlebot" in reason
    assert "contact" not in lint("AcmeBot/1.0 Googlebot/2.1 (+https://a.example)").reason


def test_look_alike_reason_shows_the_characters_and_whose_token() -> None:
    kite = UserAgentPolicy(["KiteBot"], foreign_tokens=["BetaBot"])
    own = kite.evaluate("\u212aiteBot/1.0 (+https://kite.example)").reason
    assert "'\\u212aiteBot'" in own and "this tenant's product token KiteBot" in own
    assert own.isascii()  # the reason says which character is not what it looks like
    other = kite.evaluate("KiteBot/1.0 (+https://kite.example) B\u0435taBot/1.0").reason
    assert "registered by another tenant BetaBot" in other and "beta " not in other.lower()
    known = kite.evaluate("G\u043e\u043eglebot/2.1").reason
    assert "well-known crawler Googlebot" in known


# (ASCII letter, a character the Unicode confusables data says looks like it): a tenant that
# registered QxaBot is imitated by "Qx\u0430Bot", and so on, in scripts and forms of every kind.
CONFUSABLES = [
    ("a", "\u0430"),  # CYRILLIC SMALL LETTER A
    ("a", "\u0251"),  # LATIN SMALL LETTER ALPHA
    ("c", "\u03f2"),  # GREEK LUNATE SIGMA SYMBOL (its NFKC form is a final sigma)
    ("e", "\u0435"),  # CYRILLIC SMALL LETTER IE
    ("e", "\u212e"),  # ESTIMATED SYMBOL
    ("o", "\u03bf"),  # GREEK SMALL LETTER OMICRON
    ("o", "\u0585"),  # ARMENIAN SMALL LETTER OH
    ("p", "\u0440"),  # CYRILLIC SMALL LETTER ER
    ("i", "\u0456"),  # CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I
    ("i", "\u0131"),  # LATIN SMALL LETTER DOTLESS I
    ("l", "\u2113"),  # SCRIPT SMALL L
    ("g", "\u0261"),  # LATIN SMALL LETTER SCRIPT G
    ("h", "\u04bb"),  # CYRILLIC SMALL LETTER SHHA
    ("n", "\u0578"),  # ARMENIAN SMALL LETTER VO
    ("v", "\u03bd"),  # GREEK SMALL LETTER NU
    ("K", "\u212a"),  # KELVIN SIGN
    ("K", "\u039a"),  # GREEK CAPITAL LETTER KAPPA
    ("B", "\u0392"),  # GREEK CAPITAL LETTER BETA
    ("H", "\u041d"),  # CYRILLIC CAPITAL LETTER EN
    ("M", "\u041c"),  # CYRILLIC CAPITAL LETTER EM
    ("A", "\U0001d400"),  # MATHEMATICAL BOLD CAPITAL A
    ("m", "\uff4d"),  # FULLWIDTH LATIN SMALL LETTER M
    ("T", "\uff34"),  # FULLWIDTH LATIN CAPITAL LETTER T
]


@pytest.mark.parametrize(("letter", "lookalike"), CONFUSABLES, ids=ascii)
def test_confusables_data_is_applied(letter: str, lookalike: str) -> None:
    token = f"Qx{letter}Bot"
    verdict = lint(f"Qx{lookalike}Bot/1.0 (+https://q.example)", [token])
    assert verdict.rule == f"impersonation:lookalike:{token}", verdict.reason


# Letters with a non-ASCII look-alike in every case (Cyrillic, Greek, fullwidth), for the
# property below.
_LOOKALIKE_OF = {
    **{c: chr(ord(c) + 0xFEE0) for c in string.ascii_letters},  # fullwidth
    "a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441", "x": "\u0445",
    "y": "\u0443", "i": "\u0456", "A": "\u0391", "B": "\u0392", "E": "\u0395", "K": "\u212a",
    "M": "\u041c", "H": "\u041d", "O": "\u041e", "T": "\u0422", "X": "\u03a7",
}  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    token=st.from_regex(r"[A-Z][a-z]{2,7}(Bot|Crawler|Spider)", fullmatch=True).filter(
        lambda t: product_token_problem(t) is None
    ),
    data=st.data(),
)
def test_no_look_alike_of_a_registered_token_passes(token: str, data: st.DataObject) -> None:
    """Any ASCII-case spelling of the token with any non-empty set of letters replaced by a
    look-alike is refused as that token's look-alike, wherever it stands."""
    cased = "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) for c in token)
    swap = data.draw(st.sets(st.integers(0, len(token) - 1), min_size=1))
    fake = "".join(_LOOKALIKE_OF[c] if i in swap else c for i, c in enumerate(cased))
    template = data.draw(
        st.sampled_from(
            [
                "{}/1.0 (+https://t.example)",
                "Mozilla/5.0 (compatible; {}/2.1; +https://t.example/bot)",
                "OtherBot/1.0 (+https://t.example/{})",
                "OtherBot/1.0 ({}@t.example)",
            ]
        )
    )
    verdict = lint(template.format(fake), [token])
    assert verdict.rule == f"impersonation:lookalike:{token}", (fake, verdict.reason)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=80))
def test_any_text_gets_a_verdict(user_agent: str) -> None:
    """Nothing a client sends (lone surrogates from undecodable bytes included) crashes the
    policy, and ASCII alone never makes a look-alike."""
    verdict = lint(user_agent, ["AcmeBot"], ["BetaBot"])
    assert verdict.reason
    if user_agent.isascii():
        assert not verdict.rule.startswith("impersonation:lookalike:")


# --- speed --------------------------------------------------------------------------------------


def test_evaluate_is_fast() -> None:
    """Per-request cost: 1,000 distinct, uncached UAs of every kind run a few hundred lines of
    crawlguard code each, counted (tests/costs.py): the crawler names are matched by one
    alternation, not a loop over the dataset's ~200 patterns (which would add ~400 lines a UA).
    The time (well under 1 ms a UA) is measured by benchmarks/decide_worst_case.py."""
    templates = [
        "AcmeBot/{i}.0 (+https://acme.example/bot/{i})",
        "Mozilla/5.0 (compatible; OtherBot{i}/2.{i}; +https://other.example/{i})",
        "python-requests/2.{i}.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/{i}.0.0.0 Safari/537.36",
        "Mozilla/5.0 (compatible; Googlebot/2.{i}; +http://www.google.com/bot.html)",
        "Crawler{i} (+mailto:x{i}@example.org)",
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Chrome/{i}.0 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)",
        "garbage-{i} " * 20,
    ]
    uas = [templates[i % len(templates)].format(i=i) for i in range(1000)]
    assert len(set(uas)) == 1000
    policy = UserAgentPolicy(["AcmeBot"])
    works = [measure(lambda: policy.evaluate(ua))[1] for ua in uas]  # noqa: B023
    mean = sum(w.lines for w in works) / len(works)
    worst = max(works, key=lambda w: w.lines)
    assert mean <= 400 and worst.lines <= 1_500, f"mean {mean:.0f} lines; worst: {worst}"
