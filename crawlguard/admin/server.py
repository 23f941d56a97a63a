"""The admin HTTP server (SPEC: "Admin HTTP server"), in the proxy's event loop.

`/metrics`, `/healthz`, `/login`, `/logout` and `/static/*` are open; the dashboard (`/`) and
the JSON API (`/api/*`) need the operator token or a login session (crawlguard.admin.auth).
Sessions live in the store ``state.url`` names (crawlguard.state.sessions), opened here.

`crawlguard run --workers N` runs one AdminServer in the parent process (crawlguard.cli.workers)
over a `source` that is not a Runtime: the config, the store, and the workers' aggregated metrics.
It answers `/healthz` from `health` (503 until every worker is ready) and `/api/robots` with a
404 saying why: the robots.txt cache lives in each worker's memory. Its `metrics` is the
workers' aggregate, which has no admin server metrics: those are kept in a registry of the
server's own and served after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from crawlguard.admin import dashboard
from crawlguard.admin.api import AdminAPI
from crawlguard.admin.auth import LoginRoutes, OperatorAuth, middleware
from crawlguard.admin.metrics import Metrics, admin_auth_failures
from crawlguard.admin.throttle import AuthThrottle
from crawlguard.state.sessions import SessionStore, open_sessions

if TYPE_CHECKING:
    from crawlguard.runtime import Runtime


class AdminServer:
    def __init__(
        self,
        guard: Runtime | Any,
        *,
        health: Callable[[], str | None] | None = None,
        robots_unavailable: str | None = None,
        sessions: SessionStore | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        """`guard`: the Runtime, or in the parent of `--workers N` an object with the Runtime's
        `cfg`, `store` and `metrics` (`render()`). `health`: None when ready, else why not
        (a 503). `robots_unavailable`: `/api/robots` answers 404 with this message.
        `sessions`: the login session store (default: the one `state.url` names, closed by
        `stop`); `throttle`: the back-off on wrong credentials (default: the module's)."""
        self.guard = guard
        self._health = health
        self._own_sessions = sessions is None
        self.sessions = sessions if sessions is not None else open_sessions(guard.cfg.state.url)
        # the parent of --workers N: its metrics are the workers' aggregate (see above)
        self._own_registry: CollectorRegistry | None = None
        if isinstance(guard.metrics, Metrics):
            failures = guard.metrics.admin_auth_failures
        else:
            self._own_registry = CollectorRegistry()
            failures = admin_auth_failures(self._own_registry)
        # The token is read from the running config per request: a reload that changes it
        # revokes the old token and every session signed with it.
        self.auth = OperatorAuth(
            lambda: self.guard.cfg, self.sessions, throttle=throttle, failures=failures
        )
        self.app = web.Application(middlewares=[middleware(self.auth)])
        self._robots_unavailable = robots_unavailable
        if robots_unavailable is not None:  # before AdminAPI's: the router keeps this order
            self.app.router.add_get("/api/robots", self.robots_unavailable)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics)
        LoginRoutes(self.auth).add_routes(self.app)
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
        if self._runner.addresses:  # port 0: the one the system picked
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_sessions:
            await self.sessions.close()

    async def healthz(self, request: web.Request) -> web.Response:
        """200 ``ok`` when ready; a store disk below `store.min_free_bytes` adds a ``warning:``
        line but stays 200: the proxy still records, and a 503 would pull every replica out
        of a load balancer at once (alert on crawlguard_store_disk_low)."""
        import asyncio

        from crawlguard.store.disk import store_disk_warning

        problem = self._health() if self._health is not None else None
        if problem is not None:
            return web.Response(status=503, text=f"{problem}\n")
        warning = await asyncio.to_thread(store_disk_warning, self.guard.cfg)
        return web.Response(text="ok\n" if warning is None else f"ok\nwarning: {warning}\n")

    async def robots_unavailable(self, request: web.Request) -> web.Response:
        return web.json_response({"error": self._robots_unavailable}, status=404)

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.guard.metrics.render()
        if self._own_registry is not None:
            body += generate_latest(self._own_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
