"""What a client can make the proxy hold before any tenant is known: connection count, slow or
idle connections, unauthenticated connections per source, request-head size, empty lines
before a request, against the real proxy. The rules alone (ClientLimits, head caps, sniffer):
tests/unit/test_client_limits_rules.py."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import LocalOrigin, Proxy, base_config, wait_for
from rawhttp import auth, closed_without_reply, connect, read_reply, request_bytes


@pytest.fixture
def strict_proxy(tmp_path: Path) -> Iterator[Proxy]:
    cfg = base_config(tmp_path, proxy={"max_connections": 4, "header_timeout": 1})
    p = Proxy(cfg, tmp_path)
    yield p
    p.stop()


def closed_by_peer(sock: socket.socket, within: float = 20) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_connections_over_the_cap_are_closed(strict_proxy: Proxy, origin: LocalOrigin):
    """With every connection authenticated there is nothing to make room with: a new one is
    closed before a byte is read."""
    authority = f"127.0.0.1:{origin.port}"
    held = [socket.create_connection(("127.0.0.1", strict_proxy.port)) for _ in range(4)]
    try:
        for i, sock in enumerate(held):
            sock.sendall(keep_alive(origin.url(f"/held{i}"), authority, proxy_auth=auth()))
            assert read_reply(sock).status == 200
        extra = socket.create_connection(("127.0.0.1", strict_proxy.port))
        with extra:
            assert closed_by_peer(extra)
        assert not any(is_closed(s) for s in held)
    finally:
        for s in held:
            s.close()


def test_a_slow_request_head_is_closed(strict_proxy: Proxy):
    with socket.create_connection(("127.0.0.1", strict_proxy.port)) as sock:
        sock.sendall(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n")
        deadline = time.monotonic() + 20
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # activity that an inactivity timeout counts
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.3)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
        assert closed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("prefix", "status"),
    [(b"GET http://127.0.0.1:1/", 414), (b"GET http://127.0.0.1:1/ HTTP/1.1\r\nX-Big: ", 431)],
)
def test_an_oversized_request_head_is_refused_early(
    tmp_path: Path, origin: LocalOrigin, prefix: bytes, status: int
):
    proxy = Proxy(base_config(tmp_path), tmp_path)
    try:
        before = rss_kib(proxy.proc.pid)
        sent = 0
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(prefix)
            sock.settimeout(5)  # a proxy that stops reading blocks us: that is a refusal too
            chunk = b"a" * 65536
            try:
                while sent < 50 * 1024 * 1024:  # a 50 MB header, unless refused first
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
            sock.settimeout(10)
            try:
                reply = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                reply = b""
        assert sent < 8 * 1024 * 1024, "the proxy kept reading"
        if reply:  # the 4xx may be lost to a reset once we kept writing; when it came, check it
            assert reply.startswith(b"HTTP/1.1 %d" % status)
            assert b"X-Crawlguard-Decision: request-invalid" in reply
        assert rss_kib(proxy.proc.pid) - before < 40 * 1024  # KiB: far below the 50 MB sent
        assert origin.hits == []
    finally:
        proxy.stop()


def test_requests_in_flight_outlive_the_header_timeout(tmp_path: Path):
    """A request held by delay pacing, or waiting on a slow origin, is not an idle client."""
    from harness import Route, tenant

    cfg = base_config(
        tmp_path,
        proxy={"header_timeout": 1},
        tenants=[tenant("acme", ["AcmeBot"], pacing="delay")],
    )
    site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 3\n")
    site.routes["/slow"] = Route(delay=2.5)
    proxy = Proxy(cfg, tmp_path)
    try:
        assert proxy.get(site.url("/slow")).status_code == 200  # 2.5 s at the origin
        r = proxy.get(site.url("/held"))  # held ~3 s for its Crawl-delay slot
        assert r.status_code == 200 and "X-Crawlguard-Delayed" in r.headers
    finally:
        proxy.stop()
        site.close()


def test_large_bodies_stream_through_instead_of_being_held(tmp_path: Path):
    """A 64 MiB upload and download cross the proxy without it holding either whole."""
    import requests
    from harness import GOOD_UA, Route

    site = LocalOrigin()
    site.routes["/big"] = Route(body=b"d" * (64 * 1024 * 1024))
    proxy = Proxy(base_config(tmp_path), tmp_path)
    try:
        assert proxy.get(site.url("/warm")).status_code == 200
        before = rss_kib(proxy.proc.pid)

        r = requests.post(
            site.url("/upload"),
            data=b"u" * (64 * 1024 * 1024),  # with Content-Length: the test origin needs it
            proxies=proxy.proxies(),
            headers={"User-Agent": GOOD_UA},
            timeout=60,
        )
        assert r.status_code == 200
        with requests.get(
            site.url("/big"), proxies=proxy.proxies(), headers={"User-Agent": GOOD_UA},
            stream=True, timeout=60,
        ) as r:  # fmt: skip
            got = sum(len(c) for c in r.iter_content(1024 * 1024))
        assert got == 64 * 1024 * 1024
        assert rss_kib(proxy.proc.pid) - before < 32 * 1024  # KiB: well under one body
    finally:
        proxy.stop()
        site.close()


def test_held_requests_are_capped(tmp_path: Path):
    """pacing.max_held: beyond it a request that would be held gets the 429 instead."""
    import threading

    from harness import tenant

    cfg = base_config(
        tmp_path,
        pacing={"max_held": 1, "max_hold": 10},
        tenants=[tenant("acme", ["AcmeBot"], pacing="delay")],
    )
    site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 4\n")
    proxy = Proxy(cfg, tmp_path)
    try:
        assert proxy.get(site.url("/first")).status_code == 200
        held: list[int] = []
        t = threading.Thread(target=lambda: held.append(proxy.get(site.url("/held")).status_code))
        t.start()
        assert wait_for(lambda: "crawlguard_delayed_requests 1.0" in proxy.metrics())
        r = proxy.get(site.url("/third"))
        assert (r.status_code, r.headers["X-Crawlguard-Decision"]) == (429, "crawl-delay")
        t.join(30)
        assert held == [200]
        assert site.paths() == ["/first", "/held"]
    finally:
        proxy.stop()
        site.close()


# -- issue 18 item 11: connections before authentication ------------------------------------


def dial(proxy: Proxy, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=15, source_address=(source, 0)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def is_closed(sock: socket.socket) -> bool:
    """Has the peer closed (or reset) this connection? Never blocks."""
    if not select.select([sock], [], [], 0)[0]:
        return False  # nothing to read, not even the end
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def keep_alive(target: str, host: str, proxy_auth: str | None = None) -> bytes:
    raw = request_bytes(target, host, proxy_auth=proxy_auth)
    return raw.replace(b"Connection: close\r\n", b"")


def closed_unauthenticated(proxy: Proxy) -> float:
    line = "crawlguard_unauthenticated_closed_total "
    return next(float(x.split()[-1]) for x in proxy.metrics().splitlines() if x.startswith(line))


def test_a_source_over_its_unauthenticated_cap_loses_its_oldest_connections(
    tmp_path: Path, origin: LocalOrigin
):
    proxy = Proxy(base_config(tmp_path, proxy={"max_unauthenticated_per_source": 3}), tmp_path)
    socks = [dial(proxy) for _ in range(5)]
    try:
        assert wait_for(lambda: is_closed(socks[0]) and is_closed(socks[1]))
        authority = f"127.0.0.1:{origin.port}"
        for i, sock in enumerate(socks[2:]):  # the newest three stay, and are served
            assert not is_closed(sock)
            sock.sendall(request_bytes(origin.url(f"/kept{i}"), authority, proxy_auth=auth()))
            assert read_reply(sock).status == 200
        assert origin.paths() == ["/kept0", "/kept1", "/kept2"]
        assert closed_unauthenticated(proxy) == 2
    finally:
        for sock in socks:
            sock.close()
        proxy.stop()


def test_one_source_filling_max_connections_does_not_shut_out_another(
    tmp_path: Path, origin: LocalOrigin
):
    """127.0.0.1 holds every connection the proxy allows, one authenticated and the rest idle
    after a 407; a client from 127.0.0.2 still gets through, at the cost of the oldest of the
    idle ones, never the authenticated one."""
    proxy = Proxy(base_config(tmp_path, proxy={"max_connections": 4}), tmp_path)
    authority = f"127.0.0.1:{origin.port}"
    socks = [dial(proxy) for _ in range(4)]
    try:
        socks[0].sendall(keep_alive(origin.url("/first"), authority, proxy_auth=auth()))
        assert read_reply(socks[0]).status == 200
        for sock in socks[1:]:  # each answered, so each is registered before the next client
            sock.sendall(keep_alive(origin.url("/anonymous"), authority))
            assert read_reply(sock).status == 407
        with dial(proxy, "127.0.0.2") as other:
            other.sendall(request_bytes(origin.url("/other"), authority, proxy_auth=auth()))
            assert read_reply(other).status == 200
        assert wait_for(lambda: is_closed(socks[1]))
        assert not any(is_closed(s) for s in (socks[0], socks[2], socks[3]))
        socks[0].sendall(keep_alive(origin.url("/again"), authority, proxy_auth=auth()))
        assert read_reply(socks[0]).status == 200
        assert origin.paths() == ["/first", "/other", "/again"]
        assert closed_unauthenticated(proxy) == 1
    finally:
        for sock in socks:
            sock.close()
        proxy.stop()


def test_authenticated_connections_are_never_closed_for_the_cap(tmp_path: Path):
    """A tunnel and a connection whose first request is held by pacing have authenticated (at
    the decision, not at the answer): a flood of idle connections from their address closes
    only idle ones."""
    import threading

    from harness import tenant

    site = LocalOrigin(robots=b"User-agent: *\nCrawl-delay: 3\n")
    other = LocalOrigin()
    cfg = base_config(
        tmp_path,
        proxy={"max_unauthenticated_per_source": 2},
        tenants=[tenant("acme", ["AcmeBot"], pacing="delay")],
    )
    proxy = Proxy(cfg, tmp_path)
    authority = f"127.0.0.1:{site.port}"
    socks: list[socket.socket] = []
    try:
        with dial(proxy) as first:  # takes the origin's pacing slot
            first.sendall(request_bytes(site.url("/first"), authority, proxy_auth=auth()))
            assert read_reply(first).status == 200
        tunnel, reply = connect(proxy.port, f"127.0.0.1:{other.port}", proxy_auth=auth())
        assert reply.status == 200
        held = dial(proxy)
        socks += [tunnel, held]
        held.sendall(keep_alive(site.url("/held"), authority, proxy_auth=auth()))
        answers: list[int] = []
        t = threading.Thread(target=lambda: answers.append(read_reply(held).status))
        t.start()
        assert wait_for(lambda: "crawlguard_delayed_requests 1.0" in proxy.metrics())
        idle = [dial(proxy) for _ in range(4)]
        socks += idle
        assert wait_for(lambda: is_closed(idle[0]) and is_closed(idle[1]))
        assert not any(is_closed(s) for s in (tunnel, held, idle[2], idle[3]))
        t.join(15)
        assert answers == [200]
        tunnel.sendall(request_bytes("/in-tunnel", f"127.0.0.1:{other.port}"))
        assert read_reply(tunnel).status == 200
        assert other.paths() == ["/in-tunnel"]
        assert closed_unauthenticated(proxy) == 2
    finally:
        for sock in socks:
            sock.close()
        proxy.stop()
        site.close()
        other.close()


# -- issue 18 item 14: empty lines before a request line ------------------------------------


def flood(sock: socket.socket, data: bytes, limit: int) -> int:
    """Write `data` repeatedly until `limit` bytes or the proxy stops taking them; bytes sent."""
    sent = 0
    sock.settimeout(5)  # a proxy that stops reading blocks us: that is a refusal too
    try:
        while sent < limit:
            sock.sendall(data)
            sent += len(data)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


@pytest.fixture(scope="module")
def plain_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("empty-lines")
    p = Proxy(base_config(tmp), tmp)
    yield p
    p.stop()


def test_empty_lines_without_end_get_400(plain_proxy: Proxy, origin: LocalOrigin):
    with dial(plain_proxy) as sock:
        sock.sendall(b"\r\n" * 4096)  # 8 KiB: over the 4 KiB cap, small enough to be read whole
        reply = read_reply(sock)
        assert (reply.status, reply.header("X-Crawlguard-Decision")) == (400, "request-invalid")
        assert closed_without_reply(sock)
    with dial(plain_proxy) as sock:
        sent = flood(sock, b"\r\n" * 32768, 32 * 1024 * 1024)
        assert closed_by_peer(sock, within=10)  # closed, not merely no longer read
    assert sent < 8 * 1024 * 1024, "the proxy kept reading"
    assert origin.hits == []


def test_a_few_empty_lines_before_a_request_are_ignored(plain_proxy: Proxy, origin: LocalOrigin):
    """RFC 9112 §2.2; mitmproxy alone drops one empty line per read and then waits."""
    authority = f"127.0.0.1:{origin.port}"
    with dial(plain_proxy) as sock:
        raw = request_bytes(origin.url("/after-empty-lines"), authority, proxy_auth=auth())
        sock.sendall(b"\r\n\r\n\n" + raw)
        assert read_reply(sock).status == 200
    assert origin.paths() == ["/after-empty-lines"]


@pytest.mark.alone  # what a flood gets in before the close depends on the proxy's CPU
def test_empty_lines_without_end_close_a_tunnel(plain_proxy: Proxy, origin: LocalOrigin):
    authority = f"127.0.0.1:{origin.port}"
    sock, reply = connect(plain_proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        sent = flood(sock, b"\r\n" * 32768, 32 * 1024 * 1024)
        assert closed_by_peer(sock, within=10)  # no reply: the tunnel is closed
    assert sent < 8 * 1024 * 1024, "the proxy kept reading"
    assert origin.hits == []
    records = plain_proxy.violations("--tenant", "acme", "--kind", "request-invalid")
    assert [r["url"] for r in records] == [authority]
