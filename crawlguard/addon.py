"""The mitmproxy adapter: turns flows into Guard calls and decisions into responses.

Options are declared in `load` and validated in `configure`, as mitmproxy's own addons do.
Tenants authenticate on each plain-HTTP request, or once on CONNECT for the whole tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from mitmproxy import connection, ctx, exceptions, http

from crawlguard.admin import AdminServer
from crawlguard.config import Config, ConfigError, load_config
from crawlguard.decisions import DECISION_HEADER, Action, Decision, Kind
from crawlguard.pacing import PacingOutcome
from crawlguard.service import Guard, RequestInfo, TenantRuntime

log = logging.getLogger("crawlguard")

REALM = 'Basic realm="crawlguard"'
META = "crawlguard"  # (TenantRuntime, Decision, RequestInfo) of the flow, set once per request
REFUSED = "crawlguard_refused"


def refusal(decision: Decision) -> http.Response:
    headers = {DECISION_HEADER: decision.kind.value, "Content-Type": "text/plain; charset=utf-8"}
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    return http.Response.make(decision.status, decision.body(), headers)


def auth_required() -> http.Response:
    return http.Response.make(
        407,
        "crawlguard: proxy authentication required.\n"
        "Send Proxy-Authorization: Basic base64(tenant_id:token) "
        "(e.g. http://tenant:token@proxy:port as the proxy URL).\n",
        {"Proxy-Authenticate": REALM, "Content-Type": "text/plain; charset=utf-8"},
    )


def request_info(flow: http.HTTPFlow) -> RequestInfo:
    req = flow.request
    return RequestInfo(
        method=req.method,
        url=req.pretty_url if req.method != "CONNECT" else f"{req.host}:{req.port}",
        scheme=req.scheme,
        host=req.pretty_host if req.method != "CONNECT" else req.host,
        port=req.port,
        path=req.path,
        user_agent=req.headers.get("User-Agent"),
    )


class CrawlGuardAddon:
    def __init__(self, guard: Guard | None = None) -> None:
        self.guard = guard
        self._own_guard = guard is None
        self._tunnels: weakref.WeakKeyDictionary[connection.Client, TenantRuntime] = (
            weakref.WeakKeyDictionary()
        )
        self.admin: AdminServer | None = None
        # client id -> set when that client leaves; mitmproxy delivers client_disconnected
        # even while a hook for that connection (a pacing hold) is pending.
        self._gone: dict[str, asyncio.Event] = {}

    # -- mitmproxy lifecycle -----------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option(
            "crawlguard_config",
            str | None,
            None,
            "Path of the crawlguard YAML config (for mitmdump -s addons/crawlguard_addon.py).",
        )

    def configure(self, updated: set[str]) -> None:
        if "crawlguard_config" in updated and self._own_guard and ctx.options.crawlguard_config:
            try:
                cfg = load_config(ctx.options.crawlguard_config)
            except ConfigError as exc:
                raise exceptions.OptionsError(str(exc)) from None
            self.guard = Guard(cfg)
            apply_mitmproxy_options(ctx.options, cfg, listen=False)

    async def running(self) -> None:
        if self.guard is None:
            log.error("crawlguard: no config; set crawlguard_config")
            return
        self.guard.start()
        self.admin = AdminServer(self.guard)
        await self.admin.start()
        proxy = ctx.master.addons.get("proxyserver")
        addrs = ", ".join(f"{a[0]}:{a[1]}" for a in proxy.listen_addrs()) if proxy else "?"
        log.info(
            "crawlguard ready: proxy on %s, admin on %s:%d, %d tenant(s)",
            addrs,
            self.guard.cfg.admin.listen_host,
            self.admin.port,
            len(self.guard.tenants),
        )

    async def done(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
        if self.guard is not None:
            await self.guard.close()

    def client_connected(self, client: connection.Client) -> None:
        self._gone[client.id] = asyncio.Event()

    def client_disconnected(self, client: connection.Client) -> None:
        if (gone := self._gone.pop(client.id, None)) is not None:
            gone.set()

    # -- the request path --------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        guard = self.guard
        if guard is None:
            flow.response = auth_required()
            return
        tenant = guard.authenticate(flow.request.headers.get("Proxy-Authorization"))
        flow.request.headers.pop("Proxy-Authorization", None)
        if tenant is None:
            flow.response = auth_required()
            return
        denied = guard.check_destination(flow.request.host, flow.request.port)
        if denied is not None:
            flow.metadata[META] = (tenant, denied, request_info(flow))
            flow.metadata[REFUSED] = True
            flow.response = refusal(denied)
            return
        self._tunnels[flow.client_conn] = tenant

    async def http_connect_error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if meta and self.guard:
            tenant, decision, req = meta
            self.guard.count(tenant, decision.kind)
            if tenant.cfg.mode != "off":
                await self.guard.record(tenant, decision, Action.BLOCKED, req)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        guard = self.guard
        if flow.response is not None or flow.request.method == "CONNECT":
            return
        if guard is None:
            flow.response = auth_required()
            return
        tenant = self._tunnels.get(flow.client_conn)
        if tenant is None:
            tenant = guard.authenticate(flow.request.headers.get("Proxy-Authorization"))
            if tenant is None:
                flow.response = auth_required()
                return
        flow.request.headers.pop("Proxy-Authorization", None)
        req = request_info(flow)
        started = time.perf_counter()
        if tenant.cfg.mode == "off":
            decision = guard.check_destination(req.host, req.port) or Decision(Kind.ALLOWED)
        else:
            decision = await guard.decide(tenant, req)
        guard.metrics.decision_seconds.observe(time.perf_counter() - started)
        if decision.allowed and tenant.cfg.mode != "off" and not req.is_robots_txt:
            decision, outcome = await guard.pace(tenant, req, decision)
            if outcome.held:
                guard.count(tenant, decision.kind)
                flow.metadata[META] = (tenant, decision, req)
                await guard.record(tenant, decision, Action.DELAYED, req)
                await self._hold(flow, outcome)
                return
        guard.count(tenant, decision.kind)
        flow.metadata[META] = (tenant, decision, req)
        if decision.allowed:
            return
        if tenant.cfg.mode == "off" and decision.kind is not Kind.DESTINATION_FORBIDDEN:
            return
        enforce = tenant.enforce or decision.kind is Kind.DESTINATION_FORBIDDEN
        if tenant.cfg.mode != "off":
            await guard.record(tenant, decision, Action.BLOCKED if enforce else Action.LOGGED, req)
        if enforce:
            flow.metadata[REFUSED] = True
            flow.response = refusal(decision)

    async def _hold(self, flow: http.HTTPFlow, outcome: PacingOutcome) -> None:
        """Hold a delay-paced request until its slot (no CPU); free it if the client leaves."""
        assert self.guard is not None
        gone = self._gone.get(flow.client_conn.id)
        if gone is None or not flow.client_conn.connected:
            await self.guard.pacer.cancel(outcome)
            return
        self.guard.metrics.delayed.inc()
        try:
            await asyncio.wait_for(gone.wait(), timeout=outcome.wait)
        except TimeoutError:
            return  # the slot has come: forward
        finally:
            self.guard.metrics.delayed.dec()
        await self.guard.pacer.cancel(outcome)
        if flow.killable:
            flow.kill()

    async def response(self, flow: http.HTTPFlow) -> None:
        """Origin push-back (429/503) starts a back-off for this tenant and origin."""
        meta = flow.metadata.get(META)
        if meta is None or self.guard is None or flow.response is None:
            return
        tenant, _, req = meta
        if flow.metadata.get(REFUSED) or tenant.cfg.mode == "off":
            return  # our own refusal is not the origin's answer
        await self.guard.pacer.observe_response(
            tenant.id,
            req.origin,
            flow.response.status_code,
            flow.response.headers.get("Retry-After"),
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if meta is None or flow.response is None or flow.metadata.get(REFUSED):
            return
        decision = meta[1]
        headers = flow.response.headers
        headers[DECISION_HEADER] = Kind.ALLOWED.value
        if decision.delay_seconds is not None:  # held by delay pacing, then forwarded
            headers["X-Crawlguard-Delayed"] = f"{decision.delay_seconds:.3f}"
        elif not decision.allowed:  # monitor mode: say what would have happened
            headers["X-Crawlguard-Monitor"] = decision.kind.value


def apply_mitmproxy_options(options: Any, cfg: Config, *, listen: bool) -> None:
    """mitmproxy settings crawlguard relies on; listen/confdir only when we own the process."""
    updates: dict[str, Any] = {
        # Connect upstream only when a request is forwarded: a blocked request never
        # opens a connection to the origin.
        "connection_strategy": "lazy",
    }
    if cfg.proxy.upstream_ca_file:
        updates["ssl_verify_upstream_trusted_ca"] = cfg.proxy.upstream_ca_file
    if listen:
        updates.update(
            listen_host=cfg.proxy.listen_host,
            listen_port=cfg.proxy.listen_port,
            confdir=cfg.proxy.confdir,
        )
    options.update(**updates)


__all__ = ["CrawlGuardAddon", "apply_mitmproxy_options"]
