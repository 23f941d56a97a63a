"""The admin HTTP server (SPEC: "Admin HTTP server"), in the proxy's event loop.

`/metrics`, `/healthz`, `/login`, `/logout` and `/static/*` are open; the dashboard (`/`) and
the JSON API (`/api/*`) need the operator token or a login session (crawlguard.admin.auth).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from crawlguard.admin import dashboard
from crawlguard.admin.api import AdminAPI
from crawlguard.admin.auth import LoginRoutes, middleware

if TYPE_CHECKING:
    from crawlguard.service import Guard


class AdminServer:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        # The token is read from the running config per request: a reload that changes it
        # revokes the old token and every session signed with it.
        self.app = web.Application(middlewares=[middleware(self._token_digest)])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics)
        LoginRoutes(self._token_digest).add_routes(self.app)
        AdminAPI(lambda: self.guard).add_routes(self.app)
        dashboard.add_routes(self.app)
        self._runner: web.AppRunner | None = None
        self.port = guard.cfg.admin.port

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.guard.cfg.admin.listen_host, self.guard.cfg.admin.port
        )
        await site.start()
        server = site._server
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _token_digest(self) -> bytes | None:
        return self.guard.cfg.admin_token_digest()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.guard.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
