"""Integrity II: one request in, one decided request out (issue 18, items 1-5, 8-10).

Each test runs the real proxy (subprocess, netguard as its sitecustomize: it cannot send a
packet off this machine) against real origins on 127.0.0.1, and proves what reached the origin
from the origin's own log: `WireOrigin` frames requests with h11, so a request smuggled in a
body shows up as one more request there.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import netguard
import pytest
import trustme
from harness import GOOD_UA, LocalOrigin, Proxy, base_config, sha256_hex, tenant, wait_for
from rawhttp import (
    WireOrigin,
    auth,
    closed_without_reply,
    connect,
    read_reply,
    request_bytes,
    send,
)

SMUGGLED = (
    b"GET /private/s1 HTTP/1.1\r\nHost: internal-vhost.example\r\nUser-Agent: Googlebot/2.1\r\n\r\n"
)


def tenants() -> list[dict]:
    return [
        tenant("acme", ["AcmeBot"]),
        tenant("globex", ["GlobexCrawler"], mode="monitor"),
        tenant("initech", ["InitechBot"], mode="off"),
    ]


def guarded(tmp: Path, config: dict) -> Proxy:
    return Proxy(config, tmp, env=netguard.subprocess_env(tmp / "netguard.log"))


def netguard_log(proxy: Proxy) -> str:
    path = proxy.tmp / "netguard.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, ca_file: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("integrity")
    p = guarded(tmp, base_config(tmp, proxy={"upstream_ca_file": ca_file}, tenants=tenants()))
    yield p
    p.stop()
    assert netguard_log(p) == ""


@pytest.fixture
def wire() -> Iterator[WireOrigin]:
    o = WireOrigin()
    yield o
    o.close()


def post(authority: str, path: str, framing: str, body: bytes, extra: str = "", **kw: str) -> bytes:
    """An absolute-form POST with `body` framed by Content-Length or chunked."""
    ua = kw.get("ua", GOOD_UA)
    who = kw.get("tenant", "acme")
    head = (
        f"POST http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {ua}\r\n"
        f"Proxy-Authorization: {auth(who)}\r\n{extra}"
    ).encode()
    if framing == "chunked":
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + payload
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def records(proxy: Proxy, kind: str) -> list[dict]:
    return proxy.violations("--kind", kind)


# -- 1. smuggling through Connection ----------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "named"),
    [
        ("content-length", "Content-Length"),
        ("chunked", "Transfer-Encoding"),
        ("content-length", "Host"),
        ("content-length", "User-Agent"),
    ],
)
def test_connection_may_not_name_framing_and_nothing_is_smuggled(
    proxy: Proxy, wire: WireOrigin, framing: str, named: str
):
    authority = f"127.0.0.1:{wire.port}"
    path = f"/ok-{framing}-{named.lower()}"
    r = send(proxy.port, post(authority, path, framing, SMUGGLED, f"Connection: {named}\r\n"))
    assert (r.status, r.header("X-Crawlguard-Decision")) == (400, "request-invalid"), r.body
    assert wire.received() == [] and wire.errors == []  # neither the POST nor what it carried
    assert wait_for(lambda: any(path in v["url"] for v in records(proxy, "request-invalid")))


def test_connection_naming_framing_inside_intercepted_tls(
    proxy: Proxy, server_cert: trustme.LeafCert
):
    site = LocalOrigin(tls=server_cert)
    try:
        authority = f"127.0.0.1:{site.port}"
        ctx = ssl.create_default_context(cafile=proxy.ca_file)
        sock, reply = connect(proxy.port, authority, proxy_auth=auth())
        assert reply.status == 200
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                f"POST /ok HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {GOOD_UA}\r\n"
                f"Connection: Content-Length\r\nContent-Length: {len(SMUGGLED)}\r\n\r\n".encode()
                + SMUGGLED
            )
            r = read_reply(tls)
        assert (r.status, r.header("X-Crawlguard-Decision")) == (400, "request-invalid")
        assert site.page_hits() == []
    finally:
        site.close()


def test_hop_by_hop_tokens_are_still_removed_and_the_body_framed_as_read(
    proxy: Proxy, wire: WireOrigin
):
    authority = f"127.0.0.1:{wire.port}"
    extra = "Connection: X-Trace, Keep-Alive\r\nX-Trace: 1\r\nKeep-Alive: 5\r\n"
    for framing in ("content-length", "chunked"):
        r = send(proxy.port, post(authority, f"/hop-{framing}", framing, SMUGGLED, extra))
        assert r.status == 200
    got = wire.received()
    assert [(g.method, g.target, g.body) for g in got] == [
        (b"POST", b"/hop-content-length", SMUGGLED),
        (b"POST", b"/hop-chunked", SMUGGLED),
    ]
    for g in got:
        names = {n.lower() for n, _ in g.headers}
        assert not names & {b"x-trace", b"keep-alive", b"connection", b"proxy-authorization"}


# -- 3. engine-made refusals are recorded --------------------------------------------------------


def test_engine_made_refusals_are_recorded_for_the_tenant(proxy: Proxy, wire: WireOrigin):
    authority = f"127.0.0.1:{wire.port}"
    answers = []
    sock, reply = connect(proxy.port, authority, proxy_auth=auth("globex"))
    assert reply.status == 200
    with sock:  # a nested CONNECT
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        answers.append(read_reply(sock, "CONNECT"))
    sock, reply = connect(proxy.port, authority, proxy_auth=auth("globex"))
    with sock:  # 414 inside a tunnel
        sock.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answers.append(read_reply(sock))
    sock, reply = connect(proxy.port, authority, proxy_auth=auth("globex"))
    with sock:  # 431 inside a tunnel
        sock.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n")
        answers.append(read_reply(sock))
    # an authority with userinfo, outside any tunnel: the head's own credentials name the tenant
    answers.append(
        send(
            proxy.port,
            request_bytes(
                f"http://user:secret@{authority}/u", authority, proxy_auth=auth("globex")
            ),
        )
    )
    assert [a.status for a in answers] == [400, 414, 431, 400]
    assert {a.header("X-Crawlguard-Decision") for a in answers} == {"request-invalid"}

    def recorded() -> list[dict]:
        return proxy.violations("--tenant", "globex", "--kind", "request-invalid")

    assert wait_for(lambda: len(recorded()) == 4)
    rules = sorted(v["rule"] for v in recorded())
    assert rules == ["engine: 400", "engine: 400", "engine: 414", "engine: 431"]
    assert all("secret" not in v["url"] for v in recorded())  # a URL's password is not kept
    assert all(v["action"] == "blocked" for v in recorded())  # refused in monitor mode too
    assert 'crawlguard_requests_total{decision="request-invalid",tenant="globex"} 4.0' in (
        proxy.metrics()
    )
    assert wire.received() == []


# -- 4, 5. one User-Agent, no control characters -----------------------------------------------


def test_two_user_agent_headers_are_ambiguous(proxy: Proxy, wire: WireOrigin):
    authority = f"127.0.0.1:{wire.port}"
    for i, second in enumerate(["python-requests/2.31", GOOD_UA]):
        r = send(
            proxy.port,
            request_bytes(
                f"http://{authority}/two-{i}",
                authority,
                proxy_auth=auth(),
                extra={"User-Agent": second},
            ),
        )
        assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "ua-ambiguous"), r.body
    assert wire.received() == []
    assert wait_for(lambda: len(records(proxy, "ua-ambiguous")) >= 2)


CONTROLS = ["\x00", "\x0b", "\x7f", "\x1b", "\r User-Agent: python-requests", "\x01"]


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("where", ["User-Agent", "X-Note"])
def test_control_characters_in_any_header_are_refused(
    proxy: Proxy, wire: WireOrigin, control: str, where: str
):
    authority = f"127.0.0.1:{wire.port}"
    # inside the value: mitmproxy trims whitespace (VT too) at its ends, and forwards the rest
    ua = f"AcmeBot/1.0{control} (+https://acme.example/bot)" if where == "User-Agent" else GOOD_UA
    extra = {"X-Note": f"a{control}b"} if where == "X-Note" else {}
    r = send(
        proxy.port,
        request_bytes(f"http://{authority}/cc", authority, proxy_auth=auth(), ua=ua, extra=extra),
    )
    assert (r.status, r.header("X-Crawlguard-Decision")) == (400, "request-invalid"), r.body
    assert wire.received() == []


# -- 8. /robots.txt by other methods, and in a loop ----------------------------------------------


def test_robots_txt_is_exempt_from_rules_only_for_get_and_head_and_is_paced(proxy: Proxy):
    site = LocalOrigin(robots=b"User-agent: *\nDisallow: /\nCrawl-delay: 30\n")
    try:
        url = site.url("/robots.txt")
        assert proxy.get(url).status_code == 200  # the crawler's own fetch: free
        again = proxy.get(url)  # a loop of them is paced like any request
        assert (again.status_code, again.headers["X-Crawlguard-Decision"]) == (429, "crawl-delay")
        import requests

        for method in ("POST", "PUT", "DELETE"):
            r = requests.request(
                method,
                url,
                proxies=proxy.proxies(),
                headers={"User-Agent": GOOD_UA},
                timeout=15,
            )
            assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (
                403,
                "robots-disallow",
            ), method
        assert [h.method for h in site.hits if h.path == "/robots.txt"] == ["GET", "GET"]
    finally:
        site.close()


def test_the_robots_txt_fetch_does_not_take_the_first_pages_slot(proxy: Proxy):
    site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 30\n")
    try:
        assert proxy.get(site.url("/robots.txt"), tenant="acme").status_code == 200
        assert proxy.get(site.url("/page"), tenant="acme").status_code == 200
        assert proxy.get(site.url("/page2"), tenant="acme").status_code == 429
        r = proxy.get(site.url("/robots.txt"), tenant="acme", headers={"X-Probe": "POST"})
        assert r.status_code == 429  # the lane has its own slot, and it was taken
    finally:
        site.close()


# -- 2. tunnels are decided against the running config ----------------------------------------


@pytest.fixture
def reloadable(tmp_path: Path, ca_file: str) -> Iterator[Proxy]:
    p = guarded(tmp_path, base_config(tmp_path, proxy={"upstream_ca_file": ca_file}))
    yield p
    p.stop()
    assert netguard_log(p) == ""


def keepalive(sock: socket.socket, path: str, authority: str) -> int:
    sock.sendall(request_bytes(path, authority).replace(b"Connection: close\r\n", b""))
    return read_reply(sock).status


def test_a_rotated_token_ends_the_tunnels_it_opened(reloadable: Proxy, wire: WireOrigin):
    authority = f"127.0.0.1:{wire.port}"
    sock, reply = connect(reloadable.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        assert keepalive(sock, "/before", authority) == 200
        rotated = [
            dict(t, token_sha256=sha256_hex("acme-new")) if t["id"] == "acme" else t
            for t in reloadable.config["tenants"]
        ]
        reloadable.reload(tenants=rotated)
        sock.sendall(request_bytes("/after", authority).replace(b"Connection: close\r\n", b""))
        r = read_reply(sock)
        assert (r.status, r.header("X-Crawlguard-Decision")) == (407, "auth-required")
        assert closed_without_reply(sock)  # and the tunnel is closed
    assert [g.target for g in wire.received()] == [b"/before"]
    sock, reply = connect(reloadable.port, authority, proxy_auth=auth("acme", "acme-new"))
    with sock:
        assert keepalive(sock, "/new-token", authority) == 200


def test_a_removed_tenants_tunnel_is_closed(reloadable: Proxy, wire: WireOrigin):
    authority = f"127.0.0.1:{wire.port}"
    sock, _ = connect(reloadable.port, authority, proxy_auth=auth("globex"))
    with sock:
        assert keepalive(sock, "/before", authority) == 200
        kept = [t for t in reloadable.config["tenants"] if t["id"] != "globex"]
        reloadable.reload(tenants=kept)
        assert keepalive(sock, "/after", authority) == 407
    assert [g.target for g in wire.received()] == [b"/before"]


@pytest.mark.parametrize(
    "narrowed",
    [{"allow_private": False}, {"allowed_ports": [80, 443]}],
    ids=["allow_private", "allowed_ports"],
)
def test_a_narrowed_destination_policy_applies_inside_open_tunnels(
    reloadable: Proxy, wire: WireOrigin, narrowed: dict
):
    authority = f"127.0.0.1:{wire.port}"
    sock, reply = connect(reloadable.port, authority, proxy_auth=auth())
    with sock:
        assert keepalive(sock, "/before", authority) == 200  # the upstream connection is open
        reloadable.reload(destinations={**reloadable.config["destinations"], **narrowed})
        sock.sendall(request_bytes("/after", authority).replace(b"Connection: close\r\n", b""))
        r = read_reply(sock)
        assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "destination-forbidden")
    sock, reply = connect(reloadable.port, authority, proxy_auth=auth())
    assert reply.status == 403  # and no new tunnel
    assert [g.target for g in wire.received()] == [b"/before"]


# -- 9. one server, many names: pacing.scope --------------------------------------------------

DELAY30 = b"User-agent: *\nCrawl-delay: 30\n"


def scoped_proxy(tmp: Path, scope: str | None, **sections: object) -> Proxy:
    cfg = base_config(tmp, **sections)
    if scope is None:
        del cfg["pacing"]["scope"]  # the product's default
    else:
        cfg["pacing"]["scope"] = scope
    return guarded(tmp, cfg)


@pytest.mark.parametrize(("scope", "second"), [(None, 429), ("host", 429), ("origin", 200)])
def test_two_ports_of_one_host_share_a_slot_unless_scope_is_origin(
    tmp_path: Path, scope: str | None, second: int
):
    one, two = WireOrigin(DELAY30), WireOrigin(DELAY30)
    p = scoped_proxy(tmp_path, scope)
    try:
        assert p.get(f"http://127.0.0.1:{one.port}/a").status_code == 200
        r = p.get(f"http://127.0.0.1:{two.port}/b")
        assert r.status_code == second, r.text
        assert len(two.received()) == (1 if second == 200 else 0)
    finally:
        p.stop()
        one.close()
        two.close()
    assert netguard_log(p) == ""


@pytest.mark.parametrize(("scope", "second"), [("host", 200), ("address", 429)])
def test_names_of_one_address_share_a_slot_with_scope_address(
    tmp_path: Path, scope: str, second: int
):
    site = WireOrigin(DELAY30)
    aliases = {"one.test": ["127.0.0.1"], "two.test": ["127.0.0.1"]}
    p = scoped_proxy(
        tmp_path,
        scope,
        destinations={"allow_private": True, "allowed_ports": ["1-65535"], "hosts": aliases},
    )
    try:
        assert p.get(f"http://one.test:{site.port}/a").status_code == 200
        r = p.get(f"http://two.test:{site.port}/b")
        assert r.status_code == second, r.text
        if second == 429:
            assert "pacing.scope: address" in r.text
            assert p.get(f"http://127.0.0.1:{site.port}/c").status_code == 429  # the literal too
        assert len(site.received()) == (2 if second == 200 else 1)
    finally:
        p.stop()
        site.close()
    assert netguard_log(p) == ""


# -- 10. the held pool is shared fairly -------------------------------------------------------


def test_a_tenant_filling_the_held_pool_cannot_make_another_one_a_violator(tmp_path: Path):
    import threading

    import requests

    hog_site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 1\n")
    fair_site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 8\n")
    cfg = base_config(
        tmp_path,
        pacing={"max_held": 4, "max_hold": 10},
        tenants=[
            tenant("hog", ["HogBot"], pacing="delay"),
            tenant("fair", ["FairBot"], pacing="delay"),
        ],
    )
    p = guarded(tmp_path, cfg)
    hog_ua, fair_ua = "HogBot/1.0 (+https://hog.example)", "FairBot/1.0 (+https://fair.example)"
    answers: list[requests.Response] = []

    def hog(i: int) -> None:
        answers.append(p.get(hog_site.url(f"/h{i}"), tenant="hog", ua=hog_ua, timeout=30))

    try:
        assert p.get(fair_site.url("/f0"), tenant="fair", ua=fair_ua).status_code == 200
        threads = [threading.Thread(target=hog, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        # one forwarded now, four held: the whole pool is the hog's (it was alone to ask)
        assert wait_for(lambda: 'crawlguard_held_requests{tenant="hog"} 4.0' in p.metrics())
        busy = p.get(fair_site.url("/f1"), tenant="fair", ua=fair_ua)
        assert (busy.status_code, busy.headers["X-Crawlguard-Decision"]) == (503, "proxy-busy")
        assert int(busy.headers["Retry-After"]) >= 1
        for t in threads:
            t.join(30)
        assert sorted(r.status_code for r in answers) == [200] * 5
        # its slot (8 s after /f0) has not come yet: held, now that the pool has room
        held = p.get(fair_site.url("/f2"), tenant="fair", ua=fair_ua, timeout=30)
        assert held.status_code == 200 and "X-Crawlguard-Delayed" in held.headers
    finally:
        p.stop()
        hog_site.close()
        fair_site.close()
    fair_records = [v for v in p.violations("--tenant", "fair")]
    assert [v["action"] for v in fair_records] == ["delayed"], fair_records  # no violation
    assert [h.path for h in fair_site.page_hits()] == ["/f0", "/f2"]


# -- a refusal of a request with a large body is answered at once ------------------------------


@pytest.mark.parametrize("who", ["nobody", "acme"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_refused_request_with_a_large_body_is_answered_without_reading_it(
    proxy: Proxy, wire: WireOrigin, who: str, framing: str
):
    """Over 1 MiB a body is streamed: a refusal on its head (407, or robots/UA for a tenant)
    is answered at once and the connection closed; nothing reaches the origin, the proxy
    does not log an error per chunk."""
    authority = f"127.0.0.1:{wire.port}"
    ua = "python-requests/2.31" if who == "acme" else GOOD_UA
    head = (
        f"POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {ua}\r\n"
        + (f"Proxy-Authorization: {auth()}\r\n" if who == "acme" else "")
    ).encode()
    chunk = b"x" * 65536
    if framing == "chunked":
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        piece = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    else:
        head += b"Content-Length: %d\r\n\r\n" % (64 * len(chunk))
        piece = chunk
    errors_before = proxy.log().count("Traceback")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
        sock.sendall(head)
        sent = 0
        try:
            for _ in range(64):
                sock.sendall(piece)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: the point
        r = read_reply(sock)
    expected = (407, "auth-required") if who == "nobody" else (403, "ua-generic")
    assert (r.status, r.header("X-Crawlguard-Decision")) == expected
    assert r.header("Connection") == "close"
    assert wire.received() == []
    assert proxy.log().count("Traceback") == errors_before
