"""Property tests of issue 18 against the real proxy: what the origin receives is byte for byte
the request that was decided, or nothing.

Hypothesis draws request heads (Connection token sets, body framings, duplicate and hop-by-hop
headers, control characters, non-ASCII values); each example goes through the proxy to an
h11 origin (`WireOrigin`) that logs every request it parsed. The model below says what the
proxy decides and, when it forwards, exactly which header fields the origin must see.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import netguard
import pytest
from harness import GOOD_UA, Proxy, base_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawhttp import WireOrigin, auth, read_reply

from crawlguard.policy.headers import NEVER_HOP_BY_HOP

HOP_BY_HOP = {"keep-alive", "proxy-connection", "upgrade", "via", "te", "trailer"}
SMUGGLED = b"GET /private HTTP/1.1\r\nHost: inside.example\r\nUser-Agent: Googlebot/2.1\r\n\r\n"
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_numbers = itertools.count()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp: Path = tmp_path_factory.mktemp("integrity-props")
    p = Proxy(base_config(tmp), tmp, env=netguard.subprocess_env(tmp / "netguard.log"))
    yield p
    p.stop()
    log = tmp / "netguard.log"
    assert not log.exists() or log.read_text() == ""


@pytest.fixture(scope="module")
def wire() -> Iterator[WireOrigin]:
    o = WireOrigin()
    yield o
    o.close()


def framed(framing: str, body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    if framing == "chunked":
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        return [(b"Transfer-Encoding", b"chunked")], payload
    if framing == "content-length":
        return [(b"Content-Length", str(len(body)).encode())], body
    return [], b""


def exchange(proxy: Proxy, path: str, fields: list[tuple[bytes, bytes]], payload: bytes):
    head = b"POST http://%s%s HTTP/1.1\r\n" % (fields[0][1], path.encode())
    head += b"".join(b"%s: %s\r\n" % f for f in fields) + b"\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(head + payload)
        return read_reply(sock)


def expected(fields: list[tuple[bytes, bytes]]) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The model: (decision, header fields the origin must receive when forwarded)."""
    names = [n.decode().lower() for n, _ in fields]
    tokens = {
        t.strip().lower()
        for (n, v) in fields
        if n.lower() == b"connection"
        for t in v.decode("latin-1").split(",")
        if t.strip()
    }
    if any((c < 0x20 and c != 0x09) or c == 0x7F for _, v in fields for c in v):
        return "request-invalid", []
    if names.count("host") > 1 or tokens & NEVER_HOP_BY_HOP:
        return "request-invalid", []
    if names.count("user-agent") > 1:
        return "ua-ambiguous", []
    out: list[tuple[bytes, bytes]] = []
    for (name, value), low in zip(fields, names, strict=True):
        if low in HOP_BY_HOP or low.startswith(("proxy-", "x-crawlguard-")):
            continue
        if low in tokens - NEVER_HOP_BY_HOP:
            continue
        if low == "connection":
            if "close" in tokens and not any(n.lower() == b"connection" for n, _ in out):
                out.append((name, b"close"))
            continue
        out.append((name, value))
    return "allowed", out


def check(proxy: Proxy, wire: WireOrigin, fields: list[tuple[bytes, bytes]], body: bytes, framing):
    path = f"/p/{next(_numbers)}"
    before = len(wire.received())
    frame, payload = framed(framing, body)
    fields = fields + frame
    decision, forwarded = expected(fields)
    reply = exchange(proxy, path, fields, payload)
    assert reply.header("X-Crawlguard-Decision") == decision, (fields, reply.body)
    got = wire.received()[before:]
    assert wire.errors == []
    if decision != "allowed":
        assert got == []  # nothing at all reached the origin
        return
    assert len(got) == 1, got  # exactly one request: nothing smuggled in the body
    [req] = got
    assert (req.method, req.target, req.body) == (b"POST", path.encode(), body)
    assert req.headers == forwarded


def base(authority: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"Host", authority),
        (b"User-Agent", GOOD_UA.encode()),
        (b"Proxy-Authorization", auth().encode()),
    ]


TOKENS = ["content-length", "transfer-encoding", "host", "user-agent", "keep-alive", "x-trace",
          "cookie", "close", "te", "upgrade", "Content-Length", " TRANSFER-ENCODING "]  # fmt: skip
CONNECTION_TOKENS = st.sets(st.sampled_from(TOKENS), max_size=4)
FRAMINGS = st.sampled_from(["none", "content-length", "chunked"])
BODIES = st.one_of(st.binary(max_size=40), st.just(SMUGGLED))


@SETTINGS
@given(tokens=CONNECTION_TOKENS, framing=FRAMINGS, body=BODIES)
def test_connection_tokens_by_framing_one_request_out_per_request_in(
    proxy: Proxy, wire: WireOrigin, tokens: set[str], framing: str, body: bytes
) -> None:
    if framing == "none":
        body = b""
    fields = base(f"127.0.0.1:{wire.port}".encode())
    if tokens:
        fields.append((b"Connection", ", ".join(sorted(tokens)).encode()))
    fields += [(b"X-Trace", b"1"), (b"Cookie", b"a=b")]
    check(proxy, wire, fields, body, framing)


NAMES = st.sampled_from(
    ["X-A", "X-B", "Accept", "Cookie", "Connection", "Keep-Alive", "TE", "Upgrade", "Via",
     "Proxy-Foo", "X-Crawlguard-Decision", "User-Agent", "Host", "Trailer", "x-a"]
)  # fmt: skip
PLAIN = st.text(alphabet="abcXYZ019-_=;/ ,.", min_size=1, max_size=12).map(str.strip)
CONTROL = st.builds(
    lambda a, c, b: f"{a}{c}{b}",
    PLAIN,
    st.sampled_from(["\x00", "\x0b", "\x1b", "\x7f", "\r", "\n x", "\x08"]),
    PLAIN,
)
# Kelvin sign, Cyrillic Ka, CJK, no-break space: obs-text on the wire, forwarded as sent
UNICODE = st.text(alphabet="a\u00e9\u20ac\u212a\u041a\u043a\u65e5\u00a0", min_size=1, max_size=6)
UNICODE = UNICODE.map(str.strip)
VALUES = st.one_of(PLAIN, PLAIN, UNICODE, CONTROL).filter(bool)


@SETTINGS
@given(
    extra=st.lists(st.tuples(NAMES, VALUES), max_size=6),
    framing=FRAMINGS,
    body=BODIES,
)
def test_random_header_sets_reach_the_origin_exactly_as_decided_or_not_at_all(
    proxy: Proxy, wire: WireOrigin, extra: list[tuple[str, str]], framing: str, body: bytes
) -> None:
    if framing == "none":
        body = b""
    authority = f"127.0.0.1:{wire.port}".encode()
    fields = base(authority)
    for name, value in extra:
        if name == "Host":
            value = authority.decode()  # a second Host, spelled like the first
        if name == "User-Agent":
            value = GOOD_UA
        fields.append((name.encode(), value.encode("utf-8")))
    check(proxy, wire, fields, body, framing)
