"""The mitmproxy adapter: turns flows into Runtime calls and plans into effects.

Options are declared in `load` and validated in `configure`, as mitmproxy's own addons do.
Tenants authenticate on each plain-HTTP request, or once on CONNECT for the whole tunnel.

What is decided is what is sent: every request is reduced to its canonical identity
(crawlguard.policy.identity) before any check, and after the decision the flow is rewritten to
exactly that identity — path, Host header, and the checked address to dial. `server_connect` is
the last gate: mitmproxy may only connect to an address a decision pinned for that client.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.http import HTTPMode

from crawlguard.admin import AdminServer
from crawlguard.config import Config, ConfigError, load_config
from crawlguard.policy import pipeline
from crawlguard.policy.budget import SiteTurn
from crawlguard.policy.decisions import DECISION_HEADER, Decision, Kind
from crawlguard.policy.headers import strip_request, strip_response
from crawlguard.policy.identity import Target
from crawlguard.policy.pacing import PacingOutcome
from crawlguard.policy.pipeline import Facts, RequestInfo, invalid
from crawlguard.policy.plan import Plan, plan
from crawlguard.policy.tenants import TenantRuntime
from crawlguard.proxy import ca, client_limits, compat
from crawlguard.proxy.sniff import FirstBytes, classify
from crawlguard.runtime import HELD, Runtime
from crawlguard.store import StoreBacklogged

log = logging.getLogger("crawlguard")

REALM = 'Basic realm="crawlguard"'
META = "crawlguard"  # (TenantRuntime, Decision, RequestInfo) of the flow, set once per request
REFUSED = "crawlguard_refused"
SITE_LEASE = "crawlguard_site_lease"  # (site, lease) a forwarded request holds in its site's budget
SENT = "crawlguard_sent"  # when the request was forwarded (time.time, as mitmproxy's timestamps)
AUTH_REQUIRED = "auth-required"  # X-Crawlguard-Decision of a 407: no tenant, so no decision kind
DecisionHook = Callable[[TenantRuntime, Plan, RequestInfo], None]


def refusal(decision: Decision) -> http.Response:
    headers = {DECISION_HEADER: decision.kind.value, "Content-Type": "text/plain; charset=utf-8"}
    if decision.retry_after is not None:
        headers["Retry-After"] = str(decision.retry_after)
    return http.Response.make(decision.status, decision.body(), headers)


def auth_required(*, close: bool = False) -> http.Response:
    """407. `close`: a tunnel whose credentials no longer hold ends with it."""
    headers = {
        "Proxy-Authenticate": REALM,
        DECISION_HEADER: AUTH_REQUIRED,
        "Content-Type": "text/plain; charset=utf-8",
    }
    if close:
        headers["Connection"] = "close"
    return http.Response.make(
        407,
        "crawlguard: proxy authentication required.\n"
        + ("The credentials this tunnel was opened with are no longer valid.\n" if close else "")
        + "Send Proxy-Authorization: Basic base64(tenant_id:token) "
        "(e.g. http://tenant:token@proxy:port as the proxy URL).\n",
        headers,
    )


@dataclass(frozen=True, slots=True)
class Tunnel:
    """An accepted CONNECT: who opened it and with which credential (every request in it is
    re-authenticated against the running config by those), the authority it names (canonical)
    and the address it was resolved to (re-checked against the running destination policy)."""

    tenant_id: str
    credential: bytes | None  # the token digest it was opened with (None: `crawlguard dev`)
    host: str
    port: int
    pinned: str  # the checked address every request in the tunnel is sent to

    @property
    def info(self) -> RequestInfo:
        target = Target("https", self.host, self.port, "")
        return RequestInfo("TUNNEL", target, None, f"{self.host}:{self.port}")


class _Close(layer.Layer):
    """A tunnel whose bytes are neither TLS nor HTTP: close it, relay nothing."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)


