"""What one client connection may make the proxy hold, before any tenant is known.

mitmproxy has no cap on open connections and no header-read deadline: its only timeout is
inactivity, which a client sending a byte every few seconds never reaches. crawlguard adds
the smallest layer that bounds both: a global connection cap (`proxy.max_connections`) and a
sweep that closes every connection that has had no request in flight for
`proxy.header_timeout` seconds — a slow request head, or idle keep-alive, whichever it is.
Request-head size caps live in `compat`, as does closing a connection (mitmproxy's handler
for it is cancelled, as its inactivity timeout does).

A connection nobody has authenticated on yet costs its source nothing, so one source could
fill the global cap for everyone: each source address (an IPv6 /64) may hold
`proxy.max_unauthenticated_per_source` such connections, and one more closes its oldest.
At the global cap a new connection closes the oldest unauthenticated connection of the source
holding the most, rather than being refused; authenticated connections are never closed for
either cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crawlguard.proxy import compat

log = logging.getLogger("crawlguard")

SWEEP_SECONDS = 1.0
AUTHENTICATED = "crawlguard_authenticated"
"""flow.metadata key: ClientLimitsAddon leaves a callback in each flow of a connection not yet
authenticated; `authenticated(flow)` calls it."""


def source_key(host: str) -> str:
    """Whose connection this is, for the per-source cap. One IPv6 host commonly holds a whole
    /64 (SLAAC, privacy addresses), so a /64 is one source; IPv4 and IPv4-mapped addresses
    count per address."""
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def authenticated(flow: Any) -> None:
    """A tenant authenticated on this flow: its connection no longer counts as unauthenticated.
    Called by whoever authenticates (CrawlGuardAddon), as soon as it has, so a request then held
    for pacing already protects its connection."""
    if (mark := flow.metadata.pop(AUTHENTICATED, None)) is not None:
        mark()


@dataclass(slots=True)
class _Conn:
    since: float  # when the client was last seen to finish a request (or connected)
    source: str  # source_key of its address
    busy: int = 0  # requests whose head has arrived and whose answer is not done
    anonymous: bool = True  # no request or CONNECT on it has authenticated yet


class ClientLimits:
    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        close: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        *,
        max_unauthenticated_per_source: int = 64,
        evicted: Callable[[str], None] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.max_unauthenticated_per_source = max_unauthenticated_per_source
        self._close = close  # closes a client connection by id
        self._evicted = evicted or close  # closes one to make room (the addon counts these)
        self._clock = clock
        self._conns: dict[str, _Conn] = {}
        # source -> its unauthenticated client ids, oldest first
        self._anonymous: dict[str, dict[str, None]] = {}
        # how many unauthenticated connections -> the sources holding that many, and the
        # largest such count: the source to close one of at the global cap, found in O(1)
        self._by_count: dict[int, dict[str, None]] = {}
        self._top = 0
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def unauthenticated(self, source: str) -> int:
        return len(self._anonymous.get(source, ()))

    def connected(self, client_id: str, source: str = "") -> str | None:
        """Register a new client from `source` (a source_key), closing older unauthenticated
        connections to make room; the reason to refuse it, or None."""
        held = self._anonymous.get(source)
        while held and len(held) >= self.max_unauthenticated_per_source:
            self._evict(source)
        if len(self._conns) >= self.max_connections:
            if self._top == 0:  # every open connection is authenticated: refuse the new one
                return f"crawlguard: more than proxy.max_connections ({self.max_connections}) open"
            self._evict(next(iter(self._by_count[self._top])))
        self._conns[client_id] = _Conn(self._clock(), source)
        self._count(source, client_id, +1)
        return None

    def authenticated(self, client_id: str) -> None:
        if (conn := self._conns.get(client_id)) is not None and conn.anonymous:
            conn.anonymous = False
            self._count(conn.source, client_id, -1)

    def is_anonymous(self, client_id: str) -> bool:
        conn = self._conns.get(client_id)
        return conn is not None and conn.anonymous

    def disconnected(self, client_id: str) -> None:
        self._forget(client_id)

    def request_started(self, client_id: str) -> None:
        if (conn := self._conns.get(client_id)) is not None:
            conn.busy += 1

    def request_done(self, client_id: str) -> None:
        if (conn := self._conns.get(client_id)) is not None:
            conn.busy = max(0, conn.busy - 1)
            conn.since = self._clock()

    def expired(self) -> list[str]:
        """Clients with no request in flight for longer than header_timeout."""
        deadline = self._clock() - self.header_timeout
        return [cid for cid, c in self._conns.items() if c.busy == 0 and c.since < deadline]

    def sweep(self) -> int:
        gone = self.expired()
        for client_id in gone:
            self._forget(client_id)
            self._close(client_id)
        return len(gone)

    def _forget(self, client_id: str) -> None:
        conn = self._conns.pop(client_id, None)
        if conn is not None and conn.anonymous:
            self._count(conn.source, client_id, -1)

    def _evict(self, source: str) -> None:
        """Close the oldest unauthenticated connection of `source`."""
        client_id = next(iter(self._anonymous[source]))
        self._forget(client_id)
        self._evicted(client_id)

    def _count(self, source: str, client_id: str, step: int) -> None:
        """Add (+1) or remove (-1) an unauthenticated connection of `source`, keeping
        `_by_count` and `_top` in step; counts move by one, so `_top` does too."""
        held = self._anonymous.setdefault(source, {})
        before = len(held)
        if step > 0:
            held[client_id] = None
        else:
            del held[client_id]
            if not held:
                del self._anonymous[source]
        after = before + step
        if before:
            bucket = self._by_count[before]
            del bucket[source]
            if not bucket:
                del self._by_count[before]
        if after:
            self._by_count.setdefault(after, {})[source] = None
        if after > self._top:
            self._top = after
        elif self._top not in self._by_count:
            self._top -= 1

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                if closed := self.sweep():
                    log.info("closed %d client connection(s) idle past header_timeout", closed)
            except Exception:  # a sweep must never end the sweeper
                log.exception("client sweep failed")


class ClientLimitsAddon:
    """The mitmproxy side of ClientLimits, an addon of its own placed before CrawlGuardAddon,
    so a request is counted as in flight before crawlguard holds it for pacing."""

    def __init__(
        self, settings: Callable[[], Any], metrics: Callable[[], Any] | None = None
    ) -> None:
        self._settings = settings  # -> the running config's `proxy` section, or None
        self._metrics = metrics  # -> the Runtime's Metrics, or None
        self.limits: ClientLimits | None = None

    async def running(self) -> None:
        cfg = self._settings()
        if cfg is None:
            return
        metrics = self._metrics() if self._metrics is not None else None
        closed = metrics.unauthenticated_closed if metrics is not None else None

        def evict(client_id: str) -> None:
            if closed is not None:
                closed.inc()
            _close_client(client_id)

        self.limits = ClientLimits(
            cfg.max_connections,
            cfg.header_timeout,
            _close_client,
            max_unauthenticated_per_source=cfg.max_unauthenticated_per_source,
            evicted=evict,
        )
        self.limits.start()

    async def done(self) -> None:
        if self.limits is not None:
            await self.limits.stop()

    def client_connected(self, client: Any) -> None:
        if self.limits is None:
            return
        source = source_key(client.peername[0]) if client.peername else ""
        if refused := self.limits.connected(client.id, source):
            client.error = refused  # mitmproxy closes it before reading a byte

    def client_disconnected(self, client: Any) -> None:
        if self.limits is not None:
            self.limits.disconnected(client.id)

    def http_connect(self, flow: Any) -> None:
        if self.limits is not None:  # a finished exchange, like a response
            self._offer_authentication(flow)
            self.limits.request_started(flow.client_conn.id)
            self.limits.request_done(flow.client_conn.id)

    def requestheaders(self, flow: Any) -> None:
        if self.limits is not None:
            self._offer_authentication(flow)
            self.limits.request_started(flow.client_conn.id)

    def _offer_authentication(self, flow: Any) -> None:
        """Hooks run in addon order, so this addon cannot see whether CrawlGuardAddon
        authenticated the flow; it leaves the flow a way to say so (`authenticated`)."""
        assert self.limits is not None
        client_id = flow.client_conn.id
        if self.limits.is_anonymous(client_id):
            flow.metadata[AUTHENTICATED] = functools.partial(self.limits.authenticated, client_id)

    def response(self, flow: Any) -> None:
        if self.limits is not None:
            self.limits.request_done(flow.client_conn.id)

    def error(self, flow: Any) -> None:
        if (
            self.limits is not None
            and flow.request is not None
            and flow.request.method != "CONNECT"
        ):
            self.limits.request_done(flow.client_conn.id)


def _close_client(client_id: str) -> None:
    """Close one client connection (its socket is freed: `compat.install`)."""
    compat.close_client(client_id)
