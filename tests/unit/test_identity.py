"""crawlguard.policy.identity: one canonical host and path per request, whatever the spelling."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawlguard.policy.identity import (
    IdentityError,
    Target,
    canonical_host,
    canonical_path,
    normalize_escapes,
    request_identity,
)

FAST = settings(max_examples=250, deadline=None)

# --- hosts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.com", "example.com"),
        ("example.com.", "example.com"),
        ("LOCALHOST", "localhost"),
        ("LocalHost.", "localhost"),
        ("a_b.example", "a_b.example"),  # underscores: real hosts have them
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("bücher。example", "xn--bcher-kva.example"),  # ideographic full stop
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\uff0ecom", "example.com"),  # fullwidth
        # every IPv4 spelling a browser or resolver accepts (WHATWG IPv4 parser)
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("0.", "0.0.0.0"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("4294967295", "255.255.255.255"),
        ("\uff11\uff12\uff17.0.0.1", "127.0.0.1"),  # fullwidth digits map to ASCII (UTS #46)
        # IPv6 literals
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("[::FFFF:127.0.0.1]", "::ffff:7f00:1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[2001:DB8::0001]", "2001:db8::1"),
    ],
)
def test_canonical_host(host: str, canonical: str) -> None:
    assert canonical_host(host) == canonical


@pytest.mark.parametrize(
    "host",
    [
        "",
        ".",
        "..",
        "a..b",
        ".example.com",
        "example.com..",
        "1.2.3.4.5",
        "256.1.1.1.1",
        "256.1.1.1",
        "1.256.1.1",
        "4294967296",
        "1.16777216",
        "0x1g",
        "0xfoo",
        "1.2.3.08",  # leading 0 is octal: 8 is not a digit
        "example.123",  # ends in a number: must then be an IPv4 address
        "1.2.3.+4",
        "exa mple.com",
        "exa%6dple.com",
        "example.com:80",
        "user@example.com",
        "exa/mple.com",
        "a" * 64 + ".example",
        ("a" * 60 + ".") * 5,
        "[::1",
        "::1]",
        "[127.0.0.1]",
        "[fe80::1%eth0]",
        "fe80::1%25eth0",
        "[::1::2]",
        "\u2603.example",  # not IDNA 2008 valid
        "a\x00b.example",
    ],
)
def test_canonical_host_refuses(host: str) -> None:
    with pytest.raises(IdentityError):
        canonical_host(host)


def test_identity_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        canonical_host("1.2.3.4.5")


@FAST
@given(st.integers(0, 2**32 - 1), st.data())
def test_every_ipv4_spelling_is_the_dotted_quad(value: int, data: st.DataObject) -> None:
    quad = str(ipaddress.IPv4Address(value))
    octets = [int(o) for o in quad.split(".")]
    parts = data.draw(st.integers(1, 4))
    numbers = [*octets[: parts - 1], int.from_bytes(bytes(octets[parts - 1 :]), "big")]

    def spell(n: int) -> str:
        style = data.draw(st.sampled_from(["dec", "hex", "HEX", "oct"]))
        if style == "hex":
            return f"0x{n:x}"
        if style == "HEX":
            return f"0X{n:X}"
        return f"0{n:o}" if style == "oct" else str(n)

    host = ".".join(spell(n) for n in numbers) + data.draw(st.sampled_from(["", "."]))
    assert canonical_host(host) == quad


_HOST_TEXT = st.lists(
    st.sampled_from([*"abcXYZ019-_.:[]%xü\u3002\uff21\uff22", "0x", "\u00df", "\ufb00"]),
    max_size=24,
).map("".join)


@FAST
@given(_HOST_TEXT)
def test_canonical_host_is_idempotent(host: str) -> None:
    try:
        once = canonical_host(host)
    except IdentityError:
        return
    assert canonical_host(once) == once
    assert once == once.lower() and once.isascii()


# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "canonical"),
    [
        ("/", "/"),
        ("/private/", "/private/"),
        # the attack list: one resource, many spellings
        ("/%70rivate/", "/private/"),
        ("/priv%61te/", "/private/"),
        ("/PRIV%61TE/", "/PRIVaTE/"),  # case of the path itself is significant
        ("//private/", "/private/"),
        ("///private//x", "/private/x"),
        ("/./private/", "/private/"),
        ("/a/../private/", "/private/"),
        ("/%2e/private/", "/private/"),
        ("/%2E%2e/private/", "/private/"),
        ("/a/%2E%2E/private/", "/private/"),
        ("/a/.%2e/private/", "/private/"),
        ("/../../private/", "/private/"),
        ("/a//../private/", "/private/"),  # slashes collapse before ".." resolves
        ("/docs/a.p%64f", "/docs/a.pdf"),
        ("/%7e%7E%2d%5f%2E", "/~~-_."),
        # dot segments at the end name a directory
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/.", "/"),
        ("/a/...", "/a/..."),  # not a dot segment
        ("/a/.b/..c", "/a/.b/..c"),
        # reserved escapes stay escapes, upper-cased; %2F is not a slash
        ("/a%2fb", "/a%2Fb"),
        ("/a%2F..%2Fb", "/a%2F..%2Fb"),
        ("/%3a%40%21", "/%3A%40%21"),
        ("/%00", "/%00"),
        # characters outside RFC 3986 are encoded
        ("/a b", "/a%20b"),
        ('/"<>\\^`{|}', "/%22%3C%3E%5C%5E%60%7B%7C%7D"),
        ("/[x]", "/%5Bx%5D"),
        ("/100%", "/100%25"),
        ("/%zz", "/%25zz"),
        ("/%4", "/%254"),
        ("/ツ", "/%E3%83%84"),
        ("/caf\udce9", "/caf%E9"),  # a raw Latin-1 octet off the wire keeps its value
        # sub-delims, ":" and "@" stay; "*" and "$" too (robots.py spells them its way)
        ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
        ("/*.pdf$", "/*.pdf$"),
        # query: escapes normalised, nothing else
        ("/x?a=%7e&b=%2f", "/x?a=~&b=%2F"),
        ("/x?a=../b//c/./d", "/x?a=../b//c/./d"),
        ("/x?q=a b", "/x?q=a%20b"),
        ("/x?", "/x?"),
        ("/x?a?b", "/x?a?b"),
        ("/a/../x?y", "/x?y"),
        # fragments are never sent: dropped
        ("/a#frag", "/a"),
        ("/a?b#c?d", "/a?b"),
        ("/a%23b", "/a%23b"),
    ],
)
def test_canonical_path(target: str, canonical: str) -> None:
    assert canonical_path(target) == canonical


@pytest.mark.parametrize(
    "target",
    ["*", "", "private", "http://example.com/", "#x", "?q", "/a\x00b", "/a\nb", "/a\x7f", "/\tx"],
)
def test_canonical_path_refuses(target: str) -> None:
    with pytest.raises(IdentityError):
        canonical_path(target)


@pytest.mark.parametrize(
    ("value", "decode", "ascii_only", "normal"),
    [
        ("/%62%61%7A", True, True, "/baz"),
        ("/%62%61%7a", False, True, "/%62%61%7A"),
        ("/ツ%e3", True, False, "/ツ%E3"),
        ("/ツ", False, True, "/%E3%83%84"),
    ],
)
def test_normalize_escapes(value: str, decode: bool, ascii_only: bool, normal: str) -> None:
    assert normalize_escapes(value, decode_unreserved=decode, encode_non_ascii=ascii_only) == normal


_PATH_TEXT = st.lists(
    st.sampled_from([*"ab/.%?#*$~-_ 2eEfF0\\[]ü", "%2e", "%2F", "%7e", "\udce9", "/../"]),
    max_size=40,
).map(lambda parts: "/" + "".join(parts))


@settings(max_examples=300, deadline=None)
@given(_PATH_TEXT)
def test_canonical_path_is_idempotent(target: str) -> None:
    once = canonical_path(target)
    assert canonical_path(once) == once
    assert once.isascii() and once.startswith("/")
    assert "//" not in once.partition("?")[0]


_UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
_SEGMENT_CHARS = [*_UNRESERVED, *"!$&'()*+,;=:@", "%2F", "%3F", "%25", "%E3%83%84"]
_SEGMENT = (
    st.lists(st.sampled_from(_SEGMENT_CHARS), min_size=1, max_size=6)
    .map("".join)
    .filter(lambda s: s not in (".", ".."))
)
_QUERY = st.lists(st.sampled_from([*_SEGMENT_CHARS, "/", "?", ".."]), max_size=6).map("".join)


def _respell(text: str, draw: st.DrawFn) -> str:
    """The same URI text with random escapes of unreserved characters and random hex case."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "%":
            escape = text[i : i + 3]
            out.append(
                "%" + "".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in escape[1:])
            )
            i += 3
            continue
        char = text[i]
        if char in _UNRESERVED and draw(st.booleans()):
            hexpair = f"{ord(char):02X}"
            out.append("%" + (hexpair if draw(st.booleans()) else hexpair.lower()))
        else:
            out.append(char)
        i += 1
    return "".join(out)


