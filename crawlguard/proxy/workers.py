"""A `--workers N` worker's side of the shared listening socket (crawlguard.cli.workers runs
the parent, which binds it once and passes it to every worker)."""

from __future__ import annotations

import socket

from crawlguard.proxy import compat

ACCEPT_BATCH = 1
"""Connections a worker accepts per wake-up (asyncio's default: 100; see `listen_on`)."""


class InheritedSocket(socket.socket):
    """A listening socket the parent made and listens on. asyncio calls `listen(backlog)`
    with the `backlog` it was given, which here is `ACCEPT_BATCH`: that must not shrink the
    kernel's queue of the socket every worker shares."""

    def listen(self, backlog: int = 0, /) -> None:
        return None


def listen_on(socks: list[socket.socket]) -> None:
    """Make mitmproxy's regular-mode server accept on the inherited sockets instead of binding
    host:port itself (this process runs nothing else).

    asyncio accepts up to `backlog` pending connections each time the socket is readable: by
    default 100, so the first worker to wake takes every connection of a burst (a crawler
    opening 16 keep-alive connections would land all on one worker). One per wake-up lets
    the idle workers take their share, and a busy worker, back in its loop less often,
    takes fewer."""
    compat.listen_on_sockets(socks, ACCEPT_BATCH)
