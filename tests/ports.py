"""Ports for the tests' origins, each new to this test process.

A proxy shared by a test module caches robots.txt (and keeps pacing state) per origin, and
the system hands a freed port out again: an origin on a reused port would inherit another
test's robots.txt. So an origin binds a port no origin of this process had before.
"""

from __future__ import annotations

import socket

_HANDED_OUT: set[tuple[str, int]] = set()


def origin_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to `host` on a port never handed to an origin in this process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []  # kept bound while we look, so the system moves on
    try:
        while True:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, 0))
            key = (host, int(sock.getsockname()[1]))
            if key not in _HANDED_OUT:
                _HANDED_OUT.add(key)
                return sock
            held.append(sock)
    finally:
        for sock in held:
            sock.close()
