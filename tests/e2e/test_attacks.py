"""The attack table: every way a tenant was shown to walk around a check, against the real proxy
(subprocess) and real local origins, each proved by the origin's own request log.

The proxies run with netguard (tests/netguard.py) as their sitecustomize: any connect or
lookup that is not loopback is refused inside the proxy process and logged, and each test
asserts that log is empty — so a broken check cannot send a packet off this machine.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import netguard
import pytest
import trustme
from harness import GOOD_UA, LocalOrigin, Proxy, Route, base_config, tenant
from rawhttp import auth, closed_without_reply, connect, read_reply, request_bytes, send

ROBOTS = b"User-agent: *\nDisallow: /private\nDisallow: /*.pdf$\n"

PATH_SPELLINGS = [
    "/%70rivate/",
    "/priv%61te/",
    "/PRIV%61TE/../private/x",
    "//private/",
    "/./private/",
    "/a/../private/",
    "/%2e/private/",
    "/%2E%2E/private",
    "/x/%2e%2e/private/y",
    "/.%2e/private",
    "/a/b/../../private?q=1",
    "///private",
    "/docs/a.p%64f",
    "/docs/a.%70%64%66",
    "/docs/./a.pdf",
]


def guarded(tmp: Path, config: dict) -> Proxy:
    log = tmp / "netguard.log"
    return Proxy(config, tmp, env=netguard.subprocess_env(log))


def netguard_log(proxy: Proxy) -> str:
    path = proxy.tmp / "netguard.log"
    return path.read_text() if path.exists() else ""


def tenants() -> list[dict]:
    return [
        tenant("acme", ["AcmeBot"]),
        tenant("globex", ["GlobexCrawler"], mode="monitor"),
        tenant("initech", ["InitechBot"], mode="off"),
        tenant("beta", ["BetaBot"]),
    ]


@pytest.fixture(scope="module")
def open_proxy(tmp_path_factory: pytest.TempPathFactory, ca_file: str) -> Iterator[Proxy]:
    """allow_private (local sites are the test's web), every port: robots and identity holes."""
    tmp = tmp_path_factory.mktemp("attacks-open")
    p = guarded(tmp, base_config(tmp, proxy={"upstream_ca_file": ca_file}, tenants=tenants()))
    yield p
    p.stop()
    assert netguard_log(p) == ""


@pytest.fixture(scope="module")
def closed_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The production destination policy: no private addresses, names mapped to bad places."""
    tmp = tmp_path_factory.mktemp("attacks-closed")
    cfg = base_config(
        tmp,
        destinations={
            "allow_private": False,
            "allowed_ports": ["1-65535"],
            "hosts": {
                "intranet.test": ["127.0.0.1"],
                "metadata.test": ["169.254.169.254"],
                "mixed.test": ["127.0.0.1", "10.1.2.3"],
            },
        },
        tenants=tenants(),
    )
    p = guarded(tmp, cfg)
    yield p
    p.stop()
    assert netguard_log(p) == ""


@pytest.fixture
def site() -> Iterator[LocalOrigin]:
    o = LocalOrigin(robots=ROBOTS)
    yield o
    o.close()


def forbidden_hits(origin: LocalOrigin) -> list[str]:
    return [p for p in origin.paths() if "private" in p.lower() or "pdf" in p.lower()]


# -- 1. path spellings -----------------------------------------------------------------------


@pytest.mark.parametrize("path", PATH_SPELLINGS)
def test_path_spellings_of_a_disallowed_url_are_refused(
    open_proxy: Proxy, site: LocalOrigin, path: str
):
    authority = f"127.0.0.1:{site.port}"
    r = send(
        open_proxy.port,
        request_bytes(f"http://{authority}{path}", authority, proxy_auth=auth()),
    )
    assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "robots-disallow"), r.body
    # in a plain tunnel too
    sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        sock.sendall(request_bytes(path, authority))
        r2 = read_reply(sock)
    assert (r2.status, r2.header("X-Crawlguard-Decision")) == (403, "robots-disallow")
    assert site.paths() == []


def test_allowed_request_is_forwarded_in_its_canonical_form(open_proxy: Proxy, site: LocalOrigin):
    authority = f"127.0.0.1:{site.port}"
    r = send(
        open_proxy.port,
        request_bytes(
            f"http://{authority}/a/./b/../%70age?q=%7e", "evil.example", proxy_auth=auth()
        ),
    )
    assert r.status == 200
    [hit] = site.page_hits()
    assert hit.path == "/a/page?q=~"
    assert hit.headers["Host"] == authority  # absolute-form wins over Host (RFC 9112 §3.2.2)


def test_monitor_mode_records_every_spelling_on_the_canonical_url(
    open_proxy: Proxy, site: LocalOrigin
):
    authority = f"127.0.0.1:{site.port}"
    r = send(
        open_proxy.port,
        request_bytes(
            f"http://{authority}/a/../%70rivate/",
            authority,
            ua="GlobexCrawler/1.0 (+https://globex.example/bot)",
            proxy_auth=auth("globex"),
        ),
    )
    assert (r.status, r.header("X-Crawlguard-Monitor")) == (200, "robots-disallow")
    assert site.paths() == ["/private/"]  # monitor forwards, and forwards what it decided on
    recs = open_proxy.violations("--tenant", "globex", "--kind", "robots-disallow")
    assert any(v["url"] == f"http://{authority}/private/" for v in recs)


# -- 2. Host header vs request target -----------------------------------------------------


def test_host_header_cannot_borrow_another_sites_robots(open_proxy: Proxy, site: LocalOrigin):
    other = LocalOrigin(robots=None, host="127.0.0.2")  # robots.txt 404: no restrictions
    try:
        authority, lie = f"127.0.0.1:{site.port}", f"127.0.0.2:{other.port}"
        r = send(
            open_proxy.port,
            request_bytes(f"http://{authority}/private", lie, proxy_auth=auth()),
        )
        assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "robots-disallow")
        sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
        assert reply.status == 200
        with sock:
            sock.sendall(request_bytes("/private", lie))
            assert read_reply(sock).status == 403
        assert site.paths() == []
        assert other.hits == []
    finally:
        other.close()


def test_absolute_form_inside_a_tunnel_is_sent_in_origin_form(open_proxy: Proxy, site: LocalOrigin):
    """RFC 9112 §3.2.2: an origin obeys the request line's authority over Host, so the line
    that leaves crawlguard must not name a host other than the one decided."""
    authority = f"127.0.0.1:{site.port}"
    sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        sock.sendall(request_bytes("http://127.0.0.2:1/ok", "127.0.0.2:1"))
        assert read_reply(sock).status == 200
    [hit] = site.page_hits()
    assert (hit.path, hit.headers["Host"]) == ("/ok", authority)


def test_host_header_inside_intercepted_tls_is_rewritten(
    open_proxy: Proxy, server_cert: trustme.LeafCert
):
    tls_site = LocalOrigin(robots=ROBOTS, tls=server_cert)
    try:
        r = open_proxy.get(tls_site.url("/private"), headers={"Host": "127.0.0.2"})
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, "robots-disallow")
        r = open_proxy.get(tls_site.url("/ok"), headers={"Host": "127.0.0.2"})
        assert r.status_code == 200
        [hit] = tls_site.page_hits()
        assert (hit.path, hit.headers["Host"]) == ("/ok", f"127.0.0.1:{tls_site.port}")
    finally:
        tls_site.close()


# -- 3. host case: one origin, one pacing slot, one robots.txt fetch ------------------------


def test_host_spellings_share_one_origin(open_proxy: Proxy):
    paced = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 30\n")
    try:
        statuses = []
        for i, host in enumerate(
            ["localhost", "LOCALHOST", "LocalHost.", "localhost.", "LoCaLhOsT"]
        ):
            authority = f"{host}:{paced.port}"
            r = send(
                open_proxy.port,
                request_bytes(f"http://{authority}/p{i}", authority, proxy_auth=auth()),
            )
            statuses.append((r.status, r.header("X-Crawlguard-Decision")))
        assert statuses[0] == (200, "allowed")
        assert statuses[1:] == [(429, "crawl-delay")] * 4
        assert paced.paths(include_robots=True) == ["/robots.txt", "/p0"]
        assert paced.page_hits()[0].headers["Host"] == f"localhost:{paced.port}"
    finally:
        paced.close()


# -- 4. raw bytes in a CONNECT tunnel ------------------------------------------------------


def _tunnel_chunks(path: str, authority: str) -> list[bytes]:
    full = request_bytes(path, authority)
    return [full[:2], full[2:]]


def test_request_split_over_segments_in_a_tunnel_is_parsed_as_http(
    open_proxy: Proxy, site: LocalOrigin
):
    authority = f"127.0.0.1:{site.port}"
    sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        for chunk in _tunnel_chunks("/private/", authority):
            sock.sendall(chunk)
            socket_gap()
        r = read_reply(sock)
    assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "robots-disallow")
    assert site.paths() == []


def test_leading_crlf_in_a_tunnel_is_parsed_as_http(open_proxy: Proxy, site: LocalOrigin):
    authority = f"127.0.0.1:{site.port}"
    sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        sock.sendall(b"\r\n" + request_bytes("/private/", authority))
        r = read_reply(sock)
    assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "robots-disallow")
    assert site.paths() == []


@pytest.mark.parametrize("junk", [b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00\x01\x02\x03private\r\n"])
def test_non_http_bytes_in_a_tunnel_are_closed_and_recorded(
    open_proxy: Proxy, site: LocalOrigin, junk: bytes
):
    authority = f"127.0.0.1:{site.port}"
    sock, reply = connect(open_proxy.port, authority, proxy_auth=auth("beta"))
    assert reply.status == 200
    with sock:
        sock.sendall(junk)
        assert closed_without_reply(sock)
    assert site.hits == []
    recs = open_proxy.violations("--tenant", "beta", "--kind", "request-invalid")
    assert any(v["url"] == authority for v in recs)


def test_raw_bytes_inside_intercepted_tls_are_parsed_or_closed(
    open_proxy: Proxy, server_cert: trustme.LeafCert
):
    tls_site = LocalOrigin(robots=ROBOTS, tls=server_cert)
    try:
        authority = f"127.0.0.1:{tls_site.port}"
        ctx = ssl.create_default_context(cafile=open_proxy.ca_file)
        sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
        assert reply.status == 200
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            for chunk in _tunnel_chunks("/private/", authority):
                tls.sendall(chunk)
                socket_gap()
            r = read_reply(tls)
        assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "robots-disallow")
        sock, reply = connect(open_proxy.port, authority, proxy_auth=auth())
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            assert closed_without_reply(tls)
        assert tls_site.page_hits() == []
    finally:
        tls_site.close()


def socket_gap() -> None:
    """Let a write leave as its own segment (nothing is timed: either way the proxy must parse)."""
    import time

    time.sleep(0.05)


# -- 5. address spellings and names (allow_private: false) --------------------------------

FORBIDDEN_HOSTS = [
    "127.0.0.1",
    "0x7f000001",
    "2130706433",
    "127.1",
    "0177.0.0.1",
    "0",
    "127.0.0.1.",
    "localhost",
    "LOCALHOST",
    "intranet.test",
    "INTRANET.TEST.",
    "mixed.test",
    "metadata.test",
    "0xa9fea9fe",
    "169.254.169.254",
    "100.64.0.1",
    "10.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[fd00::1]",
]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
@pytest.mark.parametrize("who", ["acme", "globex", "initech"])
def test_forbidden_destinations_in_every_spelling_and_mode(
    closed_proxy: Proxy, site: LocalOrigin, host: str, who: str
):
    authority = f"{host}:{site.port}"
    ua = {"acme": GOOD_UA, "globex": "GlobexCrawler/1.0 (+https://g.example)"}.get(
        who, "InitechBot/1.0 (+https://i.example)"
    )
    r = send(
        closed_proxy.port,
        request_bytes(f"http://{authority}/", authority, ua=ua, proxy_auth=auth(who)),
    )
    assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "destination-forbidden"), r.body
    sock, reply = connect(closed_proxy.port, authority, proxy_auth=auth(who))
    sock.close()
    assert (reply.status, reply.header("X-Crawlguard-Decision")) == (403, "destination-forbidden")
    assert site.hits == []  # not even robots.txt
    assert netguard_log(closed_proxy) == ""


def test_host_header_cannot_reach_loopback(closed_proxy: Proxy, site: LocalOrigin):
    authority = f"127.0.0.1:{site.port}"
    for target, host in [(f"http://{authority}/", "example.com"), ("/", authority)]:
        r = send(closed_proxy.port, request_bytes(target, host, proxy_auth=auth()))
        assert (r.status, r.header("X-Crawlguard-Decision")) == (403, "destination-forbidden")
    assert site.hits == []


@pytest.mark.parametrize("host", ["1.2.3.4.5", "0x1g", "a..b", "999.1.1.1", "ex ample.com"])
def test_unreadable_hosts_are_refused(closed_proxy: Proxy, host: str):
    r = send(
        closed_proxy.port,
        request_bytes(f"http://{host}:8080/", f"{host}:8080", proxy_auth=auth()),
    )
    assert r.status in (400, 403)
    assert r.header("X-Crawlguard-Decision") in ("request-invalid", "destination-forbidden")
    assert netguard_log(closed_proxy) == ""


# -- 6. robots.txt redirects are checked hop by hop -----------------------------------------


def test_robots_redirect_to_a_forbidden_port_is_never_fetched(tmp_path: Path, ca_file: str):
    admin = LocalOrigin()
    site = LocalOrigin()
    site.routes["/robots.txt"] = Route(
        status=302,
        headers={"Location": f"http://127.0.0.1:{admin.port}/internal-admin?action=delete"},
    )
    cfg = base_config(tmp_path, destinations={"allowed_ports": [site.port]}, tenants=tenants())
    proxy = guarded(tmp_path, cfg)
    try:
        r = proxy.get(site.url("/page"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (503, "robots-unreachable")
        assert admin.hits == []
        assert site.page_hits() == []
    finally:
        proxy.stop()
        admin.close()
        site.close()
    assert netguard_log(proxy) == ""


# -- 7. Crawl-delay in merged groups ---------------------------------------------------------


def test_largest_crawl_delay_of_the_merged_group_applies(open_proxy: Proxy):
    paced = LocalOrigin(
        robots=b"User-agent: acmebot\nCrawl-delay: 30\n\nUser-agent: *\nCrawl-delay: 1\n"
    )
    try:
        assert open_proxy.get(paced.url("/a")).status_code == 200
        r = open_proxy.get(paced.url("/b"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (429, "crawl-delay")
        assert int(r.headers["Retry-After"]) > 20  # 30 s asked, not the 1 s of the last line
    finally:
        paced.close()


# -- 8. identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ua", "kind"),
    [
        ("BetaBot/1.0 AcmeBot/1.0 (+https://beta.example/bot)", "ua-mismatch"),
        ("GoogleBot/2.1 AcmeBot/1.0 (+https://acme.example/bot)", "ua-impersonation"),
        ("AcmeBot/1.0 googlebot/2.1 (+https://acme.example/bot)", "ua-impersonation"),
        (
            "Mozilla/5.0 (compatible; GOOGLEBOT/2.1; +https://acme.example) AcmeBot/1.0",
            "ua-impersonation",
        ),
    ],
)
def test_a_tenant_cannot_wear_another_identity(
    open_proxy: Proxy, site: LocalOrigin, ua: str, kind: str
):
    r = open_proxy.get(site.url("/page"), ua=ua)
    assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (403, kind)
    assert site.page_hits() == []


# -- 9. small leaks ---------------------------------------------------------------------------


def test_robots_txt_with_a_query_is_an_ordinary_paced_request(open_proxy: Proxy):
    paced = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 30\n")
    try:
        assert open_proxy.get(paced.url("/page")).status_code == 200
        for q in ("/robots.txt?cb=1", "/robots.txt?cb=2", "/%72obots.txt?x"):
            r = open_proxy.get(paced.url(q))
            assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (429, "crawl-delay")
        assert open_proxy.get(paced.url("/robots.txt")).status_code == 200  # exempt, exactly
        assert [p for p in paced.paths(include_robots=True) if "cb" in p] == []
    finally:
        paced.close()


def test_proxy_and_crawlguard_headers_do_not_cross(open_proxy: Proxy, site: LocalOrigin):
    site.routes["/page"] = Route(
        headers={
            "X-Crawlguard-Monitor": "forged",
            "X-Crawlguard-Delayed": "99",
            "X-Crawlguard-Decision": "forged",
        }
    )
    authority = f"127.0.0.1:{site.port}"
    r = send(
        open_proxy.port,
        request_bytes(
            f"http://{authority}/page",
            authority,
            proxy_auth=auth(),
            extra={
                "Proxy-Connection": "keep-alive",
                "Via": "1.1 forged-proxy",
                "X-Crawlguard-Tenant": "globex",
                "X-Forwarded-Secret": "1",
                "Connection": "X-Forwarded-Secret",
            },
        ),
    )
    assert r.status == 200
    assert r.header("X-Crawlguard-Decision") == "allowed"
    assert r.header("X-Crawlguard-Monitor") is None
    assert r.header("X-Crawlguard-Delayed") is None
    [hit] = site.page_hits()
    sent = {k.lower() for k in hit.headers}
    assert not sent & {"proxy-connection", "via", "x-crawlguard-tenant", "x-forwarded-secret"}
    assert "proxy-authorization" not in sent


def test_engine_made_responses_carry_a_decision(open_proxy: Proxy):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    authority = f"127.0.0.1:{dead}"
    r = send(
        open_proxy.port,
        request_bytes(
            f"http://{authority}/",
            authority,
            ua="InitechBot/1.0 (+https://i.example)",
            proxy_auth=auth("initech"),
        ),
    )
    assert r.status == 502
    assert r.header("X-Crawlguard-Decision") == "allowed"  # allowed; the origin failed
    bad = send(open_proxy.port, b"GET /\x00 HTTP/1.1\r\n\r\n")
    assert (bad.status, bad.header("X-Crawlguard-Decision")) == (400, "request-invalid")
    r = send(open_proxy.port, request_bytes(f"http://{authority}/", authority))
    assert (r.status, r.header("X-Crawlguard-Decision")) == (407, "auth-required")


def test_http2_is_not_offered_inside_tunnels(open_proxy: Proxy, server_cert: trustme.LeafCert):
    """One request per HTTP/1.1 exchange: no :authority, no stream tricks to decide about."""
    tls_site = LocalOrigin(robots=ROBOTS, tls=server_cert)
    try:
        ctx = ssl.create_default_context(cafile=open_proxy.ca_file)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        sock, reply = connect(open_proxy.port, f"127.0.0.1:{tls_site.port}", proxy_auth=auth())
        assert reply.status == 200
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() in (None, "http/1.1")
    finally:
        tls_site.close()


def test_a_request_smuggled_in_a_body_is_refused(open_proxy: Proxy, site: LocalOrigin):
    """Content-Length and Transfer-Encoding together: the origin could read a second request
    out of the body that crawlguard never decided on. The engine refuses the message."""
    authority = f"127.0.0.1:{site.port}"
    hidden = f"GET /private HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    body = b"0\r\n\r\n" + hidden
    head = request_bytes(
        f"http://{authority}/ok",
        authority,
        method="POST",
        proxy_auth=auth(),
        extra={"Content-Length": str(len(body)), "Transfer-Encoding": "chunked"},
    )
    r = send(open_proxy.port, head + body)
    assert (r.status, r.header("X-Crawlguard-Decision")) == (400, "request-invalid")
    assert site.page_hits() == []  # robots.txt was fetched while deciding; no page