class CrawlGuardAddon:
    def __init__(self, guard: Runtime | None = None, *, serve_admin: bool = True) -> None:
        """`serve_admin=False`: a `run --workers N` worker; the parent serves the admin side."""
        self.guard = guard
        self.serve_admin = serve_admin
        self._own_guard = guard is None
        self._tunnels: weakref.WeakKeyDictionary[connection.Client, Tunnel] = (
            weakref.WeakKeyDictionary()
        )
        # client id -> {(address, port): canonical host}: the only places mitmproxy may dial.
        self._pins: dict[str, dict[tuple[str, int], str]] = {}
        self.admin: AdminServer | None = None
        # client id -> set when that client leaves; mitmproxy delivers client_disconnected
        # even while a hook for that connection (a pacing hold) is pending.
        self._gone: dict[str, asyncio.Event] = {}
        # called once per decided request, after its record (`crawlguard dev` prints it)
        self.on_decision: DecisionHook | None = None
        # set on SIGTERM (`stop_holding`): held requests are answered 503 instead of waiting
        self._stopping = asyncio.Event()
        self._answering: set[str] = set()  # flows answered so, until their response hook
        self._tasks: set[asyncio.Task[None]] = set()  # site leases given back from `error`

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
            if self.guard is None:
                ensure_named_ca()
                self.guard = Runtime(cfg)
            else:  # a changed path is a reload: one Runtime per process, nothing leaked
                kept = self.guard.reload(cfg)
                if kept:
                    log.warning("crawlguard: needs a restart, running values kept: %s", kept)
            apply_mitmproxy_options(ctx.options, cfg, listen=False)
            warn_unapplied_listen_keys(ctx.options, cfg)
        if self.guard is None:
            return
        changed = {
            name: wanted
            for name, wanted in SAFE_OPTIONS.items()
            if name in updated and getattr(ctx.options, name) != wanted
        }
        if changed:  # kept, not refused: mitmproxy sets every option at once when it adds us
            for name, wanted in changed.items():
                log.warning("crawlguard keeps %s=%r: %s", name, wanted, SAFE_OPTIONS_WHY[name])
            ctx.options.update(**changed)

    async def running(self) -> None:
        if self.guard is None:
            log.error("crawlguard: no config; set crawlguard_config")
            return
        self.guard.start()
        compat.HeadLimits.line = self.guard.cfg.proxy.max_request_line
        compat.HeadLimits.head = self.guard.cfg.proxy.max_request_head
        if not self.serve_admin:
            return  # a worker: crawlguard.cli.workers reports it ready to its parent
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

    async def stop_holding(self, timeout: float = 2.0) -> None:
        """Before the listener closes (SIGTERM): answer every request delay pacing holds (and
        any held from now on) 503 `proxy-busy` with `Retry-After`, and wait, at most
        `timeout`, until those answers are on their way, so no held client sees a reset."""
        self._stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and (
            self._answering or (self.guard is not None and self.guard.held.total)
        ):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last answers' bytes: written on the next loop turns

    async def done(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
        if self.guard is not None:
            await self.guard.close()

    def client_connected(self, client: connection.Client) -> None:
        self._gone[client.id] = asyncio.Event()

    def client_disconnected(self, client: connection.Client) -> None:
        self._pins.pop(client.id, None)
        if (gone := self._gone.pop(client.id, None)) is not None:
            gone.set()

    # -- CONNECT and what a tunnel may carry -------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        guard = self.guard
        header = flow.request.headers.pop("Proxy-Authorization", None)
        # the tunnel keeps the token digest presented here (an old one in its grace too)
        authenticated = guard.connect_credentials(header) if guard else None
        if guard is None or authenticated is None:
            flow.response = auth_required()
            return
        tenant, credential = authenticated
        client_limits.authenticated(flow)
        verdict = await pipeline.connect(facts(flow, None), tenant, guard)
        if verdict.plan.refuse:
            self._refuse(flow, tenant, verdict.info, verdict.decision)
            return
        assert verdict.info.target is not None and verdict.pinned is not None
        host, admitted = verdict.info.target.host, verdict.pinned
        self._tunnels[flow.client_conn] = Tunnel(
            tenant.id, credential, host, verdict.info.target.port, admitted
        )
        self._pin(flow.client_conn, admitted, verdict.info.target.port, host)
        # mitmproxy dials flow.request.host after this hook; the upstream TLS name is ours too.
        flow.request.data.host = admitted
        flow.server_conn.sni = host

    def _refuse(
        self, flow: http.HTTPFlow, tenant: TenantRuntime, info: RequestInfo, decision: Decision
    ) -> None:
        """A refused CONNECT; recorded in `http_connect_error`, once mitmproxy has answered."""
        flow.metadata[META] = (tenant, decision, info)
        flow.metadata[REFUSED] = True
        flow.response = refusal(decision)

    async def http_connect_error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if meta and self.guard:
            tenant, decision, info = meta
            await self._refused_outside_a_flow(tenant, info, decision)

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Inside a tunnel, only TLS or HTTP/1 requests: never mitmproxy's raw TCP relay.

        Runs after mitmproxy's NextLayer addon. An incomplete request line defers the choice
        (mitmproxy asks again with more bytes), so a request split over segments is parsed as
        HTTP; the engine's request reader drops leading empty lines (`compat.install`).
        """
        tunnel = self._tunnels.get(nextlayer.context.client)
        if tunnel is None or nextlayer.layer is None:
            return
        data = nextlayer.data_client()
        kind = classify(data)
        if kind is FirstBytes.TLS and isinstance(nextlayer.layer, layers.ServerTLSLayer):
            return
        if kind is FirstBytes.MORE:
            nextlayer.layer = None
            return
        if kind is FirstBytes.HTTP:
            if not isinstance(nextlayer.layer, layers.HttpLayer):
                nextlayer.layer = layers.HttpLayer(nextlayer.context, HTTPMode.transparent)
            return
        nextlayer.layer = _Close(nextlayer.context)
        decision = invalid(
            f"the tunnel carried {len(data)} byte(s) that are neither TLS nor an HTTP request; "
            "crawlguard relays no raw bytes and closed it"
        )
        guard = self.guard
        tenant = guard.tunnel_tenant(tunnel.tenant_id, tunnel.credential) if guard else None
        if tenant is not None:
            await self._refused_outside_a_flow(tenant, tunnel.info, decision)

    async def _refused_outside_a_flow(
        self, tenant: TenantRuntime, info: RequestInfo, decision: Decision, *, count: bool = True
    ) -> None:
        """Record and count a refusal made without a flow of ours (a tunnel closed on its
        first bytes, an error response of mitmproxy's engine): the connection ends either way.
        `count=False`: the request already has its decision in the request counts."""
        assert self.guard is not None
        step = plan(tenant.cfg.mode, decision)
        try:
            await self._effect(step, tenant, info)
        except StoreBacklogged as exc:  # refused either way; say so in the log at least
            log.error("refusal unrecorded (%s): tenant %s %s", exc, tenant.id, info.url)
        if count and step.record is not None:
            self.guard.count(tenant, decision.kind)
        self._report(tenant, step, info)

    async def crawlguard_engine_refusal(self, refusal: compat.EngineRefusal) -> None:
        """mitmproxy's HTTP/1 server is about to refuse a request itself (a request line or
        head it cannot read or that is over its caps, a nested CONNECT, headers that would
        smuggle, a connect crawlguard's last gate refused): a decision about a tenant's
        request like any other when the tenant is known — inside its tunnel, or from the
        head's own `Proxy-Authorization`. The engine sends its answer once this returns."""
        guard = self.guard
        if guard is None:
            return
        tunnel = self._tunnels.get(refusal.client)
        info = engine_request_info(refusal, tunnel)
        if tunnel is not None:
            tenant = guard.tunnel_tenant(tunnel.tenant_id, tunnel.credential)
        else:
            tenant = guard.authenticate(engine_header(refusal, "Proxy-Authorization"), count=False)
        if tenant is None:
            return  # no tenant to hold it against: an unauthenticated request is not recorded
        kind = Kind(compat.decision_for_error(refusal.status, refusal.message))
        decision = Decision(kind, rule=f"engine: {refusal.status}", reason=refusal.message[:500])
        # a connect refused at the dial was already counted under the decision it had
        await self._refused_outside_a_flow(
            tenant, info, decision, count=kind is not Kind.DESTINATION_FORBIDDEN
        )

    # -- the request path --------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        guard = self.guard
        if flow.response is not None or flow.request.method == "CONNECT":
            return
        if flow.error is not None:  # mitmproxy refuses it itself: `crawlguard_engine_refusal`
            return
        if guard is None:
            flow.response = auth_required()
            return
        tunnel = self._tunnels.get(flow.client_conn)
        if tunnel is not None:
            # Re-authenticated against the running config: a reload that rotated the token
            # or removed the tenant ends the tunnel; its mode and limits are the current ones.
            tenant = guard.tunnel_tenant(tunnel.tenant_id, tunnel.credential)
            if tenant is None:
                guard.metrics.auth_failures.inc()
                flow.response = auth_required(close=True)
                return
        else:
            tenant = guard.authenticate(flow.request.headers.get("Proxy-Authorization"))
            if tenant is None:
                flow.response = auth_required()
                return
        client_limits.authenticated(flow)
        started = time.perf_counter()
        verdict = await pipeline.decide(facts(flow, tunnel), tenant, guard, flow.metadata)
        info, pinned, step, outcome = verdict.info, verdict.pinned, verdict.plan, verdict.outcome
        guard.metrics.decision_seconds.observe(time.perf_counter() - started)
        flow.metadata[META] = (tenant, step.decision, info)
        try:
            await self._effect(step, tenant, info)
        except StoreBacklogged as exc:  # no answer without its record: refuse instead
            guard.count(tenant, Kind.STORE_BACKLOGGED)  # what the client is answered
            guard.limits.release(flow.metadata)
            if step.hold:
                assert outcome is not None
                guard.give_back_hold(tenant)
                await guard.pacer.cancel(outcome)
            if verdict.turn is not None and verdict.turn.granted:
                await guard.release_site(verdict.turn.ask.site, verdict.turn.lease)
            log.error("request refused unrecorded (%s): tenant %s %s", exc, tenant.id, info.url)
            flow.metadata[REFUSED] = True
            flow.response = refusal(BACKLOGGED)
            self._report(tenant, Plan(BACKLOGGED, None, refuse=True), info)
            return
        # Held, then forwarded (or its client left first): `held`, not a violation; held for
        # the site's shared budget: `site-budget`, not a violation either.
        held_for_site = step.decision.kind is Kind.SITE_BUDGET
        guard.count(tenant, HELD if step.hold and not held_for_site else step.decision.kind)
        self._report(tenant, step, info)
        if step.refuse:
            guard.limits.release(flow.metadata)  # a refused request holds no concurrency slot
            flow.metadata[REFUSED] = True
            flow.response = refusal(step.decision)
            return
        turn = verdict.turn
        if step.hold:
            assert outcome is not None
            if not await self._hold(flow, tenant, outcome, turn):
                guard.limits.release(flow.metadata)
                return
        elif turn is not None and turn.granted and turn.lease is not None:
            flow.metadata[SITE_LEASE] = (turn.ask.site, turn.lease)
        assert info.target is not None and pinned is not None
        self._forward_as_decided(flow, info.target, pinned)
        flow.metadata[SENT] = time.time()

    def _report(self, tenant: TenantRuntime, step: Plan, info: RequestInfo) -> None:
        if self.on_decision is not None:
            try:
                self.on_decision(tenant, step, info)
            except Exception:  # a reporter never breaks the request path
                log.exception("crawlguard: decision hook failed")

    async def _effect(self, step: Plan, tenant: TenantRuntime, info: RequestInfo) -> None:
        """Record first (raises StoreBacklogged when the write queue is full)."""
        if step.record is not None and self.guard is not None:
            await self.guard.record(tenant, step.decision, step.record, info)

    def _forward_as_decided(self, flow: http.HTTPFlow, target: Target, pinned: str) -> None:
        """Send exactly what was decided: canonical path and Host, to the checked address,
        without the hop-by-hop and proxy headers (which no decision read)."""
        req = flow.request
        strip_request(req.headers)
        req.authority = ""  # origin-form: an absolute-form line in a tunnel would name another host
        req.path = target.path
        req.host_header = target.authority
        req.data.host = pinned
        req.data.port = target.port
        self._pin(flow.client_conn, pinned, target.port, target.host)

    def _pin(self, client: connection.Client, address: str, port: int, host: str) -> None:
        pins = self._pins.setdefault(client.id, {})
        pins.pop((address, port), None)
        pins[(address, port)] = host  # newest last
        if len(pins) > MAX_PINS_PER_CLIENT:  # bounded; a dropped pin is re-made by its request
            del pins[next(iter(pins))]

    def server_connect(self, data: Any) -> None:
        """The last gate: connect only to an address a decision pinned for this client, and
        only while the running destination policy still allows it (a reload in between)."""
        server = data.server
        address = tuple(server.address or ())
        host = self._pins.get(data.client.id, {}).get(address)
        if host is None:
            server.error = (
                f"crawlguard: {server.address} was not decided for this client; refusing to connect"
            )
            return
        refused = self.guard.dial_refusal(*address) if self.guard is not None else None
        if refused is not None:
            server.error = f"crawlguard: refusing to connect: {refused.reason}"
            return
        server.sni = host  # TLS upstream is verified for the decided name, not the client's SNI

    async def _hold(
        self,
        flow: http.HTTPFlow,
        tenant: TenantRuntime,
        outcome: PacingOutcome,
        turn: SiteTurn | None = None,
    ) -> bool:
        """Hold a delay-paced request until its slot (no CPU), then, for a site budget turn
        still pending, until its fair slot of the site (at most `pacing.max_hold` in all);
        False if the client left, the proxy stops, or the site has no slot in time (then
        answered 429 `site-budget`)."""
        assert self.guard is not None
        guard = self.guard
        started = time.monotonic()
        try:
            gone = self._gone.get(flow.client_conn.id)
            if gone is None or not flow.client_conn.connected:
                await guard.pacer.cancel(outcome)
                if flow.killable:
                    flow.kill()
                return False
            guard.metrics.delayed.inc()
            try:
                ended = await self._wait_or_end(asyncio.sleep(outcome.wait), gone)
                if not ended and turn is not None and turn.pending:
                    left = max(0.0, guard.cfg.pacing.max_hold - outcome.wait)
                    meta = flow.metadata.get(META)
                    sha = meta[1].robots_sha256 if meta is not None else None
                    waiting = asyncio.ensure_future(guard.site_wait(turn, left, sha))
                    ended = await self._wait_or_end(waiting, gone)
                    if waiting.done() and not waiting.cancelled():
                        lease, refused = waiting.result()
                        if ended:  # granted as the client left: the lease goes back
                            await guard.release_site(turn.ask.site, lease)
                        elif refused is not None:  # not forwarded: its own slot goes back
                            await guard.pacer.cancel(outcome)
                            flow.metadata[REFUSED] = True
                            flow.response = refusal(refused)
                            return False
                        elif lease is not None:
                            flow.metadata[SITE_LEASE] = (turn.ask.site, lease)
            finally:
                guard.metrics.delayed.dec()
            if not ended:
                meta = flow.metadata.get(META)
                if meta is not None and meta[1].kind is Kind.SITE_BUDGET:
                    held = time.monotonic() - started  # held for the site: the real hold
                    t, decision, info = meta
                    flow.metadata[META] = (t, replace(decision, delay_seconds=round(held, 3)), info)
                return True  # the slot has come: forward
            await guard.pacer.cancel(outcome)
            if not gone.is_set():  # shutting down: answer now, before the listener closes
                left = outcome.wait - (time.monotonic() - started)
                flow.metadata[REFUSED] = True
                flow.response = refusal(shutting_down(left))
                self._answering.add(flow.id)
            elif flow.killable:
                flow.kill()
            return False
        finally:
            guard.give_back_hold(tenant)
            guard.metrics.hold_seconds.observe(time.monotonic() - started)

    async def _wait_or_end(self, wait: Any, gone: asyncio.Event) -> bool:
        """Await `wait` unless the client goes or the proxy stops first (True then; `wait`
        is cancelled)."""
        task = asyncio.ensure_future(wait)
        ends = [asyncio.ensure_future(e.wait()) for e in (gone, self._stopping)]
        try:
            await asyncio.wait([task, *ends], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for e in ends:
                e.cancel()
            if not task.done():
                task.cancel()
        return gone.is_set() or self._stopping.is_set()

    async def response(self, flow: http.HTTPFlow) -> None:
        """Origin push-back (429/503) starts a back-off for this tenant and origin, and slows
        the platform on the site for every tenant."""
        self._answering.discard(flow.id)
        if self.guard is not None:
            self.guard.limits.release(flow.metadata)  # the request is no longer in flight
            await self._release_site(flow)
        meta = flow.metadata.get(META)
        if meta is None or self.guard is None or flow.response is None:
            return
        tenant, _, info = meta
        if flow.metadata.get(REFUSED) or tenant.cfg.mode == "off" or info.target is None:
            return  # our own refusal is not the origin's answer
        response = flow.response
        await self.guard.observe_response(
            tenant,
            self.guard.pacing_site(info.target),
            response.status_code,
            response.headers.get("Retry-After"),
        )
        sent = flow.metadata.get(SENT)
        if sent is not None:
            first_byte = response.timestamp_start
            seconds = None if first_byte is None else first_byte - sent
            await self.guard.observe_site(
                info.target.host,
                response.status_code,
                response.headers.get("Retry-After"),
                seconds,
                response.headers,
            )

    async def _release_site(self, flow: http.HTTPFlow) -> None:
        lease = flow.metadata.pop(SITE_LEASE, None)
        if lease is not None and self.guard is not None:
            await self.guard.release_site(*lease)

    def error(self, flow: http.HTTPFlow) -> None:
        """A flow that ends without a response (origin failure, client gone, killed)."""
        self._answering.discard(flow.id)
        if self.guard is not None:
            self.guard.limits.release(flow.metadata)
            if SITE_LEASE in flow.metadata:  # its site lease goes back (a state call: a task)
                task = asyncio.get_running_loop().create_task(self._release_site(flow))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def request(self, flow: http.HTTPFlow) -> None:
        """The body has been read whole: frame what is sent from what was read.

        mitmproxy framed the body with the head's `Content-Length` / `Transfer-Encoding`;
        they must reach the origin exactly so (a body sent without them would be read as a
        next request). Chunked bodies are re-chunked by mitmproxy; any other body gets the
        `Content-Length` of the bytes actually read. Streamed bodies (over 1 MiB) keep the
        head they were framed with, which no `Connection` token can change (`head_problem`).
        """
        req = flow.request
        if flow.response is not None or req.stream or req.raw_content is None:
            return
        if "transfer-encoding" in req.headers:
            req.headers.pop("Content-Length", None)
        elif req.raw_content or "content-length" in req.headers:
            req.headers["Content-Length"] = str(len(req.raw_content))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META)
        if meta is None or flow.response is None or flow.metadata.get(REFUSED):
            return
        decision = meta[1]
        headers = flow.response.headers
        strip_response(headers)
        headers[DECISION_HEADER] = Kind.ALLOWED.value
        if decision.delay_seconds is not None:  # held by delay pacing, then forwarded
            headers["X-Crawlguard-Delayed"] = f"{decision.delay_seconds:.3f}"
        elif not decision.allowed:  # monitor mode: say what would have happened
            headers["X-Crawlguard-Monitor"] = decision.kind.value


BACKLOGGED = Decision(
    Kind.STORE_BACKLOGGED,
    rule="store write queue full",
    reason="crawlguard cannot record violations fast enough right now.",
    retry_after=1,
)


def shutting_down(wait: float) -> Decision:
    """A held request's answer when the proxy stops before its slot: not the tenant's doing
    (SPEC: proxy-busy); Retry-After is what was left of its wait."""
    return Decision(
        Kind.PROXY_BUSY,
        rule="proxy shutting down",
        reason="crawlguard is shutting down; this held request was not forwarded.",
        retry_after=max(1, math.ceil(wait)),
    )


def facts(flow: http.HTTPFlow, tunnel: Tunnel | None) -> Facts:
    """What the pipeline decides on: the request line's target (inside a tunnel, the CONNECT's
    authority and the address it was admitted at) and the header fields as received."""
    req = flow.request
    host, port = (tunnel.host, tunnel.port) if tunnel else (req.host, req.port)
    return Facts(
        req.method,
        req.scheme,
        host,
        port,
        req.path,
        tuple(req.headers.fields),
        tunnel.pinned if tunnel else None,
    )


def engine_header(refusal: compat.EngineRefusal, name: str) -> str | None:
    """A header of a request the engine refused: parsed, or found in the raw head read."""
    if refusal.request is not None:
        return refusal.request.headers.get(name)
    wanted = name.lower().encode() + b":"
    for line in refusal.head.split(b"\n")[1:]:
        if line[: len(wanted)].lower() == wanted:
            return line[len(wanted) :].strip().decode("latin-1")
    return None


def engine_request_info(refusal: compat.EngineRefusal, tunnel: Tunnel | None) -> RequestInfo:
    """What the record says of a request the engine refused: its method and target as sent
    (it has no canonical form; a tunnel's authority stands in for a missing one)."""
    req = refusal.request
    if req is not None:
        method = req.method
        target = req.authority if method == "CONNECT" else req.path
    else:
        line = refusal.head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
        method, _, rest = line.partition(" ")
        target = rest.rpartition(" ")[0] or rest
    if tunnel is not None and target.startswith("/"):
        target = f"https://{tunnel.host}:{tunnel.port}{target}"
    ua = engine_header(refusal, "User-Agent")
    target = _USERINFO.sub(r"\1", target)  # a password in the URL is not for the record
    return RequestInfo(method[:32] or "?", None, ua, target[:2048])


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")


STREAM_LARGE_BODIES = "1m"
MAX_PINS_PER_CLIENT = 256

# mitmproxy options crawlguard's guarantees rest on, and why (checked in `configure`).
SAFE_OPTIONS: dict[str, Any] = {"rawtcp": False, "http2": False, "connection_strategy": "lazy"}
SAFE_OPTIONS_WHY = {
    "rawtcp": "a raw TCP relay would carry bytes no check has seen",
    "http2": "HTTP/2 is not offered to clients; every request is HTTP/1.1 and decided as such",
    "connection_strategy": "a blocked request must never open a connection to its origin",
}


def ensure_named_ca() -> None:
    """mitmdump: crawlguard's CA in mitmdump's confdir, when it has none (crawlguard.proxy.ca).

    Without ``--set confdir`` mitmproxy reads its confdir only once running, after this. With
    it, mitmproxy has already made its own CA before loading any script: one it made in this
    process (so not handed to anyone yet) is replaced and TlsConfig reloads. Older CAs are kept.
    """
    confdir, key_size = ctx.options.confdir, ctx.options.key_size
    start = ca.process_start_time()
    try:
        if start is None:
            created = ca.ensure_ca(confdir, key_size)
        else:
            created = ca.replace_fresh_default_ca(confdir, start, key_size)
    except OSError as exc:
        raise exceptions.OptionsError(f"cannot create the CA in confdir {confdir}: {exc}") from None
    tls = ctx.master.addons.get("tlsconfig")
    if created and tls is not None and getattr(tls, "certstore", None) is not None:
        tls.configure({"confdir"})  # it had loaded the replaced CA: load crawlguard's


def apply_mitmproxy_options(options: Any, cfg: Config, *, listen: bool) -> None:
    """mitmproxy settings crawlguard relies on; listen/confdir only when we own the process."""
    updates: dict[str, Any] = dict(SAFE_OPTIONS)
    # Bodies over 1 MiB (uploads and downloads) stream through instead of being held whole:
    # every decision is taken on the request head, before any body byte is read.
    updates["stream_large_bodies"] = STREAM_LARGE_BODIES
    if cfg.proxy.upstream_ca_file:
        updates["ssl_verify_upstream_trusted_ca"] = cfg.proxy.upstream_ca_file
    if listen:
        updates.update(
            listen_host=cfg.proxy.listen_host,
            listen_port=cfg.proxy.listen_port,
            confdir=cfg.proxy.confdir,
        )
    options.update(**updates)


def warn_unapplied_listen_keys(options: Any, cfg: Config) -> list[str]:
    """Under mitmdump its own flags decide where it listens and its confdir: a config key that
    says otherwise is not applied, and the operator is told so instead of being misled."""
    ignored = []
    for key, option, value in (
        ("proxy.listen_host", "listen_host", cfg.proxy.listen_host),
        ("proxy.listen_port", "listen_port", cfg.proxy.listen_port),
        ("proxy.confdir", "confdir", cfg.proxy.confdir),
    ):
        current = getattr(options, option, None)
        if option == "listen_port" and current is None:
            current = 8080  # mitmproxy's default when --listen-port is not given
        if option == "confdir" and current is not None:
            same = os.path.realpath(os.path.expanduser(str(current))) == os.path.realpath(value)
        else:
            same = current == value
        if not same:
            ignored.append(key)
            log.warning(
                "crawlguard: %s=%r is not applied under mitmdump, which uses %s=%r; "
                "set it with mitmdump's own option (--set %s=...) or use `crawlguard run`",
                key,
                value,
                option,
                current,
                option,
            )
    return ignored


__all__ = ["CrawlGuardAddon", "apply_mitmproxy_options", "warn_unapplied_listen_keys"]
