"""Async local test origins: real aiohttp servers on 127.0.0.1 that record every request.

Use from async tests (same event loop as the code under test)::

    async with RecordingOrigin(routes({"/robots.txt": respond(body=b"...")})) as origin:
        ...origin.url("/robots.txt"), origin.origin, origin.hits...

For a threaded origin usable from sync tests, see `harness.LocalOrigin`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web
from ports import origin_socket

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Hit:
    t: float  # time.monotonic() on arrival
    method: str
    path: str  # path and query as sent
    headers: dict[str, str] = field(default_factory=dict)


def respond(
    status: int = 200,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> Handler:
    """A handler that waits `delay` seconds, then answers with a fixed response."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, headers=dict(headers or {}))

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    return respond(status, headers={"Location": location})


def routes(table: Mapping[str, Handler], default: Handler | None = None) -> Handler:
    """Dispatch on the exact path (without query); unknown paths get `default` or a 404."""
    fallback = default or respond(404, b"not found\n")

    async def handler(request: web.Request) -> web.StreamResponse:
        return await table.get(request.path, fallback)(request)

    return handler


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released), for connection-refused cases."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RecordingOrigin:
    """One aiohttp server on an ephemeral port; every request lands in `hits` before handling."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 0.2,
    ) -> None:
        self.handler = handler
        self.host = host
        self.hits: list[Hit] = []
        self._ssl = ssl_context
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def scheme(self) -> str:
        return "https" if self._ssl is not None else "http"

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def url(self, path: str = "/", host: str | None = None) -> str:
        """Absolute URL on this origin; `host` may name it differently (e.g. localhost)."""
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def hits_for(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path.split("?", 1)[0] == path]

    async def _record(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(
            Hit(time.monotonic(), request.method, request.path_qs, dict(request.headers))
        )
        return await self.handler(request)

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        # handler_cancellation: a client giving up cancels a sleeping handler, so teardown is quick
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        await self._runner.setup()
        sock = origin_socket(self.host)  # a port new to this process: see ports.py
        self.port = int(sock.getsockname()[1])
        site = web.SockSite(self._runner, sock, ssl_context=self._ssl)
        await site.start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