@st.composite
def _spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(plain path, another spelling of it): dot segments, doubled slashes, escapes."""
    segments = draw(st.lists(_SEGMENT, max_size=5))
    trailing = draw(st.booleans()) or not segments
    query = draw(st.none() | _QUERY)
    plain = "/" + "/".join(segments) + ("/" if trailing and segments else "")
    spelled = ["/"]
    for i, segment in enumerate([*segments, ""] if trailing else segments):
        for _ in range(draw(st.integers(0, 2))):
            spelled.append(draw(st.sampled_from(["./", "/", "x/../", "%2E/", "a.b/%2e%2E//"])))
        spelled.append(segment)
        if i < len(segments) - 1 or (trailing and i == len(segments) - 1):
            spelled.append("/" * draw(st.integers(1, 3)))
    spelling = _respell("".join(spelled), draw)
    if query is not None:
        plain += "?" + query
        spelling += "?" + _respell(query, draw)
    return plain, spelling


@settings(max_examples=300, deadline=None)
@given(_spellings())
def test_every_spelling_of_a_path_is_the_plain_one(pair: tuple[str, str]) -> None:
    plain, spelling = pair
    assert canonical_path(plain) == plain
    assert canonical_path(spelling) == plain


# --- the request ----------------------------------------------------------------------------


def test_request_identity_and_target_views() -> None:
    t = request_identity("HTTP", "Example.COM.", None, "/a/../%70rivate?q=%7e")
    assert t == Target("http", "example.com", 80, "/private?q=~")
    assert t.origin == "http://example.com:80"
    assert t.authority == "example.com"
    assert t.url == "http://example.com/private?q=~"
    assert not t.is_robots_txt


@pytest.mark.parametrize(
    ("scheme", "host", "port", "origin", "authority"),
    [
        ("https", "example.com", None, "https://example.com:443", "example.com"),
        ("https", "example.com", 8443, "https://example.com:8443", "example.com:8443"),
        ("http", "example.com", 443, "http://example.com:443", "example.com:443"),
        ("https", "example.com", 80, "https://example.com:80", "example.com:80"),
        ("http", "0x7f000001", 8000, "http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http", "[::1]", None, "http://[::1]:80", "[::1]"),
        ("https", "::1", 8443, "https://[::1]:8443", "[::1]:8443"),
    ],
)
def test_target_origin_and_authority(
    scheme: str, host: str, port: int | None, origin: str, authority: str
) -> None:
    t = request_identity(scheme, host, port, "/")
    assert (t.origin, t.authority) == (origin, authority)
    assert t.url == f"{scheme}://{authority}/"


@pytest.mark.parametrize(
    ("target", "is_robots"),
    [
        ("/robots.txt", True),
        ("/robots.txt?x=1", True),
        ("/%72obots.txt", True),
        ("//robots.txt", True),
        ("/a/../robots.txt", True),
        ("/robots.txt/", False),
        ("/robots.txt.bak", False),
        ("/ROBOTS.TXT", False),
        ("/x/robots.txt", False),
    ],
)
def test_is_robots_txt(target: str, is_robots: bool) -> None:
    assert request_identity("https", "example.com", None, target).is_robots_txt is is_robots


@pytest.mark.parametrize(
    ("scheme", "host", "port", "target"),
    [
        ("ftp", "example.com", None, "/"),
        ("", "example.com", None, "/"),
        ("http", "example.com", 0, "/"),
        ("http", "example.com", 65536, "/"),
        ("http", "example.com", -1, "/"),
        ("http", "example.com", True, "/"),
        ("http", "a..b", None, "/"),
        ("http", "example.com", None, "*"),
        ("http", "example.com", None, "x"),
    ],
)
def test_request_identity_refuses(scheme: str, host: str, port: int | None, target: str) -> None:
    with pytest.raises(IdentityError):
        request_identity(scheme, host, port, target)


@settings(max_examples=300, deadline=None)
@given(st.text("ab/%2fF4e1Aé *$?\x00~", max_size=30), st.booleans(), st.booleans())
def test_normal_values_are_recognised_exactly(
    value: str, decode_unreserved: bool, encode_non_ascii: bool
) -> None:
    """The one-scan shortcut of normalize_escapes never skips a value the rewrite would change."""
    from crawlguard.policy import identity

    rewritten = identity._TO_FIX.sub(
        identity._FIXERS[decode_unreserved, encode_non_ascii], identity._octets(value)
    ).decode("utf-8", "surrogateescape")
    got = normalize_escapes(
        value, decode_unreserved=decode_unreserved, encode_non_ascii=encode_non_ascii
    )
    assert got == rewritten
