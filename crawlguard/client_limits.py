"""What one client connection may make the proxy hold, before any tenant is known.

mitmproxy has no cap on open connections and no header-read deadline: its only timeout is
inactivity, which a client sending a byte every few seconds never reaches. crawlguard adds
the smallest layer that bounds both: a global connection cap (`proxy.max_connections`,
refused in `client_connected`) and a sweep that closes every connection that has had no
request in flight for `proxy.header_timeout` seconds — a slow request head, or idle
keep-alive, whichever it is. Request-head size caps live in `mitm_patches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crawlguard import mitm_patches

log = logging.getLogger("crawlguard")

SWEEP_SECONDS = 1.0


@dataclass(slots=True)
class _Conn:
    since: float  # when the client was last seen to finish a request (or connected)
    busy: int = 0  # requests whose head has arrived and whose answer is not done


class ClientLimits:
    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        close: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self._close = close  # closes a client connection by id
        self._clock = clock
        self._conns: dict[str, _Conn] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def connected(self, client_id: str) -> str | None:
        """Register a new client; the reason to refuse it, or None."""
        if len(self._conns) >= self.max_connections:
            return f"crawlguard: more than proxy.max_connections ({self.max_connections}) open"
        self._conns[client_id] = _Conn(self._clock())
        return None

    def disconnected(self, client_id: str) -> None:
        self._conns.pop(client_id, None)

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
            self._conns.pop(client_id, None)
            self._close(client_id)
        return len(gone)

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

    def __init__(self, settings: Callable[[], Any]) -> None:
        self._settings = settings  # -> the running config's `proxy` section, or None
        self.limits: ClientLimits | None = None
        mitm_patches.install_connection_close()  # a closed connection must free its socket

    async def running(self) -> None:
        cfg = self._settings()
        if cfg is None:
            return
        self.limits = ClientLimits(cfg.max_connections, cfg.header_timeout, _close_client)
        self.limits.start()

    async def done(self) -> None:
        if self.limits is not None:
            await self.limits.stop()

    def client_connected(self, client: Any) -> None:
        if self.limits is not None and (refused := self.limits.connected(client.id)):
            client.error = refused  # mitmproxy closes it before reading a byte

    def client_disconnected(self, client: Any) -> None:
        if self.limits is not None:
            self.limits.disconnected(client.id)

    def http_connect(self, flow: Any) -> None:
        if self.limits is not None:  # a finished exchange, like a response
            self.limits.request_started(flow.client_conn.id)
            self.limits.request_done(flow.client_conn.id)

    def requestheaders(self, flow: Any) -> None:
        if self.limits is not None:
            self.limits.request_started(flow.client_conn.id)

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
    """Close one client connection: cancel mitmproxy's handler for it."""
    from mitmproxy import ctx

    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client_id) if proxyserver is not None else None
    if handler is not None:
        asyncio.get_running_loop().create_task(handler.on_timeout())
