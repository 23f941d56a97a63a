"""compat's patches seen from outside: a worker serving on a socket it was handed, and the
engine's reader dropping empty lines before a request inside a tunnel (RFC 9112 §2.2)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from harness import LocalOrigin
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import mode_servers
from rawhttp import auth, connect, read_reply, request_bytes

from crawlguard.proxy import compat


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    compat.uninstall()
    yield
    compat.uninstall()


async def test_a_worker_serves_on_the_socket_it_was_given() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    instance = mode_servers.ServerInstance.make("regular", proxyserver.Proxyserver())
    compat.listen_on_sockets([sock], 1)
    servers = await instance.listen("ignored", 1)
    try:
        assert [s.sockets[0].getsockname() for s in servers] == [sock.getsockname()]
    finally:
        for s in servers:
            s.close()
        sock.close()


def test_empty_lines_before_a_request_in_a_tunnel_are_ignored(
    proxy: Any, origin: LocalOrigin
) -> None:
    """Inside a CONNECT tunnel too (RFC 9112 §2.2): the next layer is HTTP and its reader,
    the engine's, drops them."""
    authority = f"127.0.0.1:{origin.port}"
    sock, reply = connect(proxy.port, authority, proxy_auth=auth())
    assert reply.status == 200
    with sock:
        sock.sendall(b"\r\n\n\r\n" + request_bytes("/in-tunnel", authority))
        assert read_reply(sock).status == 200
    assert origin.paths() == ["/in-tunnel"]
